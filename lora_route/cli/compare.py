"""``lora-route compare RUN1 RUN2 ...``: group averages of several evaluation runs in the papers' table layout, and
each run's difference to a baseline run with a paired bootstrap test per group (95 % intervals, p-values).

A run is a folder holding ``metrics.json`` and ``outputs.jsonl`` as ``lora-route evaluate`` writes them (or the path
of the metrics file). The baseline is ``--baseline NAME`` (a run's folder name), by default the run named ``lora``
when there is one; runs must have been decoded on the same test set.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lora_route.common.languages import parse_direction
from lora_route.eval.outputs import load_outputs
from lora_route.eval.report import TABLE_METRICS, direction_table, load_run, summary_table
from lora_route.eval.significance import DEFAULT_SAMPLES, comparison_table, paired_bootstrap

SIGNIFICANCE_GROUPS = ("en_centric", "non_english", "zero_shot")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.json (or metrics JSON files)")
    parser.add_argument("--directions", action="store_true", help="also print one column per direction")
    parser.add_argument("--metric", default="bleu", choices=[m for m, _ in TABLE_METRICS],
                        help="metric of the per-direction table (default: bleu)")
    parser.add_argument("--baseline", default=None,
                        help="run the others are tested against (default: the run named 'lora', if any)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="bootstrap resamples (default 1000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs, folders = {}, {}
    for path in args.runs:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        name = folder.name if folder.name not in runs else str(path)
        runs[name], folders[name] = load_run(path), folder
    print(summary_table(runs))
    if args.directions:
        print()
        print(direction_table(runs, metric=args.metric))
    baseline = args.baseline or ("lora" if "lora" in runs else None)
    if baseline is None:
        return 0
    if baseline not in runs:
        raise ValueError(f"--baseline {baseline!r} is none of the runs {sorted(runs)}")
    reference = load_outputs(folders[baseline] / "outputs.jsonl")
    comparisons = {}
    for name, metrics in runs.items():
        if name == baseline:
            continue
        groups = {group: [parse_direction(d) for d in metrics["groups"].get(group, {}).get("directions", [])]
                  for group in SIGNIFICANCE_GROUPS}
        comparisons[name] = paired_bootstrap(load_outputs(folders[name] / "outputs.jsonl"), reference, groups,
                                             n_samples=args.samples)
    print()
    print(f"Paired bootstrap against {baseline} ({args.samples} resamples; * = significant at p < 0.05):")
    print(comparison_table(comparisons, baseline))
    return 0
