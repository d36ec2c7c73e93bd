"""Training recipes as YAML/JSON: model, adapter, data, optimisation and a list of stages, validated with clear errors.

A recipe file holds the sections ``model``, ``adapter`` (a :class:`lora_route.adapters.config.RoutedLoRAConfig`),
``data``, ``training`` and ``stages``. Every stage may override ``data`` and ``training`` fields; ``--set a.b=value``
edits any field (list items by index: ``stages.1.training.epochs=2``) before validation. The sections are typed
pydantic models: unknown keys, wrong types (a string or null where a number is expected, a string for a boolean),
non-finite numbers and out-of-range values raise :class:`ConfigError` naming the field and what it expects.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.data.prompts import check_template
from lora_route.data.sampling import DIRECTION_SETS

DATA_SOURCES = ("gettext", "flores_plus", "opus100", "local")
SCHEDULERS = ("cosine", "inverse_sqrt", "linear", "constant")
BATCHING = ("mixed", "grouped")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STAGE_INIT = ("continue", "reinit")

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ConfigError(ValueError):
    """A recipe field is missing, unknown, mistyped or out of range (the message names it)."""


class _Section(BaseModel):
    """A recipe section: strict types (no strings for numbers or booleans, no null where a value is needed), finite
    numbers only, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True)


class ModelSection(_Section):
    """name_or_path: ``embedded`` (packaged Gemma 3 270M), a hub name or a local HF folder. dtype of the frozen
    weights: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16."""

    name_or_path: Annotated[str, Field(min_length=1)] = "embedded"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class DataSection(_Section):
    """Where pairs come from and how they become token ids.

    source: gettext (system catalogs, ``locale_dirs``), flores_plus / opus100 (``path`` = hub name or local folder
    in the hub layout), local (``train_files`` / ``dev_files``: jsonl/tsv/csv/parquet/save_to_disk).
    languages: default = the adapter's languages. dev_per_direction: dev pairs per direction for the dev loss.
    """

    source: Literal[DATA_SOURCES] = "gettext"
    languages: Annotated[list[str], Field(min_length=2)] | None = None
    locale_dirs: list[str] | None = None
    path: str | None = None
    train_files: list[str] = Field(default_factory=list)
    dev_files: list[str] = Field(default_factory=list)
    min_chars: NonNegativeInt = 16
    max_chars: NonNegativeInt = 300
    dev_fraction: Fraction = 0.05
    test_fraction: Fraction = 0.05
    dev_per_direction: NonNegativeInt = 50
    max_length: Annotated[int, Field(ge=8)] = 256
    template: str | None = None
    chat_template: bool = False
    on_overflow: Literal["truncate", "drop"] = "truncate"
    padding_side: Literal["right", "left"] = "right"

    @model_validator(mode="after")
    def _consistent(self) -> DataSection:
        if self.source == "local" and not self.train_files:
            raise ValueError("train_files: source=local needs at least one file")
        if self.template is not None:
            check_template(self.template)
        return self


class TrainingSection(_Section):
    """Optimisation. ``epochs`` may be fractional; ``max_steps`` (optimizer steps) caps it when set. Batch size is
    per device and micro-batch: one optimizer step sees batch_size x grad_accum x world_size examples.
    ``rdrop_alpha`` > 0 turns on R-Drop (two dropout passes, loss = CE + alpha * symmetric KL). ``eval_every`` /
    ``save_every`` are in optimizer steps (0: only at the end of the stage). A step whose loss or gradient is not
    finite stops training with an error naming the step, unless ``skip_nonfinite_steps`` is true (then the step is
    skipped and logged); fp16 steps that overflow are skipped by the gradient scaler either way."""

    epochs: Annotated[float, Field(gt=0)] = 1.0
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 8
    grad_accum: PositiveInt = 1
    lr: Annotated[float, Field(gt=0)] = 5e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.02
    betas: Annotated[list[Fraction], Field(min_length=2, max_length=2)] = Field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: Fraction = 0.03
    scheduler: Literal[SCHEDULERS] = "cosine"
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    rdrop_alpha: Annotated[float, Field(ge=0)] = 0.0
    load_balancing_weight: Annotated[float, Field(ge=0)] = 0.01
    batching: Literal[BATCHING] = "mixed"
    precision: Literal[PRECISIONS] = "auto"
    log_every: PositiveInt = 1
    eval_every: NonNegativeInt = 0
    eval_max_batches: PositiveInt | None = None
    save_every: NonNegativeInt = 0
    keep_checkpoints: PositiveInt = 2
    deterministic: bool = True
    skip_nonfinite_steps: bool = False


class StageConfig(_Section):
    """One training stage.

    directions: a named set (en_centric, x_to_en, en_to_x, non_english, all) or a list like ``[de-en, en-zh]``.
    cap_per_direction: at most this many training pairs per direction (null: all). replay_from / replay_fraction:
    add that fraction of an earlier stage's training pairs (stratified by direction). extra_files: more training
    pairs (e.g. a pseudo-corpus jsonl). init: ``continue`` from the previous stage's adapters or ``reinit``
    (fresh adapters, as CrossLoRA's stage 2). data / training: overrides of the recipe-level sections.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]
    directions: Literal[DIRECTION_SETS] | Annotated[list[str], Field(min_length=1)] = "en_centric"
    cap_per_direction: PositiveInt | None = None
    replay_from: str | None = None
    replay_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    extra_files: list[str] = Field(default_factory=list)
    init: Literal[STAGE_INIT] = "continue"
    data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


class RecipeConfig(_Section):
    """A whole training run: shared sections + the stages, run in order into ``output_dir/<stage name>``."""

    name: Annotated[str, Field(min_length=1)]
    output_dir: Annotated[str, Field(min_length=1)]
    adapter: dict[str, Any]
    stages: Annotated[list[StageConfig], Field(min_length=1)]
    seed: NonNegativeInt = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)

    @model_validator(mode="after")
    def _stages_in_order(self) -> RecipeConfig:
        names: list[str] = []
        for index, stage in enumerate(self.stages):
            if stage.name in names:
                raise ValueError(f"stages.{index}.name: {stage.name!r} is used twice")
            if stage.replay_fraction > 0 and stage.replay_from not in names:
                raise ValueError(f"stages.{index}.replay_from: expected the name of an earlier stage {names}, "
                                 f"got {stage.replay_from!r}")
            names.append(stage.name)
        return self

    def adapter_config(self) -> RoutedLoRAConfig:
        try:
            return RoutedLoRAConfig.from_dict(copy.deepcopy(self.adapter))
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"adapter: {err}") from err

    def stage_data(self, stage: StageConfig) -> DataSection:
        merged = _validated(DataSection, {**self.data.model_dump(), **stage.data}, f"stages[{stage.name}].data")
        if merged.languages is None:
            merged.languages = list(self.adapter_config().languages)
        return merged

    def stage_training(self, stage: StageConfig) -> TrainingSection:
        return _validated(TrainingSection, {**self.training.model_dump(), **stage.training},
                          f"stages[{stage.name}].training")

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self, stage: StageConfig) -> str:
        """Hash of everything that decides a stage's trajectory (not logging/eval/save cadence)."""
        training = self.stage_training(stage).model_dump(mode="json")
        for name in ("log_every", "eval_every", "eval_max_batches", "save_every", "keep_checkpoints"):
            training.pop(name)
        blob = {"adapter": self.adapter, "model": self.model.model_dump(mode="json"), "seed": self.seed,
                "data": self.stage_data(stage).model_dump(mode="json"), "training": training,
                "stage": stage.model_dump(mode="json", exclude={"data", "training"}),
                "stages_before": [s.name for s in self.stages[: self.stages.index(stage)]]}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _describe(error: dict, where: str, model: type[BaseModel]) -> str:
    """One line for one pydantic error: the field's dotted path, what was expected, what was given."""
    location = ".".join(str(part) for part in error["loc"])
    field = f"{where}.{location}" if where and location else (where or location)
    if error["type"] == "extra_forbidden":
        section = model
        for part in error["loc"][:-1]:
            annotation = section.model_fields.get(str(part))
            inner = getattr(annotation, "annotation", None) if annotation else None
            section = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else section
        return f"{field}: unknown key; allowed: {sorted(section.model_fields)}"
    if error["type"] == "missing":
        return f"{field}: missing key"
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: {message} (got {error['input']!r})" if "input" in error and error["type"] != "value_error" \
        else f"{field}: {message}"


def _validated(model: type[_Section], raw: Any, where: str):
    """``model.model_validate(raw)``, with every error as one ConfigError line naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("; ".join(_describe(e, where, model) for e in err.errors(include_url=False))) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` edits (value parsed as YAML) to a raw recipe mapping; returns a new mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        path, _, text = item.partition("=")
        keys = path.strip().split(".")
        if not all(keys):
            raise ConfigError(f"--set {item!r}: empty key in {path!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
        node = raw
        for depth, key in enumerate(keys[:-1]):
            node = _child(node, key, ".".join(keys[: depth + 1]), create=True)
        last = keys[-1]
        if isinstance(node, list):
            node[_index(node, last, path)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {path}: cannot descend into a {type(node).__name__}")
    return raw


def _index(node: list, key: str, path: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise ConfigError(f"--set {path}: {key!r} is not an index of a list of {len(node)} items")
    return int(key)


def _child(node: Any, key: str, path: str, create: bool):
    if isinstance(node, list):
        return node[_index(node, key, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {path}: cannot descend into a {type(node).__name__}")
    if key not in node or node[key] is None:
        if not create:
            raise ConfigError(f"--set {path}: no such key")
        node[key] = {}
    return node[key]


def _numbers(value: Any) -> Any:
    """Floats for strings such as ``"5e-4"`` (YAML 1.1 reads exponent notation without a dot as a string)."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _FLOAT_RE.match(value):
        return float(value)
    return value


def parse_recipe(raw: dict, source: str = "<recipe>") -> RecipeConfig:
    """Validate a raw mapping into a :class:`RecipeConfig` (raises ConfigError naming the bad field); the adapter
    section and every stage's merged data / training sections are validated too, before any model loads."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping, got {type(raw).__name__}")
    recipe = _validated(RecipeConfig, _numbers(raw), "")
    recipe.adapter_config()
    for stage in recipe.stages:
        recipe.stage_data(stage)
        recipe.stage_training(stage)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a YAML/JSON recipe, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from err
    return parse_recipe(apply_overrides(raw or {}, overrides or []), str(path))
