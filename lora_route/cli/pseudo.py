"""``lora-route pseudo RECIPE``: the pivot pseudo-corpus (CrossLoRA): new source sentences of the recipe's corpus
translated through the English pivot into every other language with a trained stage's adapters, filtered (language
ID, length ratio, copies, repetitions, duplicates) and written as TranslationPair JSONL."""
from __future__ import annotations

import argparse
from pathlib import Path

from lora_route.eval.langid import LanguageIdentifier
from lora_route.train.pseudo import build_pseudo_corpus, recipe_pivot_sources
from lora_route.train.recipe import load_recipe_stage


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("recipe", help="training recipe whose stage has been trained (lora-route train)")
    parser.add_argument("--stage", default="stage1", help="stage whose adapters generate (default: stage1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--languages", nargs="+", help="default: the stage's data languages")
    parser.add_argument("--pivot", default="en")
    parser.add_argument("--per-language", type=int, default=2000,
                        help="source sentences per non-pivot language (each yields N-2 directions; default 2000)")
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length-ratio", type=float, default=3.0)
    parser.add_argument("--out", help="output JSONL (default: <output_dir>/pseudo.jsonl)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, tokenizer, recipe, stage_name, _ = load_recipe_stage(args.recipe, args.stage, args.set, args.device)
    languages = args.languages or list(recipe.stage_data(recipe.stage(stage_name)).languages)
    sources = recipe_pivot_sources(recipe, stage_name, languages, args.pivot, args.per_language)
    out = Path(args.out) if args.out else Path(recipe.output_dir) / "pseudo.jsonl"
    pairs, report = build_pseudo_corpus(model, tokenizer, sources, languages, out,
                                        identifier=LanguageIdentifier(languages=None), pivot_lang=args.pivot,
                                        max_length_ratio=args.max_length_ratio, num_beams=args.beams,
                                        batch_size=args.batch_size, progress=not args.no_progress)
    print(report.markdown())
    print(f"\n{len(pairs)} pairs written to {out}; train on them with "
          f"--set 'stages.1.extra_files=[\"{out}\"]' (stage 2 of the recipe)")
    return 0
