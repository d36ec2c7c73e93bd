"""Adapter families as configurations over one layer type and one kernel.

=============== ================================================= ==================================================
method          banks per patched layer                           route(s) of a row translating src → tgt
=============== ================================================= ==================================================
lora            A (1, r, d_in), B (1, d_out, r)                   a = b = 0
molora_static   one expert per direction (``directions``)          a = b = direction id
molora_topk     ``num_experts`` experts + learned token router     top-k experts per token, gate = per-row scale
crosslora       A per source expert, B per target expert           a = src_expert[src], b = tgt_expert[tgt]
unilora         crosslora + UniCore Uni_A (r_uni, r), Uni_B        as crosslora, core U = Uni_B·Uni_A (u = 0)
                (r, r_uni)
mlas            general LoRA (index 0) + one pair-specific LoRA    route 1: a = b = 0; route 2 (``specific_layers``
                per direction (index 1 + direction id)             only): a = b = 1 + direction id
dat             one LoRA per routing-table adapter: XX→En per      a = b = routing_table[src-tgt]
                source language, En→XX per target-language group
=============== ================================================= ==================================================

``src_expert`` / ``tgt_expert`` maps make grouped experts (:func:`lora_route.adapters.routing.expert_map_from_groups`) and
shared experts (:func:`lora_route.adapters.routing.shared_expert_map`) configuration, not code.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Sequence

from lora_route.common.languages import TYPOLOGY_GROUPS, direction_key, parse_direction

METHODS = ("lora", "molora_static", "molora_topk", "crosslora", "unilora", "mlas", "dat")
DEFAULT_TARGET_MODULES = ("gate_proj", "up_proj", "down_proj")
# Methods whose source experts are paired with target experts they were not trained with: every A expert starts from
# one shared draw (see RoutedLoRALinear.reset_adapter_parameters).
SHARED_A_INIT_METHODS = ("crosslora", "unilora")
# Methods whose route does not depend on the languages (no route() context needed).
LANGUAGE_FREE_METHODS = ("lora", "molora_topk")
_DIRECTION_METHODS = ("molora_static", "mlas")


class LayerSpec(NamedTuple):
    """What one patched linear layer holds: bank sizes, whether it has the UniCore, which routes it applies and
    how many experts its learned router picks from (molora_topk; 0 otherwise)."""

    n_a: int
    n_b: int
    has_core: bool
    routes: tuple[int, ...]
    router_experts: int = 0


@dataclass
class RoutedLoRAConfig:
    """Configuration of a routed-LoRA adapter (JSON-safe through :meth:`to_dict` / :meth:`from_dict`).

    method:           one of :data:`METHODS`.
    languages:        ISO codes the adapter serves (order fixes the default expert indices).
    r, alpha:         LoRA rank and alpha; every route is scaled by ``alpha / r``.
    dropout:          dropout probability on the adapter input (training only).
    target_modules:   module-name suffixes (``("gate_proj", ...)``) or one regex matched against full module names.
    layers:           decoder-layer indices whose modules are patched (None: all).
    r_uni:            UniCore rank (unilora).
    src_expert / tgt_expert: language → A / B expert index (crosslora, unilora; default one expert per language).
    independent_source_init: crosslora, unilora: draw every source expert A on its own instead of all from one
                      shared draw (the default, see ``RoutedLoRALinear.reset_adapter_parameters``).
    directions:       (src, tgt) pairs with their own expert (molora_static) or pair-specific LoRA (mlas);
                      default every ordered pair of distinct languages.
    num_experts, top_k: molora_topk's expert count (default one per language) and experts per token.
    specific_layers:  mlas: decoder layers that carry the pair-specific LoRA (None: every patched layer).
    pivot, language_groups, routing_table: dat. ``routing_table`` maps ``"src-tgt"`` → adapter name; when None it
                      is built as XX→En adapter ``"xx_en.<src>"`` per source language and En→XX adapter
                      ``"en_xx.<group>"`` per target-language group (``language_groups``, default typology groups).
    """

    method: str
    languages: list[str]
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] | str = DEFAULT_TARGET_MODULES
    layers: list[int] | None = None
    r_uni: int = 1024
    src_expert: dict[str, int] | None = None
    tgt_expert: dict[str, int] | None = None
    independent_source_init: bool = False
    directions: list[tuple[str, str]] | None = None
    num_experts: int | None = None
    top_k: int = 1
    specific_layers: list[int] | None = None
    pivot: str = "en"
    language_groups: dict[str, str] | None = None
    routing_table: dict[str, str] | None = None
    _direction_ids: dict[tuple[str, str], int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _dat_adapters: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        self._check_languages()
        for name in ("r", "r_uni", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_number(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"alpha must be a finite positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self._check_target_modules()
        self.layers = self._check_layer_list("layers", self.layers)
        self.specific_layers = self._check_layer_list("specific_layers", self.specific_layers)
        if self.method in ("crosslora", "unilora"):
            self.src_expert = self._check_expert_map("src_expert", self.src_expert)
            self.tgt_expert = self._check_expert_map("tgt_expert", self.tgt_expert)
        if not isinstance(self.independent_source_init, bool):
            raise ValueError(f"independent_source_init must be true or false, got {self.independent_source_init!r}")
        if self.independent_source_init and self.method not in SHARED_A_INIT_METHODS:
            raise ValueError(f"independent_source_init applies to {' and '.join(SHARED_A_INIT_METHODS)}; {self.method} "
                             "always draws its A matrices independently")
        if self.method in _DIRECTION_METHODS:
            self._check_directions()
        if self.method == "molora_topk":
            if self.num_experts is None:
                self.num_experts = len(self.languages)
            if not isinstance(self.num_experts, int) or self.num_experts <= 0:
                raise ValueError(f"num_experts must be a positive integer, got {self.num_experts!r}")
            if self.top_k > self.num_experts:
                raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.method == "dat":
            self._check_dat()

    def _check_languages(self) -> None:
        if isinstance(self.languages, str) or not isinstance(self.languages, Sequence) or not self.languages:
            raise ValueError(f"languages must be a non-empty list of language codes, got {self.languages!r}")
        self.languages = list(self.languages)
        for lang in self.languages:
            if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2,3}(_[A-Za-z]+)?", lang):
                raise ValueError(f"language code {lang!r} is not an ISO 639 code such as 'en' or 'zh'")
        duplicates = sorted({lang for lang in self.languages if self.languages.count(lang) > 1})
        if duplicates:
            raise ValueError(f"languages lists {', '.join(duplicates)} more than once")

    def _check_target_modules(self) -> None:
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as err:
                raise ValueError(f"target_modules regex {self.target_modules!r} does not compile: {err}") from None
            return
        modules = tuple(self.target_modules)
        if not modules or not all(isinstance(m, str) and m for m in modules):
            raise ValueError(f"target_modules must be a regex or a non-empty list of module names, got {modules!r}")
        self.target_modules = modules

    @staticmethod
    def _check_layer_list(name: str, values) -> list[int] | None:
        if values is None:
            return None
        values = list(values)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"{name} must be None or a non-empty list of layer indices >= 0, got {values!r}")
        return sorted(set(values))

    def _check_expert_map(self, name: str, mapping) -> dict[str, int]:
        if mapping is None:
            return {lang: i for i, lang in enumerate(self.languages)}
        if not isinstance(mapping, dict):
            raise ValueError(f"{name} must map language codes to expert indices, got {type(mapping).__name__}")
        missing = [lang for lang in self.languages if lang not in mapping]
        extra = [lang for lang in mapping if lang not in self.languages]
        if missing or extra:
            raise ValueError(f"{name} must cover exactly the languages {self.languages}: "
                             f"missing {missing or 'none'}, unknown {extra or 'none'}")
        values = {lang: mapping[lang] for lang in self.languages}
        for lang, index in values.items():
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError(f"{name}[{lang!r}] must be an expert index >= 0, got {index!r}")
        used = set(values.values())
        if used != set(range(len(used))):
            raise ValueError(f"{name} must use expert indices 0..n-1 without gaps, got {sorted(used)}")
        return values

    def _check_directions(self) -> None:
        if self.directions is None:
            self.directions = [(s, t) for s in self.languages for t in self.languages if s != t]
        directions = []
        for pair in self.directions:
            if isinstance(pair, str):
                pair = parse_direction(pair)
            if len(pair) != 2 or any(lang not in self.languages for lang in pair):
                raise ValueError(f"direction {pair!r} must be a (src, tgt) pair of configured languages {self.languages}")
            directions.append((pair[0], pair[1]))
        if not directions:
            raise ValueError("directions is empty")
        if len(set(directions)) != len(directions):
            raise ValueError("directions lists a pair more than once")
        self.directions = directions
        self._direction_ids = {pair: i for i, pair in enumerate(directions)}

    def _check_dat(self) -> None:
        if self.pivot not in self.languages:
            raise ValueError(f"dat pivot {self.pivot!r} is not among the languages {self.languages}")
        others = [lang for lang in self.languages if lang != self.pivot]
        if not others:
            raise ValueError("dat needs at least one language besides the pivot")
        if self.language_groups is None:
            missing = [lang for lang in others if lang not in TYPOLOGY_GROUPS]
            if missing:
                raise ValueError(f"no default language group for {', '.join(missing)}; pass language_groups")
            self.language_groups = {lang: TYPOLOGY_GROUPS[lang] for lang in others}
        missing = [lang for lang in others if lang not in self.language_groups]
        if missing:
            raise ValueError(f"language_groups has no group for {', '.join(missing)}")
        table = {direction_key(lang, self.pivot): f"xx_en.{lang}" for lang in others}
        table.update({direction_key(self.pivot, lang): f"en_xx.{self.language_groups[lang]}" for lang in others})
        if self.routing_table is not None:
            if not isinstance(self.routing_table, dict):
                raise ValueError("routing_table must map 'src-tgt' strings to adapter names")
            for key, adapter in self.routing_table.items():
                parts = _direction_or_none(key)
                if parts is None or any(lang not in self.languages for lang in parts):
                    raise ValueError(f"routing_table key {key!r} is not 'src-tgt' over the languages {self.languages}")
                if not isinstance(adapter, str) or not adapter:
                    raise ValueError(f"routing_table[{key!r}] must be an adapter name, got {adapter!r}")
            table.update(self.routing_table)
        self.routing_table = table
        self._dat_adapters = list(dict.fromkeys(table.values()))

    # ------------------------------------------------------------------------------------------ queries
    def direction_index(self, src: str, tgt: str) -> int | None:
        """Index of the direction's expert (molora_static) or pair-specific LoRA (mlas); None when not configured."""
        return self._direction_ids.get((src, tgt))

    @property
    def dat_adapters(self) -> list[str]:
        """dat: adapter names in bank order."""
        return list(self._dat_adapters)

    def dat_adapter_index(self, src: str, tgt: str) -> int:
        """dat: bank index serving ``src → tgt``; ValueError for a direction the routing table does not define."""
        key = direction_key(src, tgt)
        if key not in self.routing_table:
            raise ValueError(
                f"dat has no adapter for {key}: it is neither XX→{self.pivot} nor {self.pivot}→XX; "
                f"add it to routing_table (e.g. routing_table={{'{key}': 'en_xx.<group>'}})"
            )
        return self._dat_adapters.index(self.routing_table[key])

    def supported_directions(self) -> list[tuple[str, str]]:
        """Every (src, tgt) pair this adapter routes (excluding src == tgt)."""
        if self.method in _DIRECTION_METHODS:
            return list(self.directions)
        if self.method == "dat":
            return [parse_direction(key) for key in self.routing_table]
        return [(s, t) for s in self.languages for t in self.languages if s != t]

    def layer_spec(self, layer_index: int | None) -> LayerSpec:
        """Banks of a patched linear layer in decoder layer ``layer_index`` (None: not inside a numbered layer)."""
        if self.method == "lora":
            return LayerSpec(1, 1, False, (0,))
        if self.method == "molora_static":
            return LayerSpec(len(self.directions), len(self.directions), False, (0,))
        if self.method == "molora_topk":
            return LayerSpec(self.num_experts, self.num_experts, False, (), self.num_experts)
        if self.method in ("crosslora", "unilora"):
            n_a = max(self.src_expert.values()) + 1
            n_b = max(self.tgt_expert.values()) + 1
            return LayerSpec(n_a, n_b, self.method == "unilora", (0,))
        if self.method == "mlas":
            specific = self.specific_layers is None or (layer_index is not None and layer_index in self.specific_layers)
            n = 1 + len(self.directions) if specific else 1
            return LayerSpec(n, n, False, (0, 1) if specific else (0,))
        n = len(self._dat_adapters)
        return LayerSpec(n, n, False, (0,))

    def adapter_index(self, key: str | int) -> int:
        """Bank index named by ``key``: an int as is; mlas ``"general"`` or ``"src-tgt"``; dat adapter names or
        ``"src-tgt"``; molora_static ``"src-tgt"``."""
        if isinstance(key, int) and not isinstance(key, bool):
            return key
        if not isinstance(key, str):
            raise ValueError(f"adapter key must be an int or a string, got {key!r}")
        if self.method == "mlas" and key == "general":
            return 0
        if self.method == "dat" and key in self._dat_adapters:
            return self._dat_adapters.index(key)
        parts = _direction_or_none(key)
        if parts is not None:
            if self.method == "dat":
                return self.dat_adapter_index(*parts)
            index = self.direction_index(*parts)
            if index is not None:
                return index + (1 if self.method == "mlas" else 0)
        raise ValueError(f"{self.method} has no adapter named {key!r}")

    # ------------------------------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; ``from_dict(to_dict())`` equals the config."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        data["target_modules"] = (
            self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        )
        if self.directions is not None:
            data["directions"] = [list(pair) for pair in self.directions]
        return asdict_json(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoutedLoRAConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a RoutedLoRAConfig dict is expected, got {type(data).__name__}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RoutedLoRAConfig field(s): {', '.join(unknown)}")
        values = dict(data)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        if values.get("directions") is not None:
            values["directions"] = [tuple(pair) for pair in values["directions"]]
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _direction_or_none(key: object) -> tuple[str, str] | None:
    """``(src, tgt)`` of a ``"src-tgt"`` key, or None when ``key`` is not one."""
    try:
        return parse_direction(key)
    except ValueError:
        return None


def asdict_json(data: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``data`` with tuples turned into lists (JSON round-trips lists, not tuples)."""
    def convert(value):
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {k: convert(v) for k, v in data.items()}
