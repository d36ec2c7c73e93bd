"""``lora-route evaluate``: decode and score a trained recipe stage (or the base model) on a test set.

Test sets: ``gettext`` (the catalogs' test split), ``flores_plus`` (devtest, multi-way), ``opus100`` (test,
English-centric), ``papers`` (the papers' protocol: OPUS-100 test for English-centric directions, Flores+ devtest for
the others) or a local file of pairs. ``--outputs FILE`` re-scores a saved ``outputs.jsonl`` without a model.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lora_route.common.languages import parse_direction
from lora_route.eval.evaluate import evaluate_model, evaluate_outputs
from lora_route.eval.langid import LanguageIdentifier
from lora_route.eval.metrics import CometScorer
from lora_route.eval.outputs import load_outputs
from lora_route.eval.report import direction_table, summary_table
from lora_route.eval.test_sets import TEST_SOURCES, load_test_pairs
from lora_route.models.loading import load_model
from lora_route.train.distributed import setup_distributed
from lora_route.train.recipe import load_recipe_stage


def run(args: argparse.Namespace) -> int:
    identifier = None if args.no_langid else LanguageIdentifier()
    comet = CometScorer(args.comet) if args.comet else None
    trained = [parse_direction(d) for d in args.trained] if args.trained else None
    out = Path(args.out)
    settings: dict[str, Any] = {}
    if args.outputs:
        result = evaluate_outputs(load_outputs(args.outputs), trained=trained, identifier=identifier, comet=comet,
                                  settings={"name": args.name or out.name, "outputs": args.outputs})
        result.save(out)
    else:
        if args.recipe and not args.base:
            model, tokenizer, recipe, stage, recipe_trained = load_recipe_stage(args.recipe, args.stage, args.set,
                                                                               args.device)
            languages = args.languages or list(recipe.adapter_config().languages)
            trained = trained or recipe_trained
            settings = {"recipe": args.recipe, "stage": stage}
        else:
            if not args.languages:
                raise ValueError("--languages is required without a recipe")
            ctx = setup_distributed(args.device)
            model, tokenizer = load_model(args.model, dtype="bfloat16" if ctx.device.type == "cuda" else "float32",
                                          device=ctx.device)
            languages = args.languages
            settings = {"model": args.model}
        directions = [parse_direction(d) for d in args.directions] if args.directions else None
        pairs = load_test_pairs(args.test, languages, directions=directions, path=args.test_path,
                                per_direction=args.per_direction, seed=args.seed)
        result = evaluate_model(model, tokenizer, pairs, out, trained=trained, name=args.name or out.name,
                                num_beams=args.beams, batch_size=args.batch_size, identifier=identifier, comet=comet,
                                languages=languages, progress=not args.no_progress,
                                settings={**settings, "test": args.test})
    runs = {result.settings["name"]: result.to_dict()}
    print(summary_table(runs))
    print()
    print(direction_table(runs, "bleu"))
    print(f"\nwritten: {out / 'metrics.json'}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("recipe", nargs="?", help="training recipe (its output_dir holds the trained stages)")
    parser.add_argument("--stage", help="stage whose adapters to evaluate (default: the last)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--base", action="store_true", help="evaluate the base model without adapters")
    parser.add_argument("--model", default="embedded", help="base model without a recipe (default: embedded)")
    parser.add_argument("--outputs", help="re-score a saved outputs.jsonl instead of decoding")
    parser.add_argument("--test", choices=TEST_SOURCES, default="gettext", help="test set (default: gettext)")
    parser.add_argument("--test-path", help="local file (--test local), or a local copy of the hub dataset")
    parser.add_argument("--languages", nargs="+", help="default: the recipe's adapter languages")
    parser.add_argument("--directions", nargs="+", help="e.g. de-zh zh-de (default: every ordered pair)")
    parser.add_argument("--per-direction", type=int, default=None, help="at most N test pairs per direction")
    parser.add_argument("--trained", nargs="+", help="training directions (defines zero-shot); default: the recipe's")
    parser.add_argument("--beams", type=int, default=1, help="beam size (the papers: 5; default 1 = greedy)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--comet", nargs="?", const="Unbabel/wmt22-comet-da", default=None,
                        help="also COMET-22 (model name or local checkpoint; needs unbabel-comet)")
    parser.add_argument("--no-langid", action="store_true", help="skip the off-target rate")
    parser.add_argument("--name", help="run name in tables (default: the output folder's name)")
    parser.add_argument("--out", default="reports/eval", help="output folder (default: reports/eval)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)
