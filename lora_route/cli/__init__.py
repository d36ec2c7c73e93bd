"""The ``lora-route`` command line: every argparse parser of the package lives in this sub-package.

The top layer: it may import anything below it, and nothing in the library imports it. Each subcommand is one module
with ``configure(parser)`` (adds the arguments and sets ``func``); :func:`main` imports only the chosen subcommand's
module, so ``lora-route backends`` does not load transformers, datasets or the training code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). The help texts live here so that listing the commands imports none of them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lora_route.cli.demo", "train and evaluate base vs LoRA vs UniLoRA on the embedded model; writes a "
                                    "report folder"),
    "study": ("lora_route.cli.study", "the papers' experiments (stage-2 data, ablations, zero-shot) with seeds and "
                                      "significance; JSON + PNG + markdown"),
    "train": ("lora_route.cli.train", "train a recipe (configs/*.yaml): stage 1 -> stage 2, checkpoints, --resume"),
    "evaluate": ("lora_route.cli.evaluate", "decode and score a trained recipe stage or a base model"),
    "compare": ("lora_route.cli.compare", "print several evaluation runs in the papers' table layout"),
    "pseudo": ("lora_route.cli.pseudo", "pivot pseudo-corpus (X->en->Y) from a trained stage, with language-ID and "
                                        "length filters"),
    "analyze": ("lora_route.cli.analyze", "MLAS layer relevance / neuron awareness (+ MLAS init), conflict / synergy "
                                          "analysis"),
    "merge": ("lora_route.cli.merge", "DATM: merge a dat checkpoint's XX->En adapters group-wise (TIES / DARE / "
                                      "linear on the weight updates)"),
    "params": ("lora_route.cli.params", "trainable-parameter shares of every method vs the papers' tables"),
    "bench": ("lora_route.cli.bench", "benchmark routed LoRA against the base layer, PEFT and a naive loop "
                                      "(JSON + PNG)"),
    "backends": ("lora_route.cli.backends", "print which kernel backends this install can run"),
}


# Errors a user's input causes (bad arguments, configs, files, missing optional packages, diverging training): one
# line and exit code 2; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError, ArithmeticError)
DEBUG_ENV = "LORA_ROUTE_DEBUG"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``lora-route`` parser; only ``command``'s module is imported to fill in its arguments."""
    parser = argparse.ArgumentParser(prog="lora-route", description="Language-routed LoRA for multilingual machine "
                                     "translation: one fused kernel per layer for batches that mix directions.")
    debug_help = f"show the full traceback of an error (also: {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        if name == command:
            importlib.import_module(module).configure(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lora-route ARGV``; a user error prints one line ``lora-route COMMAND: error: ...`` and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return run(args, f"lora-route {args.command}")


def run(args: argparse.Namespace, prog: str) -> int:
    """``args.func(args)``; a user error (:data:`USER_ERRORS`) prints one line ``PROG: error: ...`` on stderr and
    returns 2, unless ``args.debug`` or ``LORA_ROUTE_DEBUG=1`` ask for the traceback."""
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        if getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
