"""``lora-route demo``: base vs LoRA vs UniLoRA (stage 1, stage 2) on the embedded Gemma 3 270M and the machine's
gettext catalogs, one command; writes a report folder (see :mod:`lora_route.experiments.demo`)."""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import torch

from lora_route.experiments.demo import SIZES, run_demo


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu",
                        help="cpu: ~20 min on 2 cores (default); gpu: five languages, full size; tiny: smoke test")
    parser.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (packaged Gemma 3 270M), a local HF folder or a hub name")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda for --size gpu, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-per-direction", type=int, default=None, help="override the size's test set size")
    parser.add_argument("--stage1-steps", type=int, default=None, help="override UniLoRA stage-1 steps")
    parser.add_argument("--stage2-steps", type=int, default=None, help="override UniLoRA stage-2 steps")
    parser.add_argument("--comet", nargs="?", const="Unbabel/wmt22-comet-da", default=None,
                        help="also COMET-22 (model name or local checkpoint; needs unbabel-comet)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 is faster on a machine shared with "
                             "other busy processes")
    parser.add_argument("--zero-shot-probe", action="store_true",
                        help="instead: base, LoRA, UniLoRA and a target-routed CrossLoRA, each trained --stage1-steps "
                             "on English-centric pairs only, evaluated on every direction (non-English = zero-shot)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = SIZES[args.size]
    overrides = {k: v for k, v in (("test_per_direction", args.test_per_direction),
                                   ("stage1_steps", args.stage1_steps), ("stage2_steps", args.stage2_steps))
                 if v is not None}
    if overrides:
        size = replace(size, **overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.size == "gpu" else "cpu")
    summary = run_demo(args.out, size, zero_shot_probe=args.zero_shot_probe, model_name=args.model, device=device,
                       seed=args.seed, comet=args.comet, progress=not args.no_progress)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    print(f"report folder: {args.out} (total {summary['timings_s']['total']} s)")
    return 0
