"""``lora-route evaluate``: decode and score a trained recipe stage (or the base model) on a test set.

Test sets: ``gettext`` (the catalogs' test split), ``flores_plus`` (devtest, multi-way), ``opus100`` (test,
English-centric), ``papers`` (the papers' protocol: OPUS-100 test for English-centric directions, Flores+ devtest for
the others) or a local file of pairs. ``--outputs FILE`` re-scores a saved ``outputs.jsonl`` without a model.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from .data.corpus import TranslationPair, direction_counts, parse_direction

TEST_SOURCES = ("gettext", "flores_plus", "opus100", "papers", "local")


def recipe_trained_directions(recipe, stage_name: str) -> list[tuple[str, str]]:
    """Directions a recipe trained on up to and including ``stage_name`` (stage sets, replay and extra files)."""
    from .data.loaders import load_local_pairs
    from .data.sampling import directions_for

    names = [s.name for s in recipe.stages]
    if stage_name not in names:
        raise ValueError(f"recipe {recipe.name!r} has no stage {stage_name!r}; stages: {names}")
    trained: dict[tuple[str, str], None] = {}
    for stage in recipe.stages[: names.index(stage_name) + 1]:
        for direction in directions_for(stage.directions, recipe.stage_data(stage).languages):
            trained[direction] = None
        for file in stage.extra_files:
            for direction in direction_counts(load_local_pairs(file)):
                trained[parse_direction(direction)] = None
    return list(trained)


def load_recipe_stage(recipe_path: str, stage_name: str | None, overrides: Sequence[str], device: str | None):
    """(model, tokenizer, recipe, stage name, trained directions): the recipe's model with the adapters that
    ``lora-route train`` saved for ``stage_name`` (default: the last stage) in ``<output_dir>/<stage>/adapters``."""
    from .io import load_adapters
    from .models import load_model
    from .train.config import load_recipe
    from .train.distributed import setup_distributed
    from .train.recipe import ADAPTERS_DIR

    recipe = load_recipe(recipe_path, list(overrides))
    stage_name = stage_name or recipe.stages[-1].name
    trained = recipe_trained_directions(recipe, stage_name)
    adapters = Path(recipe.output_dir) / stage_name / ADAPTERS_DIR
    if not adapters.is_dir():
        raise FileNotFoundError(f"{adapters} does not exist: train the recipe first (lora-route train {recipe_path})")
    ctx = setup_distributed(device)
    dtype = recipe.model.dtype if recipe.model.dtype != "auto" else (
        "bfloat16" if ctx.device.type == "cuda" else "float32")
    model, tokenizer = load_model(recipe.model.name_or_path, dtype=dtype, device=ctx.device)
    load_adapters(model, adapters)
    model.to(ctx.device)
    model.eval()
    return model, tokenizer, recipe, stage_name, trained


def load_test_pairs(source: str, languages: Sequence[str], *, directions: Sequence[tuple[str, str]] | None = None,
                    path: str | None = None, per_direction: int | None = None, seed: int = 0
                    ) -> list[TranslationPair]:
    """Test pairs of ``directions`` (default every ordered pair of ``languages``), at most ``per_direction`` each."""
    from .data.sampling import directions_for, sample_per_direction

    if source not in TEST_SOURCES:
        raise ValueError(f"unknown test source {source!r}; choose one of {TEST_SOURCES}")
    wanted = list(directions) if directions else directions_for("en_centric" if source == "opus100" else "all",
                                                                 languages)
    hub = {"source": path} if path else {}
    if source == "gettext":
        from .data.gettext_corpus import load_gettext_corpus
        pairs = load_gettext_corpus(languages, "test", [path] if path else None, directions=wanted)
    elif source == "flores_plus":
        from .data.loaders import load_flores_plus
        pairs = load_flores_plus(languages, "test", directions=wanted, **hub)
    elif source == "opus100":
        from .data.loaders import load_opus100
        pairs = [p for p in load_opus100(sorted({"-".join(sorted(d)) for d in wanted if "en" in d}), "test", **hub)
                 if p.direction in wanted]
    elif source == "papers":
        from .data.loaders import load_flores_plus, load_opus100
        english = [d for d in wanted if "en" in d]
        others = [d for d in wanted if "en" not in d]
        pairs = [p for p in load_opus100(sorted({"-".join(sorted(d)) for d in english}), "test") if p.direction
                 in english] if english else []
        pairs += load_flores_plus(languages, "test", directions=others) if others else []
    else:
        from .data.loaders import load_local_pairs
        if not path:
            raise ValueError("--test local needs --test-path FILE")
        pairs = [p for p in load_local_pairs(path, split="test") if p.direction in wanted]
    present = {p.direction for p in pairs}
    missing = [f"{s}-{t}" for s, t in wanted if (s, t) not in present]
    if missing:
        raise ValueError(f"test source {source!r} has no pairs for {missing}; choose --directions it covers")
    return sample_per_direction(pairs, wanted, per_direction, seed)


def _evaluate_main(args: argparse.Namespace) -> int:
    from .evaluation import CometScorer, evaluate_model, evaluate_outputs, load_outputs
    from .langid import LanguageIdentifier
    from .report import direction_table, summary_table

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
            from .models import load_model
            from .train.distributed import setup_distributed
            if not args.languages:
                raise SystemExit("--languages is required without a recipe")
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


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``lora-route evaluate``: BLEU / chrF++ / COMET-22 / off-target rate per direction and per group."""
    parser = subparsers.add_parser("evaluate", help="decode and score a trained recipe stage or a base model",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.set_defaults(func=_evaluate_main)
    return parser
