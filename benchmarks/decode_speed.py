#!/usr/bin/env python
"""Decoding speed of the embedded model on this machine (see :mod:`lora_route.bench.decoding`): routed UniLoRA vs the
unpatched model vs PEFT's mixed batch, and first-line stopping on the demo's test set for the base model and the
demo's trained adapters. Writes ``<out>/<name>.json`` and ``.png``.

    lora-route demo --out reports/demo            # trains the adapters measured here
    python benchmarks/decode_speed.py --demo reports/demo
"""
import argparse
import sys
import time
from pathlib import Path

import torch

from lora_route.adapters.io import load_adapters
from lora_route.bench.decoding import first_line_stopping, routed_decode_overhead, write_decoding_plot
from lora_route.bench.report import environment
from lora_route.cli import run as run_command
from lora_route.common.files import read_jsonl, write_json
from lora_route.data.corpus import TranslationPair
from lora_route.models.loading import load_model

ADAPTERS = {"lora": "train/lora/train/adapters", "unilora_stage2": "train/unilora/stage2/adapters"}


def _log(line: str) -> None:
    print(f"[decode_speed {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.threads < 1 or args.per_direction < 1:
        raise ValueError("--threads and --per-direction must be >= 1")
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    test_file = demo / "test.jsonl"
    if not test_file.is_file():
        raise FileNotFoundError(f"{test_file} does not exist: run lora-route demo --out {demo} first")
    pairs, taken = [], {}
    for row in read_jsonl(test_file):
        pair = TranslationPair(**row)
        if taken.get(pair.direction, 0) < args.per_direction:
            taken[pair.direction] = taken.get(pair.direction, 0) + 1
            pairs.append(pair)
    model, tokenizer = load_model(args.model)
    _log("routed decoding overhead")
    overhead = routed_decode_overhead(model, tokenizer, reps=args.reps)
    _log(", ".join(f"{name} {ratio:.3f}×" for name, ratio in overhead["ratio_to_unpatched"].items()))
    models = {"base": (model, tokenizer)}
    for name, folder in ADAPTERS.items():
        trained, trained_tokenizer = load_model(args.model)
        models[name] = (load_adapters(trained, demo / folder), trained_tokenizer)
    stopping = first_line_stopping(models, pairs, batch_size=args.batch_size, log=_log)
    env = environment(torch.device("cpu"))
    result = {"kind": "cpu_decode", "label": f"decoding on {env['device_name']}, {args.threads} torch threads",
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": env,
              "settings": {"model": args.model, "demo": str(demo), "per_direction": args.per_direction,
                           "batch_size": args.batch_size, "threads": args.threads, "reps": args.reps},
              "routed_decode_overhead": overhead, "first_line_stopping": stopping}
    out = Path(args.out)
    write_json(out / f"{args.name}.json", result)
    write_decoding_plot(result, out / f"{args.name}.png")
    for row in stopping:
        rates, identical = row["messages_per_s"], row["identical_outputs"]
        print(f"{row['model']}: {rates['decode_to_eos']:.2f} -> {rates['stop_at_first_line']:.2f} messages/s "
              f"({row['speedup']:.2f}×, target {row['target_speedup']}×, {identical['stop_at_first_line']}/"
              f"{row['messages']} outputs identical); without the output-layer screen "
              f"{rates['stop_at_first_line_full_output_layer']:.2f} ({row['speedup_full_output_layer']:.2f}×); in "
              f"one batch {rates['stop_at_first_line_one_batch']:.2f} ({row['speedup_one_batch']:.2f}×, "
              f"{identical['stop_at_first_line_one_batch']} identical)")
    ratios, paired = overhead["ratio_to_unpatched"], overhead["paired_ratio_median"]
    module_us, extra = overhead["module_us_per_call"], overhead["module_extra_us_per_decode_call"]
    labels = {"lora_route_unilora": f"routed UniLoRA ({overhead['routed_backend']} backend)",
              "lora_route_unilora_torch": "routed UniLoRA (torch backend)", "peft_mixed": "PEFT mixed batch"}
    for name, label in labels.items():
        if name in ratios:
            print(f"{label}: decoding {ratios[name]:.3f}× the unpatched model (paired {paired[name]:.3f}×), a "
                  f"targeted module's decode step {extra[name]:+.0f} µs over the unpatched "
                  f"{module_us['unpatched']['decode']:.0f} µs")
    print(f"target for routed UniLoRA: <= {overhead['target_ratio']}×, met: {overhead['met']}")
    print(f"wrote {out / args.name}.json and .png")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="decode_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="reports/demo", help="a finished lora-route demo folder (default: reports/demo)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--per-direction", type=int, default=12, help="test messages per direction (default 12)")
    parser.add_argument("--batch-size", type=int, default=25, help="decoding batch size (the CPU demo's, 25)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the routed-decoding comparison")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="cpu_decoding", help="file stem (default cpu_decoding)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.set_defaults(func=run)
    return run_command(parser.parse_args(argv), "decode_speed")


if __name__ == "__main__":
    sys.exit(main())
