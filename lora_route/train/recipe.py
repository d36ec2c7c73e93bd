"""Run a recipe: build each stage's data, the model and its adapters, train the stages in order.

Stage outputs land in ``<output_dir>/<stage>/``: ``checkpoint-*`` folders, ``log.jsonl``, ``adapters/`` (the
final adapters, :func:`lora_route.adapters.io.save_adapters`) and ``stage.json`` (data counts, losses, timings).
With ``resume`` a finished stage is skipped (its final weights are loaded) and an unfinished one continues from its
newest checkpoint. :func:`load_recipe_stage` loads a trained stage back for evaluation or the pseudo-corpus.
"""
from __future__ import annotations

import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch

from lora_route.adapters.io import load_adapters, save_adapters
from lora_route.adapters.patch import apply_routed_lora, routed_modules
from lora_route.common.files import read_json, write_json
from lora_route.data.collate import encode_pairs
from lora_route.data.corpus import TranslationPair, direction_counts
from lora_route.data.gettext_corpus import load_gettext_corpus
from lora_route.data.loaders import load_flores_plus, load_local_pairs, load_opus100, opus100_config
from lora_route.data.sampling import directions_for, replay_sample, sample_per_direction
from lora_route.models.loading import load_model
from lora_route.train.checkpoint import list_checkpoints
from lora_route.train.config import DataSection, RecipeConfig, StageConfig, load_recipe
from lora_route.train.distributed import DistContext, setup_distributed
from lora_route.train.trainer import Trainer

logger = logging.getLogger(__name__)
STAGE_SUMMARY = "stage.json"
ADAPTERS_DIR = "adapters"


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=16)
def _corpus(source: str, languages: tuple, split: str, locale_dirs, path, files, min_chars: int, max_chars: int,
            dev_fraction: float, test_fraction: float) -> tuple[TranslationPair, ...]:
    if source == "gettext":
        pairs = load_gettext_corpus(languages, split, locale_dirs, dev_fraction=dev_fraction,
                                    test_fraction=test_fraction, min_chars=min_chars, max_chars=max_chars)
    elif source == "flores_plus":
        pairs = load_flores_plus(languages, split, **({"source": path} if path else {}))
    elif source == "opus100":
        pivot_pairs = [opus100_config(lang, "en") for lang in languages if lang != "en"]
        pairs = load_opus100(pivot_pairs, split, **({"source": path} if path else {}))
    else:
        pairs = [p for f in files for p in load_local_pairs(f, split=split)]
    return tuple(pairs)


def corpus_pairs(data: DataSection, split: str) -> list[TranslationPair]:
    """Every pair of ``split`` among ``data.languages`` from ``data.source`` (cached per settings)."""
    files = data.train_files if split == "train" else data.dev_files
    return list(_corpus(data.source, tuple(data.languages), split, _freeze(data.locale_dirs), data.path,
                        _freeze(files), data.min_chars, data.max_chars, data.dev_fraction, data.test_fraction))


def stage_train_pairs(recipe: RecipeConfig, stage: StageConfig) -> list[TranslationPair]:
    """A stage's training pairs: capped directions + replay of an earlier stage + extra files (deterministic)."""
    data = recipe.stage_data(stage)
    directions = directions_for(stage.directions, data.languages)
    pairs = sample_per_direction(corpus_pairs(data, "train"), directions, stage.cap_per_direction, recipe.seed)
    if stage.replay_fraction > 0:
        earlier = stage_train_pairs(recipe, recipe.stage(stage.replay_from))
        pairs += replay_sample(earlier, stage.replay_fraction, recipe.seed)
    for file in stage.extra_files:
        pairs += load_local_pairs(file)
    return pairs


def stage_dev_pairs(recipe: RecipeConfig, stage: StageConfig, train: list[TranslationPair]) -> list[TranslationPair]:
    """Dev pairs for the directions the stage trains on (those the dev split has), ``dev_per_direction`` each."""
    data = recipe.stage_data(stage)
    if data.source == "local" and not data.dev_files or data.dev_per_direction == 0:
        return []
    dev = corpus_pairs(data, "dev")
    available = {p.direction for p in dev}
    wanted = sorted({p.direction for p in train} & available)
    return sample_per_direction(dev, wanted, data.dev_per_direction, recipe.seed) if wanted else []


def build_model(recipe: RecipeConfig, device: torch.device):
    """Base model + tokenizer, patched with the recipe's adapter (seeded initialisation), on ``device``."""
    dtype = recipe.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    model, tokenizer = load_model(recipe.model.name_or_path, dtype=dtype, device=device)
    torch.manual_seed(recipe.seed)
    apply_routed_lora(model, recipe.adapter_config())
    model.to(device)
    return model, tokenizer


def _reinit_adapters(model, seed: int) -> None:
    torch.manual_seed(seed)
    for module in routed_modules(model).values():
        module.reset_adapter_parameters()


def _stage_done(stage_dir: Path, fingerprint: str) -> bool:
    summary = stage_dir / STAGE_SUMMARY
    return summary.is_file() and read_json(summary).get("fingerprint") == fingerprint \
        and (stage_dir / ADAPTERS_DIR).is_dir()


def run_recipe(recipe: RecipeConfig, ctx: DistContext, *, resume: bool = False, stop_after_steps: int | None = None,
               model=None, tokenizer=None, progress: bool = True) -> dict:
    """Train every stage of ``recipe``; returns ``{stage name: summary}`` (``completed`` false if stopped early).

    model / tokenizer: an already patched model to train instead of building one from ``recipe.model`` (tests).
    """
    output = Path(recipe.output_dir)
    if model is None:
        model, tokenizer = build_model(recipe, ctx.device)
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token")
    if ctx.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / "recipe.json", recipe.to_dict())
    summaries = {}
    for index, stage in enumerate(recipe.stages):
        stage_dir = output / stage.name
        fingerprint = recipe.fingerprint(stage)
        if resume and _stage_done(stage_dir, fingerprint):
            load_adapters(model, stage_dir / ADAPTERS_DIR)
            summaries[stage.name] = read_json(stage_dir / STAGE_SUMMARY)
            continue
        if not resume and ctx.is_main and stage_dir.exists():
            for old in list_checkpoints(stage_dir):
                shutil.rmtree(old)
            (stage_dir / STAGE_SUMMARY).unlink(missing_ok=True)
        ctx.barrier()
        if index > 0 and stage.init == "reinit":
            _reinit_adapters(model, recipe.seed + index)
        data, settings = recipe.stage_data(stage), recipe.stage_training(stage)
        train_pairs = stage_train_pairs(recipe, stage)
        dev_pairs = stage_dev_pairs(recipe, stage, train_pairs)
        encode = functools.partial(encode_pairs, tokenizer=tokenizer, max_length=data.max_length,
                                   template=data.template, chat_template=data.chat_template,
                                   on_overflow=data.on_overflow)
        train_set = encode(train_pairs, what=f"{stage.name} training examples")
        dev_set = encode(dev_pairs, what=f"{stage.name} dev examples")
        trainer = Trainer(model, train_set.examples, dev_set.examples, settings, pad_token_id=tokenizer.pad_token_id,
                          output_dir=stage_dir, seed=recipe.seed + index, fingerprint=fingerprint, ctx=ctx,
                          padding_side=data.padding_side, progress=progress)
        started = time.time()
        result = trainer.train(resume=resume, stop_after_steps=stop_after_steps)
        history = result.history
        summary = {
            "stage": stage.name, "fingerprint": fingerprint, "completed": result.completed,
            "steps": result.steps_done, "total_steps": result.total_steps, "world_size": ctx.world_size,
            "train_pairs": direction_counts(train_pairs), "dev_pairs": direction_counts(dev_pairs),
            "truncated": train_set.truncated, "dropped": train_set.dropped,
            "first_loss": history[0]["loss"] if history else None, "last_loss": history[-1]["loss"] if history else None,
            "skipped_steps": sum("skipped" in r for r in history),
            "dev_losses": result.dev_losses, "seconds": time.time() - started,
            "mean_step_s": sum(r["step_s"] for r in history) / len(history) if history else None,
            "mean_tokens_per_s": sum(r["tokens_per_s"] for r in history) / len(history) if history else None,
        }
        if history and "peak_mem_gib" in history[-1]:
            summary["peak_mem_gib"] = max(r["peak_mem_gib"] for r in history)
        summaries[stage.name] = summary
        if not result.completed:
            return summaries
        if ctx.is_main:
            save_adapters(model, stage_dir / ADAPTERS_DIR)
            write_json(stage_dir / STAGE_SUMMARY, summary)
        ctx.barrier()
    return summaries


def recipe_trained_directions(recipe: RecipeConfig, stage_name: str) -> list[tuple[str, str]]:
    """Directions a recipe trained on up to and including ``stage_name`` (stage sets, replay and extra files)."""
    names = [s.name for s in recipe.stages]
    if stage_name not in names:
        raise ValueError(f"recipe {recipe.name!r} has no stage {stage_name!r}; stages: {names}")
    trained: dict[tuple[str, str], None] = {}
    for stage in recipe.stages[: names.index(stage_name) + 1]:
        for direction in directions_for(stage.directions, recipe.stage_data(stage).languages):
            trained[direction] = None
        for file in stage.extra_files:
            for pair in load_local_pairs(file):
                trained[pair.direction] = None
    return list(trained)


def load_recipe_stage(recipe_path: str, stage_name: str | None, overrides: Sequence[str], device: str | None):
    """(model, tokenizer, recipe, stage name, trained directions): the recipe's model with the adapters that
    ``lora-route train`` saved for ``stage_name`` (default: the last stage) in ``<output_dir>/<stage>/adapters``."""
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
