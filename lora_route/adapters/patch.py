"""Patch a model in place with routed LoRA layers and route its sequences by language.

``apply_routed_lora(model, config)`` wraps every targeted ``nn.Linear`` (default ``gate_proj``, ``up_proj``,
``down_proj``; any name list or regex) in a :class:`~lora_route.adapters.layer.RoutedLoRALinear`, freezes every other
parameter and attaches one :class:`RoutingState` shared by all of them. ``with route(model, src, tgt):`` sets the
(src, tgt) pair of every sequence for the forwards / ``generate`` calls inside it.

Per-row indices and their segment plan are built once per (input shape, device) by the first routed layer that
sees that shape, and reused by every other layer — and by later forwards with the same shape inside the same
``route`` block (each decoding step of ``generate``). Rows are ``batch × seq_len`` in row-major order; when a layer
sees k× more sequences than pairs (beam search, ``num_return_sequences``), each pair is repeated k times, as
transformers repeats each input sequence. **Padding rows keep their sequence's adapter**: their outputs are masked
by attention and by the loss anyway, and routing them like their neighbours keeps one segment per sequence and
static shapes (no mask-dependent index tensors).
"""
from __future__ import annotations

import contextvars
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_route.adapters.config import LANGUAGE_FREE_METHODS, RoutedLoRAConfig
from lora_route.adapters.layer import RoutedLoRALinear
from lora_route.adapters.routing import LanguageRouter, RouteIndices, expand_to_rows
from lora_route.common.languages import direction_key
from lora_route.kernels.plan import RoutePlan, plan_routes

_STATE_ATTR = "_lora_route_state"
_CONFIG_ATTR = "routed_lora_config"
_MAX_CACHED_SHAPES = 16


@dataclass
class _Routing:
    """The routing of one ``route`` block (or of code outside any block) in one context: the (src, tgt) pairs, the
    shape of the model's input, and the per-row indices + plans built from them, per input shape."""

    src: list[str] | str | None = None
    tgt: list[str] | str | None = None
    input_shape: tuple[int, int] | None = None
    built: dict[tuple, list[tuple[Tensor, Tensor | None, Tensor, float, RoutePlan]]] = field(default_factory=dict)


class RoutingState:
    """Per-model routing: which direction is merged into the weights (model-wide) and, per context, the current
    (src, tgt) pairs with the indices + plans built from them.

    The pairs live in a :class:`contextvars.ContextVar`, so ``route`` blocks in different threads (or asyncio tasks)
    on one model are isolated: each sees its own pairs. A thread does not inherit the blocks of the thread that
    started it.
    """

    def __init__(self, config: RoutedLoRAConfig):
        self.config = config
        self.router = LanguageRouter(config)
        self.merged_direction: tuple[str, str] | None = None
        self._current: contextvars.ContextVar[_Routing] = contextvars.ContextVar(f"lora_route_routing_{id(self):x}")

    def __deepcopy__(self, memo: dict) -> RoutingState:
        """A copied model gets its own routing state (the same config and merged direction, no open blocks)."""
        copy = RoutingState(self.config)
        copy.merged_direction = self.merged_direction
        return copy

    def __getstate__(self) -> dict:
        return {"config": self.config, "merged_direction": self.merged_direction}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])
        self.merged_direction = state["merged_direction"]

    def current(self) -> _Routing:
        """The routing of the calling context (an empty one outside any ``route`` block)."""
        routing = self._current.get(None)
        if routing is None:
            routing = _Routing()
            self._current.set(routing)
        return routing

    def enter(self, src, tgt) -> contextvars.Token:
        """Validate the pairs (lists of one code per sequence, or one code each for every sequence) and make them the
        calling context's routing; returns the token that :meth:`leave` restores the previous routing with."""
        if isinstance(src, str) != isinstance(tgt, str):
            raise ValueError("give src and tgt both as single language codes or both as lists")
        probe_src, probe_tgt = ([src], [tgt]) if isinstance(src, str) else (src, tgt)
        self.router.check_pairs(probe_src, probe_tgt)
        self.router.indices(probe_src, probe_tgt)  # directions the method does not define raise here
        if self.merged_direction is not None:
            other = {(s, t) for s, t in zip(probe_src, probe_tgt)} - {self.merged_direction}
            if other:
                raise ValueError(
                    f"the model has {direction_key(*self.merged_direction)} merged into its weights; it cannot "
                    f"serve {', '.join(direction_key(*pair) for pair in sorted(other))} (unmerge first)")
        pairs = (list(src), list(tgt)) if isinstance(src, (list, tuple)) else (src, tgt)
        return self._current.set(_Routing(*pairs))

    def leave(self, token: contextvars.Token) -> None:
        self._current.reset(token)

    def _shape_of(self, x: Tensor) -> tuple[int, int]:
        """(sequences, tokens per sequence) of a layer input (batch, seq, d) or flattened (batch·seq, d)."""
        if x.dim() >= 3:
            return x.shape[0], math.prod(x.shape[1:-1])
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        input_shape = self.current().input_shape
        if input_shape is not None and math.prod(input_shape) == rows:
            return input_shape
        if x.dim() == 2:
            return rows, 1
        raise ValueError(f"cannot tell sequences from a {x.dim()}-D input of shape {tuple(x.shape)}")

    def rows(self, x: Tensor, route_ids: Sequence[int]):
        """``(a_idx, u_idx, b_idx, scale, plan)`` per requested route for the rows of ``x``."""
        num_sequences, seq_len = self._shape_of(x)
        routing = self.current()
        key = (num_sequences, seq_len, x.device)
        routes = routing.built.get(key)
        if routes is None:
            routes = self._build(routing, num_sequences, seq_len, x.device)
            if len(routing.built) >= _MAX_CACHED_SHAPES:
                routing.built.clear()
            routing.built[key] = routes
        return [routes[i] for i in route_ids]

    def _build(self, routing: _Routing, num_sequences: int, seq_len: int, device: torch.device):
        if routing.src is None:
            if self.config.method not in LANGUAGE_FREE_METHODS:
                raise ValueError(
                    f"no languages set for this {self.config.method} adapter: run the model inside "
                    "`with lora_route.route(model, src=[...], tgt=[...]):` (one pair per sequence)")
            zeros = torch.zeros(num_sequences, dtype=torch.int64, device=device)
            per_sequence = (RouteIndices(zeros, None, zeros),)
        elif isinstance(routing.src, str):
            per_sequence = self.router.indices([routing.src] * num_sequences, [routing.tgt] * num_sequences, device)
        else:
            per_sequence = self.router.indices(routing.src, routing.tgt, device)
        built = []
        for indices in per_sequence:
            rows = expand_to_rows(indices, num_sequences, seq_len)
            plan = plan_routes(rows.a_idx, rows.b_idx, rows.u_idx)
            built.append((rows.a_idx, rows.u_idx, rows.b_idx, rows.scale, plan))
        return built

    def record_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the patched model: remember (batch, seq_len) of ``input_ids`` / ``inputs_embeds``."""
        tensor = kwargs.get("input_ids")
        if tensor is None:
            tensor = kwargs.get("inputs_embeds")
        if tensor is None and args and isinstance(args[0], Tensor):
            tensor = args[0]
        shape = (tensor.shape[0], tensor.shape[1]) if tensor is not None and tensor.dim() >= 2 else None
        self.current().input_shape = shape


def patched_config(model: nn.Module) -> RoutedLoRAConfig:
    """The :class:`RoutedLoRAConfig` a model (or its DDP / compile wrapper) was patched with; ValueError if none."""
    config = getattr(unwrap(model), _CONFIG_ATTR, None)
    if config is None:
        raise ValueError("the model has no routed LoRA adapters (call apply_routed_lora first)")
    return config


def unwrap(model: nn.Module) -> nn.Module:
    """The patched model inside wrappers (DDP / FSDP ``.module``, ``torch.compile``'s ``._orig_mod``)."""
    while getattr(model, _STATE_ATTR, None) is None:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def _state(model: nn.Module) -> RoutingState:
    state = getattr(unwrap(model), _STATE_ATTR, None)
    if state is None:
        raise ValueError("this model has no routed LoRA adapters: call lora_route.apply_routed_lora(model, config) first")
    return state


def _layer_index(name: str) -> int | None:
    """Index of the decoder layer holding module ``name``: its first purely numeric path component."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def _matches(name: str, target_modules: tuple[str, ...] | str) -> bool:
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


def find_targets(model: nn.Module, config: RoutedLoRAConfig) -> list[tuple[str, int | None]]:
    """``(module name, decoder-layer index)`` of every linear layer ``config`` patches in ``model`` (raises like
    :func:`apply_routed_lora` when nothing matches, a match is not an ``nn.Linear`` or a listed layer is missing)."""
    targets, seen_layers = [], set()
    for name, module in model.named_modules():
        if not name or not _matches(name, config.target_modules):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"target module {name} is a {type(module).__name__}; only nn.Linear layers can be routed")
        index = _layer_index(name)
        seen_layers.add(index)
        if config.layers is None or index in config.layers:
            targets.append((name, index))
    if not targets:
        raise ValueError(f"no nn.Linear module of the model matches target_modules={config.target_modules!r}"
                         + (f" in layers {config.layers}" if config.layers is not None else ""))
    for name, layer_list in (("layers", config.layers), ("specific_layers", config.specific_layers)):
        missing = sorted(set(layer_list or ()) - seen_layers)
        if missing:
            raise ValueError(f"config.{name} names layer(s) {missing} but the target modules exist only in layers "
                             f"{sorted(i for i in seen_layers if i is not None)}")
    return targets


def apply_routed_lora(model: nn.Module, config: RoutedLoRAConfig) -> nn.Module:
    """Wrap the targeted linear layers of ``model`` in place, freeze everything else, return ``model``.

    The config is stored as ``model.routed_lora_config``. Raises ValueError when no module matches, a matched
    module is not an ``nn.Linear``, ``config.layers`` names a layer the model lacks, or the model is already patched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, RoutedLoRAConfig):
        raise TypeError(f"config must be a RoutedLoRAConfig, got {type(config).__name__}")
    if getattr(model, _STATE_ATTR, None) is not None:
        raise ValueError("model is already patched with routed LoRA adapters")
    targets = find_targets(model, config)
    for param in model.parameters():
        param.requires_grad_(False)
    state = RoutingState(config)
    for name, index in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        layer = RoutedLoRALinear(base, config, index).train(base.training)
        layer.route_source = state
        setattr(parent, child, layer)
    setattr(model, _CONFIG_ATTR, config)
    setattr(model, _STATE_ATTR, state)
    model.register_forward_pre_hook(state.record_input, with_kwargs=True)
    return model


def routed_modules(model: nn.Module) -> dict[str, RoutedLoRALinear]:
    """Module name (in the unwrapped model, see :func:`unwrap`) → RoutedLoRALinear, in model order."""
    return {name: module for name, module in unwrap(model).named_modules() if isinstance(module, RoutedLoRALinear)}


@contextmanager
def route(model: nn.Module, src: Sequence[str] | str, tgt: Sequence[str] | str) -> Iterator[nn.Module]:
    """Route the next forwards / ``generate`` calls: sequence i translates ``src[i] → tgt[i]``.

    ``src`` and ``tgt`` are lists with one code per input sequence (or one code each, applied to every sequence).
    Unknown languages, directions the method does not define and unequal lengths raise ValueError on entry; an
    input whose number of sequences is not a multiple of the pairs raises on the forward. Blocks nest, and blocks in
    different threads on one model are independent of each other.
    """
    state = _state(model)
    token = state.enter(src, tgt)
    try:
        yield model
    finally:
        state.leave(token)


def direction_routes(model: nn.Module, src: str, tgt: str) -> tuple[tuple[int, int, int], ...]:
    """``(a, u, b)`` bank indices of each route that ``src → tgt`` takes (u = -1 without core)."""
    state = _state(model)
    routes = state.router.indices([src], [tgt])
    if not routes:
        raise ValueError(f"{state.config.method} routes each token through a learned router, not by direction")
    return tuple((int(r.a_idx[0]), int(r.u_idx[0]) if r.u_idx is not None else -1, int(r.b_idx[0])) for r in routes)


def set_merged_direction(model: nn.Module, direction: tuple[str, str] | None) -> None:
    """Record which direction is folded into the base weights (None after unmerging); route() checks against it."""
    _state(model).merged_direction = direction


def merged_direction(model: nn.Module) -> tuple[str, str] | None:
    return _state(model).merged_direction


def load_balancing_loss(model: nn.Module) -> Tensor:
    """Mean of the molora_topk layers' load-balancing losses from the last forward (Switch-style:
    ``E · Σ_i f_i · P_i`` with f_i the share of top-k slots given to expert i, P_i its mean router probability)."""
    losses = [m.load_balancing_loss for m in routed_modules(model).values() if m.router is not None]
    if not losses:
        raise ValueError("the model has no learned router (load balancing applies to method='molora_topk')")
    if any(loss is None for loss in losses):
        raise ValueError("no forward has run yet: the load-balancing loss is computed during the forward")
    return torch.stack(losses).mean()


def init_from(model: nn.Module, matrices: Mapping[str, Mapping[int | str, tuple[Tensor, Tensor]]]) -> None:
    """Initialise adapters from given factors: module name → {adapter key → (A (r, d_in), B (d_out, r))}
    (see :meth:`RoutedLoRALinear.init_from`)."""
    modules = routed_modules(model)
    unknown = [name for name in matrices if name not in modules]
    if unknown:
        raise ValueError(f"no routed module named {', '.join(unknown)}; routed modules: {', '.join(modules)}")
    for name, per_adapter in matrices.items():
        modules[name].init_from(per_adapter)
