"""The ``lora-route`` console script: each subcommand is registered by the module that owns it."""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, function): the function adds one subcommand to the parser and sets ``func`` on its namespace.
SUBCOMMANDS = (
    ("lora_route.ops", "add_backends_command"),
    ("lora_route.params", "add_params_command"),
    ("lora_route.bench", "add_bench_command"),
    ("lora_route.report", "add_compare_command"),
    ("lora_route.merging", "add_merge_command"),
    ("lora_route.train.cli", "add_train_command"),
    ("lora_route.analysis.commands", "add_analyze_command"),
    ("lora_route.evaluate_cli", "add_evaluate_command"),
    ("lora_route.pseudo", "add_pseudo_command"),
    ("lora_route.demo", "add_demo_command"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-route", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name, function_name in SUBCOMMANDS:
        getattr(importlib.import_module(module_name), function_name)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
