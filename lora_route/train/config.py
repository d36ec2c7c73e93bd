"""Training recipes as YAML/JSON: model, adapter, data, optimisation and a list of stages, validated with clear errors.

A recipe file holds the sections ``model``, ``adapter`` (a :class:`lora_route.methods.RoutedLoRAConfig`), ``data``,
``training`` and ``stages``. Every stage may override ``data`` and ``training`` fields; ``--set a.b=value`` edits
any field (list items by index: ``stages.1.training.epochs=2``) before validation. Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError` naming the field.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.data.prompts import check_template
from lora_route.data.sampling import DIRECTION_SETS

DATA_SOURCES = ("gettext", "flores_plus", "opus100", "local")
SCHEDULERS = ("cosine", "inverse_sqrt", "linear", "constant")
BATCHING = ("mixed", "grouped")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STAGE_INIT = ("continue", "reinit")


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigError(ValueError):
    """A recipe field is missing, unknown, mistyped or out of range (the message names it)."""


@dataclass
class ModelSection:
    """name_or_path: ``embedded`` (packaged Gemma 3 270M), a hub name or a local HF folder. dtype of the frozen
    weights: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16."""

    name_or_path: str = "embedded"
    dtype: str = "auto"

    def validate(self, where: str) -> None:
        _require(isinstance(self.name_or_path, str) and self.name_or_path, f"{where}.name_or_path", "a non-empty string")
        _choice(self.dtype, ("auto", "float32", "bfloat16", "float16"), f"{where}.dtype")


@dataclass
class DataSection:
    """Where pairs come from and how they become token ids.

    source: gettext (system catalogs, ``locale_dirs``), flores_plus / opus100 (``path`` = hub name or local folder
    in the hub layout), local (``train_files`` / ``dev_files``: jsonl/tsv/parquet/save_to_disk).
    languages: default = the adapter's languages. dev_per_direction: dev pairs per direction for the dev loss.
    """

    source: str = "gettext"
    languages: list[str] | None = None
    locale_dirs: list[str] | None = None
    path: str | None = None
    train_files: list[str] = field(default_factory=list)
    dev_files: list[str] = field(default_factory=list)
    min_chars: int = 16
    max_chars: int = 300
    dev_fraction: float = 0.05
    test_fraction: float = 0.05
    dev_per_direction: int = 50
    max_length: int = 256
    template: str | None = None
    chat_template: bool = False
    on_overflow: str = "truncate"
    padding_side: str = "right"

    def validate(self, where: str) -> None:
        _choice(self.source, DATA_SOURCES, f"{where}.source")
        if self.languages is not None:
            _require(isinstance(self.languages, list) and len(self.languages) >= 2, f"{where}.languages",
                     "a list of at least two language codes")
        for name in ("min_chars", "max_chars", "dev_per_direction", "max_length"):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{where}.{name}",
                     "a non-negative integer")
        _require(self.max_length >= 8, f"{where}.max_length", "at least 8 tokens")
        _require(0 <= self.dev_fraction < 1 and 0 <= self.test_fraction < 1, f"{where}.dev_fraction/test_fraction",
                 "fractions in [0, 1)")
        _choice(self.on_overflow, ("truncate", "drop"), f"{where}.on_overflow")
        _choice(self.padding_side, ("right", "left"), f"{where}.padding_side")
        if self.source == "local":
            _require(bool(self.train_files), f"{where}.train_files", "at least one file for source=local")
        if self.template is not None:
            try:
                check_template(self.template)
            except ValueError as err:
                raise ConfigError(f"{where}.template: {err}") from err


@dataclass
class TrainingSection:
    """Optimisation. ``epochs`` may be fractional; ``max_steps`` (optimizer steps) caps it when set. Batch size is
    per device and micro-batch: one optimizer step sees batch_size x grad_accum x world_size examples.
    ``rdrop_alpha`` > 0 turns on R-Drop (two dropout passes, loss = CE + alpha * symmetric KL). ``eval_every`` /
    ``save_every`` are in optimizer steps (0: only at the end of the stage)."""

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    rdrop_alpha: float = 0.0
    load_balancing_weight: float = 0.01
    batching: str = "mixed"
    precision: str = "auto"
    log_every: int = 1
    eval_every: int = 0
    eval_max_batches: int | None = None
    save_every: int = 0
    keep_checkpoints: int = 2
    deterministic: bool = True

    def validate(self, where: str) -> None:
        _require(isinstance(self.epochs, (int, float)) and self.epochs > 0, f"{where}.epochs", "a positive number")
        if self.max_steps is not None:
            _require(isinstance(self.max_steps, int) and self.max_steps > 0, f"{where}.max_steps", "a positive integer")
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{where}.{name}",
                     "an integer >= 1")
        for name in ("eval_every", "save_every"):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{where}.{name}",
                     "an integer >= 0")
        _require(isinstance(self.lr, (int, float)) and self.lr > 0, f"{where}.lr", "a positive number")
        _require(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, f"{where}.weight_decay",
                 "a number >= 0")
        _require(isinstance(self.betas, list) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"{where}.betas", "two numbers in [0, 1)")
        _require(0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio", "a number in [0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, f"{where}.min_lr_ratio", "a number in [0, 1]")
        _choice(self.scheduler, SCHEDULERS, f"{where}.scheduler")
        _choice(self.batching, BATCHING, f"{where}.batching")
        _choice(self.precision, PRECISIONS, f"{where}.precision")
        if self.max_grad_norm is not None:
            _require(self.max_grad_norm > 0, f"{where}.max_grad_norm", "a positive number or null")
        _require(self.rdrop_alpha >= 0, f"{where}.rdrop_alpha", "a number >= 0")
        _require(self.load_balancing_weight >= 0, f"{where}.load_balancing_weight", "a number >= 0")
        if self.eval_max_batches is not None:
            _require(self.eval_max_batches >= 1, f"{where}.eval_max_batches", "an integer >= 1 or null")


@dataclass
class StageConfig:
    """One training stage.

    directions: a named set (en_centric, x_to_en, en_to_x, non_english, all) or a list like ``[de-en, en-zh]``.
    cap_per_direction: at most this many training pairs per direction (null: all). replay_from / replay_fraction:
    add that fraction of an earlier stage's training pairs (stratified by direction). extra_files: more training
    pairs (e.g. a pseudo-corpus jsonl). init: ``continue`` from the previous stage's adapters or ``reinit``
    (fresh adapters, as CrossLoRA's stage 2). data / training: overrides of the recipe-level sections.
    """

    name: str
    directions: str | list = "en_centric"
    cap_per_direction: int | None = None
    replay_from: str | None = None
    replay_fraction: float = 0.0
    extra_files: list[str] = field(default_factory=list)
    init: str = "continue"
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def validate(self, where: str, earlier: list[str]) -> None:
        _require(isinstance(self.name, str) and self.name.replace("_", "").replace("-", "").isalnum(),
                 f"{where}.name", "a name of letters, digits, '-' or '_'")
        if isinstance(self.directions, str):
            _choice(self.directions, DIRECTION_SETS, f"{where}.directions")
        else:
            _require(isinstance(self.directions, list) and self.directions, f"{where}.directions",
                     f"one of {DIRECTION_SETS} or a non-empty list of directions such as 'de-en'")
        if self.cap_per_direction is not None:
            _require(isinstance(self.cap_per_direction, int) and self.cap_per_direction >= 1,
                     f"{where}.cap_per_direction", "a positive integer or null")
        _require(0 <= self.replay_fraction <= 1, f"{where}.replay_fraction", "a number in [0, 1]")
        if self.replay_fraction > 0:
            _require(self.replay_from in earlier, f"{where}.replay_from", f"the name of an earlier stage {earlier}")
        _require(isinstance(self.extra_files, list), f"{where}.extra_files", "a list of files")
        _choice(self.init, STAGE_INIT, f"{where}.init")
        _require(isinstance(self.data, dict) and isinstance(self.training, dict), f"{where}.data/training",
                 "mappings of overrides")


@dataclass
class RecipeConfig:
    """A whole training run: shared sections + the stages, run in order into ``output_dir/<stage name>``."""

    name: str
    output_dir: str
    adapter: dict
    stages: list[StageConfig]
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)

    def adapter_config(self) -> RoutedLoRAConfig:
        try:
            return RoutedLoRAConfig.from_dict(copy.deepcopy(self.adapter))
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"adapter: {err}") from err

    def stage_data(self, stage: StageConfig) -> DataSection:
        merged = _build(DataSection, {**asdict(self.data), **stage.data}, f"stages[{stage.name}].data")
        if merged.languages is None:
            merged.languages = list(self.adapter_config().languages)
        merged.validate(f"stages[{stage.name}].data")
        return merged

    def stage_training(self, stage: StageConfig) -> TrainingSection:
        merged = _build(TrainingSection, {**asdict(self.training), **stage.training}, f"stages[{stage.name}].training")
        merged.validate(f"stages[{stage.name}].training")
        return merged

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def fingerprint(self, stage: StageConfig) -> str:
        """Hash of everything that decides a stage's trajectory (not logging/eval/save cadence)."""
        training = asdict(self.stage_training(stage))
        for name in ("log_every", "eval_every", "eval_max_batches", "save_every", "keep_checkpoints"):
            training.pop(name)
        blob = {"adapter": self.adapter, "model": asdict(self.model), "seed": self.seed,
                "data": asdict(self.stage_data(stage)), "training": training,
                "stage": {k: v for k, v in asdict(stage).items() if k not in ("data", "training")},
                "stages_before": [s.name for s in self.stages[: self.stages.index(stage)]]}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _require(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: expected {expected}")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {allowed}")


def _reject_unknown_keys(cls, raw: dict, where: str) -> None:
    """Raise ConfigError naming the keys of ``raw`` that are not fields of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    _reject_unknown_keys(cls, raw, where)
    required = [f.name for f in fields(cls)
                if f.name not in raw and f.default is MISSING and f.default_factory is MISSING]
    if required:
        raise ConfigError(f"{where}: missing key(s) {required}")
    try:
        return cls(**raw)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


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
        value = yaml.safe_load(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            node = _child(node, key, ".".join(keys[: depth + 1]), create=True)
        last = keys[-1]
        if isinstance(node, list):
            index = _index(node, last, path)
            node[index] = value
        else:
            node[last] = value
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
    """Validate a raw mapping into a :class:`RecipeConfig` (raises ConfigError naming the bad field)."""
    raw = _numbers(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping, got {type(raw).__name__}")
    _reject_unknown_keys(RecipeConfig, raw, source)
    for key in ("name", "output_dir", "adapter", "stages"):
        if key not in raw:
            raise ConfigError(f"{source}: missing key {key!r}")
    if not isinstance(raw["stages"], list) or not raw["stages"]:
        raise ConfigError(f"{source}: stages must be a non-empty list")
    if not isinstance(raw["adapter"], dict):
        raise ConfigError(f"{source}: adapter must be a mapping of RoutedLoRAConfig fields")
    _require(isinstance(raw.get("seed", 0), int), "seed", "an integer")
    stages = []
    for i, stage_raw in enumerate(raw["stages"]):
        stage = _build(StageConfig, stage_raw, f"stages[{i}]")
        stage.validate(f"stages[{i}]", [s.name for s in stages])
        if stage.name in {s.name for s in stages}:
            raise ConfigError(f"stages[{i}].name: {stage.name!r} is used twice")
        stages.append(stage)
    recipe = RecipeConfig(
        name=raw["name"], output_dir=raw["output_dir"], adapter=raw["adapter"], stages=stages,
        seed=raw.get("seed", 0), model=_build(ModelSection, raw.get("model", {}), "model"),
        data=_build(DataSection, raw.get("data", {}), "data"),
        training=_build(TrainingSection, raw.get("training", {}), "training"),
    )
    recipe.model.validate("model")
    recipe.adapter_config()
    for stage in stages:
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
