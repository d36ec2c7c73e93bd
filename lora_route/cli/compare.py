"""``lora-route compare RUN1 RUN2 ...``: group averages of several evaluation runs in the papers' table layout.

A run is a folder holding ``metrics.json`` as ``lora-route evaluate`` writes it (or the path of that file).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lora_route.eval.report import TABLE_METRICS, direction_table, load_run, summary_table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.json (or metrics JSON files)")
    parser.add_argument("--directions", action="store_true", help="also print one column per direction")
    parser.add_argument("--metric", default="bleu", choices=[m for m, _ in TABLE_METRICS],
                        help="metric of the per-direction table (default: bleu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs = {}
    for path in args.runs:
        name = Path(path).name if Path(path).is_dir() else Path(path).parent.name
        if name in runs:
            name = str(path)
        runs[name] = load_run(path)
    print(summary_table(runs))
    if args.directions:
        print()
        print(direction_table(runs, metric=args.metric))
    return 0
