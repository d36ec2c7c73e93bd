"""``lora-route backends``: which kernel backends this install can run."""
from __future__ import annotations

import argparse

from lora_route.kernels.dispatch import backends


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(backends())
    return 0
