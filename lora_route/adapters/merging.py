"""Merging adapter updates ΔW = scale · B · A: one direction folded into the base weights
(:func:`merge_direction` / :func:`unmerge_direction`); TIES, DARE and linear merging of several ΔW (as DAT/DATM uses
them), and DATM itself: group-wise merging of a dat model's XX→En adapters (:func:`datm_merge`, :func:`apply_merged`).

Every function takes ``deltas``: a non-empty sequence of same-shape floating tensors (or one stacked tensor whose
first dimension indexes the adapters), and returns one tensor of that shape. The work runs in float32 (float64
inputs stay float64) and the result is cast back to the inputs' dtype.

Choices where the DAT/DATM paper is silent — it only says "we adopt TIES" and that DARE-TIES performed the same:

* **Trim scope.** TIES keeps the top ``density`` fraction of each task vector by magnitude. We trim per tensor (per
  ΔW of one module), as PEFT and mergekit do, so a module is never emptied by a larger neighbour.
  ``k = round(density · numel)`` entries survive (at least one); magnitude ties are broken by position.
* **Default density 0.2**: the TIES paper's default top-k of 20 %.
* **Weights** are non-negative relative importances (default: all equal). The sign is elected on the weighted sum
  ``Σ_t w_t τ̂_t`` ("total", TIES) or on ``Σ_t w_t sign(τ̂_t)`` ("frequency"); the disjoint mean of an entry is
  ``Σ_{t agrees} w_t τ̂_t / Σ_{t agrees} w_t``, which is exactly TIES' disjoint mean for equal weights. A global
  factor ``scale`` (TIES' λ, default 1) multiplies the result. A sum of exactly zero elects ``+``.
* **DARE** drops each entry with probability ``drop_prob`` and rescales survivors by ``1 / (1 - drop_prob)``; the
  default ``drop_prob = 0.8`` keeps as many entries in expectation as TIES at density 0.2. ``combine="ties"``
  (DARE-TIES) then elects signs and takes the disjoint mean without further trimming; ``combine="linear"`` takes the
  weighted sum.
* **Linear** merging is the weighted sum ``Σ_t w_t δ_t`` (default weights ``1/n``: the mean); weights may be negative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.lowrank import low_rank_factors
from lora_route.adapters.patch import (
    apply_routed_lora,
    direction_routes,
    init_from,
    merged_direction,
    patched_config,
    routed_modules,
    set_merged_direction,
)
from lora_route.common.languages import direction_key

MERGE_METHODS = ("ties", "dare", "linear")
SIGN_METHODS = ("total", "frequency")
DARE_COMBINES = ("ties", "linear")
DEFAULT_DENSITY = 0.2
DEFAULT_DROP_PROB = 0.8

__all__ = [
    "merge_direction", "unmerge_direction",
    "MERGE_METHODS", "ties_merge", "dare_merge", "linear_merge", "merge_deltas",
    "trim_to_density", "elect_sign", "disjoint_mean", "dare_drop",
    "MergedAdapters", "datm_groups", "datm_config", "datm_merge", "apply_merged",
]


# --------------------------------------------------------------------------------------------- one direction
def merge_direction(model: nn.Module, src: str, tgt: str) -> nn.Module:
    """Fold direction ``src → tgt`` into the base weights (then the model serves that direction with no adapter
    overhead; route() refuses any other direction until :func:`unmerge_direction`)."""
    patched_config(model)
    if merged_direction(model) is not None:
        raise ValueError(f"{direction_key(*merged_direction(model))} is already merged; unmerge_direction first")
    routes = direction_routes(model, src, tgt)
    for module in routed_modules(model).values():
        module.merge(module.routes_of(routes))
    set_merged_direction(model, (src, tgt))
    return model


def unmerge_direction(model: nn.Module) -> nn.Module:
    """Subtract the merged direction from the base weights again."""
    patched_config(model)
    if merged_direction(model) is None:
        raise ValueError("no direction is merged into this model")
    for module in routed_modules(model).values():
        module.unmerge()
    set_merged_direction(model, None)
    return model


def _stack(deltas: Sequence[Tensor] | Tensor) -> tuple[Tensor, torch.dtype]:
    """(n, ...) working-precision stack of ``deltas`` and their common dtype; validates shapes, dtypes, devices."""
    if isinstance(deltas, Tensor):
        if deltas.dim() < 1 or deltas.shape[0] == 0:
            raise ValueError(f"a stacked deltas tensor needs a non-empty first dimension, got shape {tuple(deltas.shape)}")
        items = list(deltas.unbind(0))
    else:
        items = list(deltas)
        if not items:
            raise ValueError("deltas is empty; pass at least one ΔW tensor")
    for i, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise TypeError(f"deltas[{i}] must be a torch.Tensor, got {type(item).__name__}")
        if not item.is_floating_point():
            raise ValueError(f"deltas[{i}] has dtype {item.dtype}; ΔW tensors must be floating point")
        if item.shape != items[0].shape:
            raise ValueError(f"deltas[{i}] has shape {tuple(item.shape)} but deltas[0] has {tuple(items[0].shape)}")
        if item.device != items[0].device:
            raise ValueError(f"deltas[{i}] is on {item.device} but deltas[0] is on {items[0].device}")
        if item.dtype != items[0].dtype:
            raise ValueError(f"deltas[{i}] has dtype {item.dtype} but deltas[0] has {items[0].dtype}")
    dtype = items[0].dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.stack([item.to(work) for item in items]), dtype


def _weights(weights, n: int, like: Tensor, *, default: float, non_negative: bool) -> Tensor:
    """(n, 1, ..., 1) weight tensor broadcastable against a (n, ...) stack."""
    if weights is None:
        w = torch.full((n,), default, dtype=like.dtype, device=like.device)
    else:
        w = torch.as_tensor(weights, dtype=like.dtype).to(like.device).reshape(-1)
        if w.shape[0] != n:
            raise ValueError(f"got {w.shape[0]} weights for {n} deltas")
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"weights must be finite, got {w.tolist()}")
        if non_negative and bool((w < 0).any()):
            raise ValueError(f"weights must be >= 0 for this merge (relative importances), got {w.tolist()}")
        if non_negative and not bool((w > 0).any()):
            raise ValueError("at least one weight must be > 0")
    return w.reshape((n,) + (1,) * (like.dim() - 1))


def _check_fraction(name: str, value: float, *, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        bounds = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {bounds}, got {value}")
    return value


def trim_to_density(delta: Tensor, density: float) -> Tensor:
    """TIES step 1: keep the ``round(density · numel)`` largest-magnitude entries of ``delta`` (at least one), zero
    the rest. ``delta``: any shape; same shape out."""
    density = _check_fraction("density", density, low_open=True, high_open=False)
    flat = delta.reshape(-1)
    k = max(1, int(round(density * flat.numel())))
    if k >= flat.numel():
        return delta.clone()
    keep = torch.topk(flat.abs(), k, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[keep] = True
    return torch.where(mask, flat, torch.zeros_like(flat)).reshape(delta.shape)


def elect_sign(stack: Tensor, weights: Tensor, method: str = "total") -> Tensor:
    """TIES step 2: the elected sign (+1 / -1 per entry) of a (n, ...) stack with (n, 1, ...) weights.

    ``"total"``: sign of ``Σ_t w_t τ_t`` (the sign carrying more weighted magnitude); ``"frequency"``: sign of
    ``Σ_t w_t sign(τ_t)``. Zero elects +1.
    """
    if method not in SIGN_METHODS:
        raise ValueError(f"unknown sign election {method!r}; choose one of {SIGN_METHODS}")
    votes = stack if method == "total" else stack.sign()
    total = (weights * votes).sum(0)
    return torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))


def disjoint_mean(stack: Tensor, weights: Tensor, sign: Tensor) -> Tensor:
    """TIES step 3: per entry, the weighted mean over the adapters whose (non-zero) value has the elected ``sign``;
    entries no adapter agrees with are 0. ``stack`` (n, ...), ``weights`` (n, 1, ...), ``sign`` (...)."""
    agree = (stack.sign() == sign.unsqueeze(0)).to(stack.dtype)
    numerator = (weights * agree * stack).sum(0)
    denominator = (weights * agree).sum(0)
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))


def ties_merge(
    deltas: Sequence[Tensor] | Tensor,
    weights: Sequence[float] | Tensor | None = None,
    density: float = DEFAULT_DENSITY,
    *,
    majority_sign: str = "total",
    scale: float = 1.0,
) -> Tensor:
    """TIES merge (trim → elect sign → disjoint mean) of same-shape ΔW tensors; see the module docstring."""
    stack, dtype = _stack(deltas)
    w = _weights(weights, stack.shape[0], stack, default=1.0, non_negative=True)
    trimmed = torch.stack([trim_to_density(d, density) for d in stack.unbind(0)])
    merged = disjoint_mean(trimmed, w, elect_sign(trimmed, w, majority_sign))
    return (merged * float(scale)).to(dtype)


def dare_drop(delta: Tensor, drop_prob: float, generator: torch.Generator) -> Tensor:
    """DARE: zero each entry with probability ``drop_prob``, rescale survivors by ``1 / (1 - drop_prob)``."""
    drop_prob = _check_fraction("drop_prob", drop_prob, low_open=False, high_open=True)
    keep = torch.rand(delta.shape, generator=generator, device=generator.device, dtype=torch.float64) >= drop_prob
    return torch.where(keep.to(delta.device), delta / (1.0 - drop_prob), torch.zeros_like(delta))


def dare_merge(
    deltas: Sequence[Tensor] | Tensor,
    weights: Sequence[float] | Tensor | None = None,
    drop_prob: float = DEFAULT_DROP_PROB,
    *,
    seed: int = 0,
    combine: str = "ties",
    majority_sign: str = "total",
    scale: float = 1.0,
) -> Tensor:
    """DARE merge: random drop + rescale of every ΔW (seeded, reproducible on CPU), then DARE-TIES
    (``combine="ties"``: sign election + disjoint mean) or DARE-linear (``combine="linear"``: weighted sum)."""
    if combine not in DARE_COMBINES:
        raise ValueError(f"unknown DARE combine {combine!r}; choose one of {DARE_COMBINES}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    stack, dtype = _stack(deltas)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dropped = torch.stack([dare_drop(d, drop_prob, generator) for d in stack.unbind(0)])
    if combine == "linear":
        w = _weights(weights, stack.shape[0], stack, default=1.0 / stack.shape[0], non_negative=False)
        merged = (w * dropped).sum(0)
    else:
        w = _weights(weights, stack.shape[0], stack, default=1.0, non_negative=True)
        merged = disjoint_mean(dropped, w, elect_sign(dropped, w, majority_sign))
    return (merged * float(scale)).to(dtype)


def linear_merge(deltas: Sequence[Tensor] | Tensor, weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """Weighted sum ``Σ_t w_t δ_t`` (default ``w_t = 1/n``, the mean)."""
    stack, dtype = _stack(deltas)
    w = _weights(weights, stack.shape[0], stack, default=1.0 / stack.shape[0], non_negative=False)
    return (w * stack).sum(0).to(dtype)


def merge_deltas(
    method: str,
    deltas: Sequence[Tensor] | Tensor,
    weights: Sequence[float] | Tensor | None = None,
    *,
    density: float = DEFAULT_DENSITY,
    drop_prob: float = DEFAULT_DROP_PROB,
    seed: int = 0,
    combine: str = "ties",
    majority_sign: str = "total",
    scale: float = 1.0,
) -> Tensor:
    """Dispatch to :func:`ties_merge`, :func:`dare_merge` or :func:`linear_merge` by ``method`` name."""
    if method == "ties":
        return ties_merge(deltas, weights, density, majority_sign=majority_sign, scale=scale)
    if method == "dare":
        return dare_merge(deltas, weights, drop_prob, seed=seed, combine=combine, majority_sign=majority_sign,
                          scale=scale)
    if method == "linear":
        merged = linear_merge(deltas, weights)
        return merged if scale == 1.0 else (merged * float(scale)).to(merged.dtype)
    raise ValueError(f"unknown merge method {method!r}; choose one of {MERGE_METHODS}")


# --------------------------------------------------------------------------------------------- DATM (DAT paper §4.3)
@dataclass
class MergedAdapters:
    """A merged DAT adapter set: the new ``config`` (method dat, fewer adapters), per routed module the factors
    ``{adapter name: (A (r, d_in), B (d_out, r))}`` to load with :func:`lora_route.adapters.patch.init_from`, and a
    JSON-safe ``report`` (groups, members, mean relative SVD truncation error per merged adapter)."""

    config: RoutedLoRAConfig
    factors: dict[str, dict[str, tuple[Tensor, Tensor]]]
    report: dict[str, Any]


def datm_groups(config: RoutedLoRAConfig) -> dict[str, list[str]]:
    """Merged adapter name ``"xx_en.<group>"`` → the XX→pivot adapter names of that group's source languages (in
    language order), from a dat config's ``language_groups`` and routing table."""
    if getattr(config, "method", None) != "dat":
        raise ValueError(f"DATM merges the XX→{getattr(config, 'pivot', 'En')} adapters of a method='dat' model, "
                         f"got method {getattr(config, 'method', None)!r}")
    groups: dict[str, list[str]] = {}
    for lang in config.languages:
        key = direction_key(lang, config.pivot)
        if lang == config.pivot or key not in config.routing_table:
            continue
        members = groups.setdefault(f"xx_en.{config.language_groups[lang]}", [])
        if config.routing_table[key] not in members:
            members.append(config.routing_table[key])
    if not groups:
        raise ValueError("the dat config routes no XX→pivot direction; nothing to merge")
    return groups


def datm_config(config: RoutedLoRAConfig) -> RoutedLoRAConfig:
    """The dat config after group-wise merging: every ``src-pivot`` direction routed to ``"xx_en.<group>"``."""
    datm_groups(config)
    table = dict(config.routing_table)
    for lang in config.languages:
        key = direction_key(lang, config.pivot)
        if lang != config.pivot and key in table:
            table[key] = f"xx_en.{config.language_groups[lang]}"
    return RoutedLoRAConfig.from_dict({**config.to_dict(), "routing_table": table})


def datm_merge(
    model: torch.nn.Module,
    *,
    method: str = "ties",
    weights: Mapping[str, float] | None = None,
    density: float = DEFAULT_DENSITY,
    drop_prob: float = DEFAULT_DROP_PROB,
    seed: int = 0,
    combine: str = "ties",
    majority_sign: str = "total",
    scale: float = 1.0,
) -> MergedAdapters:
    """DATM: merge a dat model's XX→En adapters group by group (TIES by default, as the DAT paper) on ΔW.

    ``weights``: source language → relative weight (default equal). Per routed module and group, the members'
    ``ΔW = scaling · B · A`` are merged with :func:`merge_deltas` and factored back to the layer's rank r by SVD
    (``scaling · B' · A'`` = rank-r truncation; the report gives the truncation error). A group with one member keeps
    its adapter unchanged; En→XX adapters are copied unchanged. The result is served by the same kernels after
    :func:`apply_merged` on a fresh base model.
    """
    config = getattr(model, "routed_lora_config", None)
    if config is None:
        raise ValueError("the model has no routed LoRA adapters (apply_routed_lora / load a dat checkpoint first)")
    groups = datm_groups(config)
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose one of {MERGE_METHODS}")
    merged_config = datm_config(config)
    source_of = {config.routing_table[direction_key(lang, config.pivot)]: lang for lang in config.languages
                 if lang != config.pivot and direction_key(lang, config.pivot) in config.routing_table}
    if weights is not None:
        unknown = sorted(set(weights) - set(source_of.values()))
        if unknown:
            raise ValueError(f"weights name language(s) {', '.join(unknown)} that have no XX→{config.pivot} adapter")
    factors: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
    errors: dict[str, list[float]] = {name: [] for name in groups}
    for module_index, (module_name, module) in enumerate(routed_modules(model).items()):
        per_adapter: dict[str, tuple[Tensor, Tensor]] = {}
        for adapter in merged_config.dat_adapters:
            if adapter in groups:
                continue
            index = config.adapter_index(adapter)
            per_adapter[adapter] = (module.lora_A[index].detach().clone(), module.lora_B[index].detach().clone())
        for group_index, (name, members) in enumerate(groups.items()):
            indices = [config.adapter_index(member) for member in members]
            if len(indices) == 1:
                per_adapter[name] = (module.lora_A[indices[0]].detach().clone(),
                                     module.lora_B[indices[0]].detach().clone())
                continue
            with torch.no_grad():
                deltas = [module.delta_weight([(i, -1, i)]).detach() for i in indices]
            member_weights = None if weights is None else [float(weights.get(source_of[m], 1.0)) for m in members]
            merged = merge_deltas(method, deltas, member_weights, density=density, drop_prob=drop_prob,
                                  seed=seed + 7919 * module_index + group_index, combine=combine,
                                  majority_sign=majority_sign, scale=scale)
            b, a = low_rank_factors(merged, module.r, module.scaling)
            per_adapter[name] = (a, b)
            norm = float(merged.norm())
            residual = float((merged - module.scaling * b @ a).norm())
            errors[name].append(residual / norm if norm > 0 else 0.0)
        factors[module_name] = per_adapter
    report = {
        "method": method,
        "density": density if method == "ties" else None,
        "drop_prob": drop_prob if method == "dare" else None,
        "groups": groups,
        "adapters_before": len(config.dat_adapters),
        "adapters_after": len(merged_config.dat_adapters),
        "svd_relative_error": {name: (sum(v) / len(v) if v else 0.0) for name, v in errors.items()},
    }
    return MergedAdapters(merged_config, factors, report)


def apply_merged(base_model: torch.nn.Module, merged: MergedAdapters) -> torch.nn.Module:
    """Patch an unpatched base model with the merged config and load the merged factors; returns the model."""
    if not isinstance(merged, MergedAdapters):
        raise TypeError(f"merged must be a MergedAdapters, got {type(merged).__name__}")
    model = apply_routed_lora(base_model, merged.config)
    init_from(model, merged.factors)
    return model
