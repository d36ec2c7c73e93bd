"""The interface every backend of the routed op implements, and the per-call row routes it receives.

A backend computes one routed layer, ``out = x·W0ᵀ (+ bias) + s_t · B[b_t]·U[u_t]·A[a_t]·x_t`` per row (``weight``
None: the delta alone), and its gradients:

``forward(x, weight, bias, A, B, U, row_scale, scale, routes) -> (out, z)``
    x: (T, d_in) contiguous; weight: (d_out, d_in) or None; bias: (d_out,) or None; A: (n_a, r, d_in);
    B: (n_b, d_out, r); U: (n_u, r, r) or None; row_scale: (T,) in x's dtype or None; scale: float (``s_t`` is
    ``scale · row_scale_t``); routes: :class:`RowRoutes`. out: (T, d_out); z = A[a]·x: (T, r) in x's dtype, zero
    on rows without adapter (saved for backward).
``backward(grad_out, x, z, weight, A, B, U, row_scale, scale, routes, needs) -> (dx, dA, dB, dU, d_row_scale)``
    needs: five booleans in that order; an entry not asked for is None. dx is the full input gradient of the call:
    with a weight it includes ``grad_out · W0``. The weight and bias gradients are not the backend's (the op
    computes them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, NamedTuple

import torch
from torch import Tensor

from lora_route.kernels.plan import RoutePlan, build_plan_tensors

# Entries a plan keeps in ``derived``; more kinds of call than this on one plan (keys that never repeat, such as a NaN
# scale) start it afresh rather than grow it without bound.
DERIVED_MAX_ENTRIES = 64


@dataclass
class RowRoutes:
    """The per-row bank indices of one call ((T,) int, -1 = no adapter) and their segment plan: the caller's
    ``shared_plan`` when it passed a :func:`~lora_route.kernels.plan.plan_routes` plan built from these very indices,
    else one built from ``plan_tensors`` or from the indices on first use (backends that need no plan never build
    one)."""

    a_idx: Tensor
    u_idx: Tensor | None
    b_idx: Tensor
    plan_tensors: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    shared_plan: RoutePlan | None = None
    _plan: RoutePlan | None = field(default=None, init=False, repr=False)

    def plan(self) -> RoutePlan:
        if self._plan is None:
            if self.shared_plan is not None:
                self._plan = self.shared_plan
            else:
                self._plan = RoutePlan(*(self.plan_tensors or build_plan_tensors(self.a_idx, self.b_idx, self.u_idx)))
        return self._plan

    def derived(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()``, a value derived from these routes alone; kept in the shared plan under ``key`` (which must name
        everything else the value depends on), so that every call passing that plan builds it once. Built afresh
        while a CUDA graph is being captured, so that the graph computes it at every replay instead of keeping memory
        of the graph's pool."""
        if self.shared_plan is None or (self.a_idx.is_cuda and torch.cuda.is_current_stream_capturing()):
            return build()
        derived = self.shared_plan.derived
        value = derived.get(key)
        if value is None:
            if len(derived) >= DERIVED_MAX_ENTRIES:
                derived.clear()
            value = derived[key] = build()
        return value


class Backend(NamedTuple):
    """One backend: whether this install can run it, why it cannot serve a call (``(x, weight, rank)`` → a one-line
    reason or None), and its ``forward`` / ``backward`` (see the module docstring)."""

    name: str
    available: Callable[[], bool]
    unsupported_reason: Callable[[Tensor, Tensor | None, int | None], str | None]
    forward: Callable[..., tuple[Tensor, Tensor]]
    backward: Callable[..., tuple]
