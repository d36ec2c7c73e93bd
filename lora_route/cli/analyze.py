"""``lora-route analyze {layers,neurons,conflicts}``: MLAS layer relevance, neuron awareness (+ MLAS initialisation
of a student) and the conflict / synergy analysis, on the embedded model and gettext data by default.

Every command writes JSON (and PNG where there is a picture) into ``--out`` and prints a short summary.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.io import save_adapters
from lora_route.adapters.patch import apply_routed_lora, routed_modules
from lora_route.analysis.awareness import DEFAULT_THRESHOLD, neuron_awareness, split_neurons
from lora_route.analysis.conflicts import (
    gradient_conflicts,
    plot_delta_heatmaps,
    plot_gradient_heatmaps,
    run_strategy_comparison,
)
from lora_route.analysis.mlas import ABLATIONS, MLASInit, ablation_method, initialise_mlas, teacher_route
from lora_route.analysis.relevance import (
    decoder_layers,
    layer_relevance,
    map_teacher_to_student,
    project_layer_scores,
    select_top_layers,
)
from lora_route.common.files import write_json
from lora_route.common.languages import direction_key
from lora_route.data.collate import collate, encode_pairs
from lora_route.data.gettext_corpus import load_gettext_corpus
from lora_route.data.loaders import load_local_pairs
from lora_route.data.sampling import directions_for, sample_per_direction
from lora_route.models.loading import load_model
from lora_route.train.config import TrainingSection, load_recipe
from lora_route.train.distributed import setup_distributed, teardown_distributed
from lora_route.train.recipe import run_recipe

DEFAULT_LANGUAGES = "en,de,zh"


# ------------------------------------------------------------------------------------------------ shared helpers
def _add_data_arguments(parser: argparse.ArgumentParser, per_direction: int) -> None:
    parser.add_argument("--model", default="embedded",
                        help="base model: 'embedded' (packaged Gemma 3 270M), a hub name or a local HF folder")
    parser.add_argument("--dtype", default="float32", help="float32 (default, CPU), bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--languages", default=DEFAULT_LANGUAGES, help=f"comma list (default {DEFAULT_LANGUAGES})")
    parser.add_argument("--directions", default="en_centric",
                        help="en_centric, x_to_en, en_to_x, non_english, all, or a comma list like de-en,en-zh")
    parser.add_argument("--pairs-file", default=None,
                        help="seed pairs from a local jsonl/tsv/parquet file instead of the gettext catalogs")
    parser.add_argument("--per-direction", type=int, default=per_direction, metavar="N",
                        help=f"seed sentence pairs per direction (default {per_direction})")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=96, help="tokens per prompt + target")
    parser.add_argument("--max-chars", type=int, default=120, help="longest gettext message used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")


def _languages(args) -> list[str]:
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    if len(languages) < 2:
        raise ValueError(f"--languages needs at least two languages, got {args.languages!r}")
    return languages


def _directions(args) -> list[tuple[str, str]]:

    spec = args.directions if "-" not in args.directions else [d.strip() for d in args.directions.split(",")]
    return directions_for(spec, _languages(args))


def _pairs(args, split: str, directions, cap: int):
    """Seed / training / evaluation pairs: ``cap`` per direction from the gettext corpus split or --pairs-file."""
    if cap < 1:
        raise ValueError("the number of pairs per direction must be >= 1")
    if args.pairs_file:

        pairs = load_local_pairs(args.pairs_file)
    else:

        pairs = load_gettext_corpus(_languages(args), split, directions=directions, max_chars=args.max_chars)
    return sample_per_direction(pairs, directions, cap, args.seed)


def _batches(pairs, tokenizer, args) -> dict[tuple[str, str], list[dict[str, torch.Tensor]]]:
    """Direction → padded batches (input_ids, attention_mask, labels) of its pairs."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: dict[tuple[str, str], list[dict[str, torch.Tensor]]] = {}
    for direction in dict.fromkeys(p.direction for p in pairs):
        examples = encode_pairs([p for p in pairs if p.direction == direction], tokenizer,
                                max_length=args.max_length, what=f"{'-'.join(direction)} seed pairs").examples
        out[direction] = []
        for i in range(0, len(examples), args.batch_size):
            batch = collate(examples[i:i + args.batch_size], pad)
            out[direction].append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                                   "labels": batch.labels})
    return out


def _load(args, name: str | None = None):

    return load_model(name or args.model, dtype=args.dtype, device=args.device)


def _save(out: Path, name: str, data: Any) -> Path:

    return write_json(out / name, data)


# ------------------------------------------------------------------------------------------------ layers
def _run_layers(args) -> int:

    out = Path(args.out)
    directions = _directions(args)
    model, tokenizer = _load(args)
    batches = _batches(_pairs(args, "dev", directions, args.per_direction), tokenizer, args)
    relevance = {d: layer_relevance(model, b) for d, b in batches.items()}
    mean = torch.stack(list(relevance.values())).mean(0)
    count = len(decoder_layers(model))
    top = args.top or count
    ranking = select_top_layers(mean, count)
    ranking = sorted(ranking, key=lambda i: -float(mean[i]))
    result: dict[str, Any] = {
        "model": args.model, "num_layers": count,
        "relevance": {direction_key(*d): r.tolist() for d, r in relevance.items()},
        "mean_relevance": mean.tolist(), "ranking": ranking, "top_layers": select_top_layers(mean, top),
    }
    if args.student_layers:
        student = list(range(args.student_layers))
        if args.student_layers <= count:
            chosen = select_top_layers(mean, args.student_layers)
            result["teacher_to_student"] = {str(s): t for s, t in map_teacher_to_student(chosen, student).items()}
        result["projected_relevance"] = project_layer_scores(mean, args.student_layers).tolist()
    path = _save(out, "layers.json", result)
    print(json.dumps({"ranking": ranking, "top_layers": result["top_layers"], "written": str(path)}))
    return 0


# ------------------------------------------------------------------------------------------------ neurons
def _adapter_config(args, directions):

    method = ablation_method(args.ablation)
    kwargs: dict[str, Any] = {"r": args.r, "alpha": args.alpha, "dropout": args.dropout}
    if args.layers:
        kwargs["layers"] = [int(v) for v in args.layers.split(",")]
    if method != "lora":
        kwargs["directions"] = directions
    return RoutedLoRAConfig(method=method, languages=_languages(args), **kwargs)


def _run_neurons(args) -> int:

    out = Path(args.out)
    if args.train and not args.recipe:
        raise ValueError("--train needs --recipe (the recipe whose stages train the initialised adapters)")
    recipe = None
    if args.recipe:

        recipe = load_recipe(args.recipe)
        config = recipe.adapter_config()
        if config.method != ablation_method(args.ablation):
            raise ValueError(f"ablation {args.ablation} initialises method {ablation_method(args.ablation)!r} but "
                             f"{args.recipe} has adapter method {config.method!r}")
        args.model, args.languages = recipe.model.name_or_path, ",".join(config.languages)
        directions = list(config.directions or directions_for(recipe.stages[0].directions, config.languages))
    else:
        directions = _directions(args)
        config = _adapter_config(args, directions)
    if recipe is not None and args.init_out is None:
        args.init_out = str(out / "adapters")
    model, tokenizer = _load(args)
    pairs = _pairs(args, "dev", directions, args.per_direction)
    init = MLASInit.from_ablation(args.ablation, threshold=args.threshold, seed=args.seed, scale=args.init_scale)
    if args.init_out is None:
        # Awareness report only: the modules the adapter config would patch.
        batches = _batches(pairs, tokenizer, args)
        apply_routed_lora(model, config)
        linears = routed_modules(model)  # the routed modules themselves: the fused op bypasses base_layer
        report: dict[str, Any] = {"threshold": args.threshold, "directions": [direction_key(*d) for d in directions],
                                  "modules": {}}
        phi = {}
        for d in directions:
            with teacher_route(model, d):
                phi[d] = neuron_awareness(model, batches[d], linears)
        for name in linears:
            scores = torch.stack([phi[d][name].output for d in directions])
            split = split_neurons(scores, args.threshold)
            report["modules"][name] = {
                "neurons": int(scores.shape[1]), "general": int(split.general.numel()),
                "specific": {direction_key(*d): int(split.specific[p].numel()) for p, d in enumerate(directions)},
                "top_awareness": {direction_key(*d): scores[p].topk(min(5, scores.shape[1])).indices.tolist()
                                  for p, d in enumerate(directions)},
            }
        path = _save(out, "neurons.json", report)
        total = sum(m["general"] for m in report["modules"].values())
        neurons = sum(m["neurons"] for m in report["modules"].values())
        print(json.dumps({"modules": len(linears), "general_neurons": total, "neurons": neurons, "written": str(path)}))
        return 0

    teacher, teacher_tokenizer = _load(args, args.teacher) if args.teacher else (model, tokenizer)
    batches = _batches(pairs, teacher_tokenizer, args)  # the seed passes run on the teacher
    apply_routed_lora(model, config)
    report = initialise_mlas(model, teacher, batches, init)
    report["ablation"] = args.ablation
    folder = save_adapters(model, Path(args.init_out))
    path = _save(out, "mlas_init.json", report)
    print(json.dumps({"ablation": args.ablation, "method": config.method,
                      "teacher_layers": report.get("teacher_layers"), "adapters": str(folder), "report": str(path)}))
    if args.train:

        if teacher is not model:
            del teacher
        ctx = setup_distributed(args.device)
        try:
            summaries = run_recipe(recipe, ctx, model=model.to(ctx.device), tokenizer=tokenizer)
        finally:
            teardown_distributed(ctx)
        print(json.dumps({name: {"steps": s["steps"], "first_loss": s["first_loss"], "last_loss": s["last_loss"]}
                          for name, s in summaries.items()}))
    return 0


# ------------------------------------------------------------------------------------------------ conflicts
def _run_conflicts(args) -> int:

    out = Path(args.out)
    directions = _directions(args)
    languages = _languages(args)
    model, tokenizer = _load(args)
    torch.manual_seed(args.seed)
    apply_routed_lora(model, RoutedLoRAConfig(method="lora", languages=languages, r=args.r, alpha=args.alpha,
                                              dropout=0.0))
    conflicts = gradient_conflicts(model, _batches(_pairs(args, "dev", directions, args.per_direction), tokenizer,
                                                   args))
    summary: dict[str, Any] = {"gradients": str(_save(out, "gradient_cosine.json", conflicts.to_dict()))}
    if not args.no_plot:
        summary["gradient_png"] = str(plot_gradient_heatmaps(conflicts, out / "gradient_cosine.png"))
    del model
    if args.train_steps > 0:

        settings = TrainingSection(max_steps=args.train_steps, batch_size=args.batch_size, lr=args.lr,
                                   warmup_ratio=0.0, eval_every=0, save_every=0)
        train = _pairs(args, "train", directions, args.train_per_direction)
        evaluation = _pairs(args, "test", directions, args.eval_per_direction)
        result = run_strategy_comparison(
            lambda: _load(args)[0], tokenizer, train, evaluation, settings, out, metric=args.metric,
            adapter={"r": args.r, "alpha": args.alpha, "dropout": 0.0}, max_length=args.max_length,
            seed=args.seed, device=args.device, batch_size=args.batch_size)
        summary["comparison"] = str(out / "conflicts.json")
        summary["delta"] = {s: v["per_direction"] for s, v in result["delta"].items()}
        if not args.no_plot:
            summary["delta_png"] = str(plot_delta_heatmaps(result, out / "conflicts_delta.png"))
    summary["mean_gradient_cosine"] = conflicts.to_dict()["mean_off_diagonal_per_layer"]
    print(json.dumps(summary))
    return 0


# ------------------------------------------------------------------------------------------------ registration
def _ablation_name(text: str) -> str:

    name = text if text in ABLATIONS else f"-{text}"
    if name not in ABLATIONS:
        raise argparse.ArgumentTypeError(f"unknown ablation {text!r}; choose mlas or one of "
                                         f"{', '.join(a.lstrip('-') for a in ABLATIONS if a != 'mlas')}")
    return name


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="analysis", required=True)

    layers = commands.add_parser("layers", help="layer relevance R_i per direction (MLAS-LoRA paper, eq. 1) and ranking")
    _add_data_arguments(layers, per_direction=16)
    layers.add_argument("--top", type=int, default=None, help="how many top layers to report (default all)")
    layers.add_argument("--student-layers", type=int, default=None, metavar="N",
                        help="also map the ranking onto a student with N layers")
    layers.set_defaults(func=_run_layers)

    neurons = commands.add_parser(
        "neurons", help="neuron awareness Φ and the λ split; with --init-out: MLAS-initialise a student and save it")
    _add_data_arguments(neurons, per_direction=16)
    neurons.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="λ (default 0.2)")
    neurons.add_argument("--ablation", default="mlas", type=_ablation_name, metavar="NAME",
                         help="mlas (default) or one of the MLAS-LoRA paper's ablations, written with or without the "
                              f"leading dash ({', '.join(a.lstrip('-') for a in ABLATIONS if a != 'mlas')})")
    neurons.add_argument("--teacher", default=None, help="teacher model (default: the student's own base model)")
    neurons.add_argument("--layers", default=None, help="comma list of student layers to adapt (default all)")
    neurons.add_argument("--r", type=int, default=16)
    neurons.add_argument("--alpha", type=float, default=32.0)
    neurons.add_argument("--dropout", type=float, default=0.1)
    neurons.add_argument("--init-scale", type=float, default=1.0,
                         help="factor on the SVD-initialised ΔW (1.0 = the paper)")
    neurons.add_argument("--init-out", default=None,
                         help="MLAS-initialise the adapters and save them (lora_route checkpoint) into this folder")
    neurons.add_argument("--recipe", default=None,
                         help="take model, languages, directions and adapter config from a training recipe "
                              "(configs/mlas-demo.yaml); --init-out defaults to <out>/adapters")
    neurons.add_argument("--train", action="store_true",
                         help="with --recipe: train the recipe's stages starting from the MLAS-initialised adapters")
    neurons.set_defaults(func=_run_neurons)

    conflicts = commands.add_parser(
        "conflicts", help="per-layer gradient cosine between directions; with --train-steps: together vs "
                          "separate vs grouped training on the same budget, per-direction delta matrix")
    _add_data_arguments(conflicts, per_direction=8)
    conflicts.add_argument("--r", type=int, default=16)
    conflicts.add_argument("--alpha", type=float, default=32.0)
    conflicts.add_argument("--train-steps", type=int, default=0, metavar="N",
                           help="optimizer steps per strategy (0: gradient analysis only)")
    conflicts.add_argument("--train-per-direction", type=int, default=64)
    conflicts.add_argument("--eval-per-direction", type=int, default=16)
    conflicts.add_argument("--lr", type=float, default=5e-4)
    conflicts.add_argument("--metric", choices=("loss", "bleu", "chrf"), default="loss",
                           help="per-direction score: held-out loss (fast) or BLEU / chrF++ of greedy outputs")
    conflicts.add_argument("--no-plot", action="store_true", help="no PNG heatmaps (no matplotlib needed)")
    conflicts.set_defaults(func=_run_conflicts)
