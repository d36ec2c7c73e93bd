"""``lora-route study NAME``: the papers' experiments on the embedded default (stage-2 data requirement, UniLoRA's
ablations, zero-shot directions, five languages) and the confirmation of the chosen attempt on fresh test messages,
each writing ``study.json``, ``study.md`` and ``study.png`` (see :mod:`lora_route.experiments.studies`)."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from lora_route.experiments.studies import STUDY_NAMES
from lora_route.experiments.study_report import run_studies
from lora_route.experiments.study_runs import STUDY_SIZES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("names", nargs="+", choices=(*STUDY_NAMES, "all"), metavar="NAME",
                        help=f"one or more of {', '.join(STUDY_NAMES)}, or all")
    parser.add_argument("--size", choices=sorted(STUDY_SIZES), default="cpu",
                        help="cpu (default): ~6.2 h per seed on one core for the four exploratory studies, "
                             "~1 h more for the confirmation; cpu5: the cpu size on five languages, ~1.8 h per seed "
                             "for many-languages; gpu: five languages, full size; tiny: smoke test")
    parser.add_argument("--out", default="reports/studies",
                        help="report folder; runs are kept in <out>/runs and reused (default: reports/studies)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds to run (default: the size's); run seeds as separate processes to use more "
                             "cores, then once more without --seeds for the report over all of them")
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (packaged Gemma 3 270M), a local HF folder or a hub name")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda for --size gpu, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    names = list(STUDY_NAMES) if "all" in args.names else list(dict.fromkeys(args.names))
    device = args.device or ("cuda" if args.size == "gpu" else "cpu")

    def log(line: str) -> None:
        print(f"[study {time.strftime('%H:%M:%S')}] {line}", flush=True)

    written = run_studies(names, STUDY_SIZES[args.size], args.out, seeds=args.seeds, model_name=args.model,
                          device=device, progress=not args.no_progress, log=log)
    for name, paths in written.items():
        print(Path(paths["markdown"]).read_text(encoding="utf-8"))
        print(f"{name}: " + ", ".join(str(p) for p in paths.values()))
    return 0
