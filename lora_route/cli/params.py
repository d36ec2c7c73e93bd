"""``lora-route params``: the papers' trainable-parameter table, computed on Llama-3-8B built on the meta device
(or on another base model's config.json)."""
from __future__ import annotations

import argparse
import json

from lora_route.adapters.paper_table import MUST_MATCH_TOLERANCE, format_table, paper_table
from lora_route.common.files import read_json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--base-config", help="Hugging Face config.json of another base model (default Llama-3-8B)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    base_config = read_json(args.base_config) if args.base_config else None
    rows = paper_table(base_config)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    failed = [row["name"] for row in rows if row["must_match"] and abs(row["difference"]) > MUST_MATCH_TOLERANCE]
    if failed and base_config is None:
        print(f"off by more than {MUST_MATCH_TOLERANCE} points: {', '.join(failed)}")
        return 1
    return 0
