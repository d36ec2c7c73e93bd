"""``lora-route bench``: run the benchmark of :mod:`lora_route.bench`, write its JSON, PNG and text summary and print
the summary (also ``benchmarks/run_benchmarks.py``)."""
from __future__ import annotations

import argparse
import sys

import torch

from lora_route.bench.config import DTYPES, LAYER_PROVIDERS, PRESETS, TRAIN_PROVIDERS
from lora_route.bench.runner import run_benchmark, write_results
from lora_route.cli import run as run_command

DEFAULT_OUT_DIR = "benchmarks/results"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Layer-level (Llama-3-8B / Gemma 3 270M MLP shapes) and end-to-end training-step benchmark. "
                          "On a GPU: triton.testing.do_bench with an L2 flush per repetition. On a CPU: a smoke run "
                          "with tiny shapes (Triton under TRITON_INTERPRET=1) whose timings are not performance "
                          "evidence.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="sizes to run (default: 'gpu' when CUDA is available, else 'cpu-smoke')")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="override the preset's dtype")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="SHAPE",
                        help="run only these of the preset's MLP shapes (names as in the JSON)")
    parser.add_argument("--providers", nargs="+", choices=LAYER_PROVIDERS, default=list(LAYER_PROVIDERS),
                        help="layer-level providers; the lora_route_<backend> ones also pick the backends of the "
                             "training step")
    parser.add_argument("--train-providers", nargs="+", choices=TRAIN_PROVIDERS, default=list(TRAIN_PROVIDERS),
                        help="end-to-end training-step providers")
    parser.add_argument("--no-layers", action="store_true", help="skip the layer-level benchmark")
    parser.add_argument("--no-training", action="store_true", help="skip the end-to-end training step")
    parser.add_argument("--no-host-overhead", action="store_true",
                        help="skip the host time per routed call at decode sizes")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="seconds after which measurements not yet started are recorded as skipped (the results "
                             "are still written); default: no budget")
    parser.add_argument("--reps", type=int, default=None, help="CPU: timed repetitions per measurement")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="CPU: torch threads while measuring (default 1; 0 keeps torch's setting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"output folder (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--name", default=None,
                        help="file stem of the outputs (default: cpu_smoke, or <gpu-name>_<dtype>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; print the text summary and the output paths."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset or ("gpu" if device == "cuda" else "cpu-smoke")]
    if args.shapes:
        known = {shape.name: shape for shape in preset.shapes}
        unknown = [name for name in args.shapes if name not in known]
        if unknown:
            raise ValueError(f"preset {preset.name!r} has no shape {unknown}; it has {sorted(known)}")
        preset = preset.with_overrides(shapes=tuple(known[name] for name in args.shapes))
    preset = preset.with_overrides(dtype=args.dtype, reps=args.reps)
    result = run_benchmark(preset, device=device, layer_providers=args.providers,
                           train_providers=args.train_providers, run_layers=not args.no_layers,
                           run_training=not args.no_training, run_host_overhead=not args.no_host_overhead,
                           seed=args.seed, cpu_threads=args.cpu_threads or None, time_budget_s=args.time_budget_s)
    paths = write_results(result, args.out_dir, args.name)
    print(paths[2].read_text(encoding="utf-8"), end="")
    print("\n".join(f"wrote {path}" for path in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``benchmarks/run_benchmarks.py``: the ``bench`` subcommand as a standalone program."""
    parser = argparse.ArgumentParser(prog="run_benchmarks")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    configure(parser)
    return run_command(parser.parse_args(sys.argv[1:] if argv is None else argv), "run_benchmarks")
