"""The ``torch`` backend: the routed op in plain PyTorch, on any device.

Two formulations of the same sums, chosen per call by the banks' size:

* **dense** (few or small banks): every row's rank-space values are computed against all banks at once and the
  unused blocks masked — one GEMM against the concatenated A bank, a gather of each row's block, a product with a
  per-row weight that is the row's scale in its B bank's block and zero in the others (a (T, n_b·r) one-hot
  layout; the gather index and the weights are built once per shared plan, i.e. once per step, not per layer) and
  one GEMM against B laid out as (n_b·r, d_out), accumulated into the base output. No host synchronisation, no loop
  over segments, so a decode step costs a few small launches whatever the batch mixes; the price is n_a (resp. n_b)
  times the rank-space work of one adapter, so it is used while that stays under :data:`DENSE_MAX_SHARE` of the
  base GEMM's work (``n_a·r ≤ share·d_out`` and ``n_b·r ≤ share·d_in``). The backward is the same one-hot algebra:
  deterministic, no atomics.
* **segments** (many banks): one pair of GEMMs per segment of the row plan
  (:func:`lora_route.kernels.reference.segment_forward`), with a host synchronisation to read the segments.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from lora_route.kernels import reference
from lora_route.kernels.backend import Backend, RowRoutes

# Largest share of the base GEMM's multiply-adds the dense formulation may add (one bank costs r/d of it).
DENSE_MAX_SHARE = 0.5
FORMULATIONS = ("dense", "segments")


def uses_dense(A: Tensor, B: Tensor) -> bool:
    """Whether calls with banks A (n_a, r, d_in), B (n_b, d_out, r) take the dense formulation."""
    n_a, rank, d_in = A.shape
    n_b, d_out, _ = B.shape
    return n_a * rank <= DENSE_MAX_SHARE * d_out and n_b * rank <= DENSE_MAX_SHARE * d_in


@contextmanager
def forced_formulation(name: str) -> Iterator[None]:
    """Inside the block every call of this backend takes formulation ``name`` (one of :data:`FORMULATIONS`), whatever
    the banks' size (benchmarks and tests measure each on the same banks). Not thread-safe."""
    global DENSE_MAX_SHARE
    if name not in FORMULATIONS:
        raise ValueError(f"unknown formulation {name!r}; choose one of {', '.join(map(repr, FORMULATIONS))}")
    previous = DENSE_MAX_SHARE
    DENSE_MAX_SHARE = float("inf") if name == "dense" else 0.0
    try:
        yield
    finally:
        DENSE_MAX_SHARE = previous


def _select(values: Tensor, index: Tensor, rank: int) -> Tensor:
    """(T, r) from (T, n·r): the block of bank ``index[t]`` per row (index -1 reads bank 0; callers mask)."""
    blocks = values.view(values.shape[0], -1, rank)
    return blocks.gather(1, index.clamp(min=0).view(-1, 1, 1).expand(-1, 1, rank)).squeeze(1)


def _spread(values: Tensor, index: Tensor, banks: int) -> Tensor:
    """(T, banks·r): row t holds ``values[t]`` in the block of bank ``index[t]`` and zeros elsewhere (index -1 writes
    bank 0; callers pass zero values for such rows)."""
    rank = values.shape[1]
    spread = values.new_zeros(values.shape[0], banks, rank)
    spread.scatter_(1, index.clamp(min=0).view(-1, 1, 1).expand(-1, 1, rank), values.unsqueeze(1))
    return spread.view(values.shape[0], banks * rank)


def _apply_core(U: Tensor | None, u_idx: Tensor | None, z: Tensor, transpose: bool = False) -> Tensor:
    """``U[u_t]·z_t`` per row (``U[u_t]ᵀ·z_t`` with ``transpose``); z itself without core."""
    if U is None:
        return z
    if U.shape[0] == 1:
        return z @ (U[0] if transpose else U[0].t())
    cores = U[u_idx.clamp(min=0)]
    return torch.bmm(cores.transpose(1, 2) if transpose else cores, z.unsqueeze(2)).squeeze(2)


def _row_scales(row_scale: Tensor | None, scale: float, active: Tensor, dtype: torch.dtype) -> Tensor:
    """(T, 1): ``scale · row_scale_t`` on active rows, 0 on rows without adapter (which zeroes their terms)."""
    if row_scale is None:
        return (active.to(dtype) * scale).unsqueeze(1)
    return torch.where(active, row_scale * scale, 0).unsqueeze(1)


# B laid out as (n_b·r, d_out) for the expand GEMM (and the cpu backend's expand), kept per bank tensor while it is
# unchanged and no graph is recorded (decoding calls the same layer with the same banks at every step). Bypassed while
# a CUDA graph is being captured, so that the graph derives the layout from B at every replay instead of reading a copy
# that a later update of B leaves stale.
_EXPAND_LAYOUTS: dict[int, tuple[weakref.ref, tuple[int, int], Tensor]] = {}


def expand_layout(B: Tensor) -> Tensor:
    """B (n_b, d_out, r) as a contiguous (n_b·r, d_out), block ``b`` holding ``B[b]ᵀ``."""
    if torch.is_grad_enabled() or B.is_inference() or (B.is_cuda and torch.cuda.is_current_stream_capturing()):
        return B.transpose(1, 2).contiguous().view(B.shape[0] * B.shape[2], B.shape[1])
    key = (B._version, B.data_ptr())
    cached = _EXPAND_LAYOUTS.get(id(B))
    if cached is None or cached[0]() is not B or cached[1] != key:
        if cached is None or cached[0]() is not B:
            weakref.finalize(B, _EXPAND_LAYOUTS.pop, id(B), None)
        layout = B.transpose(1, 2).contiguous().view(B.shape[0] * B.shape[2], B.shape[1])
        cached = _EXPAND_LAYOUTS[id(B)] = (weakref.ref(B), key, layout)
    return cached[2]


def _dense_selectors(routes: RowRoutes, rank: int, banks_b: int, row_scale: Tensor | None, scale: float,
                     dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(a_block (T, 1, r) int64, b_weights (T, n_b, 1), active (T, 1) bool)``: the index of each row's A bank for
    a gather from its (n_a, r) rank-space values (bank 0 for rows without adapter), the row's scale in its B bank's
    entry and zero in the others (all zero for rows without adapter), and which rows have an adapter. Without a
    per-row scale they depend on the routes alone and are built once per shared plan."""

    def build() -> tuple[Tensor, Tensor, Tensor]:
        active = routes.a_idx >= 0
        a_block = routes.a_idx.clamp(min=0).view(-1, 1, 1).expand(-1, 1, rank)
        banks = torch.arange(banks_b, device=routes.b_idx.device)
        b_weights = (routes.b_idx.view(-1, 1) == banks).to(dtype) * _row_scales(row_scale, scale, active, dtype)
        return a_block, b_weights.unsqueeze(2), active.unsqueeze(1)

    if row_scale is not None:
        return build()
    return routes.derived(("dense_selectors", rank, banks_b, scale, dtype), build)


def dense_shrink(x: Tensor, A: Tensor, U: Tensor | None, row_scale: Tensor | None, scale: float, routes: RowRoutes,
                 banks_b: int) -> tuple[Tensor, Tensor]:
    """``(spread (T, n_b·r), z (T, r))``: each row's scaled ``U[u]·A[a]·x`` in the block of its B bank (zero for rows
    without adapter, which get a zero scale), and ``z = A[a]·x`` (zero on rows without adapter)."""
    n_a, rank, d_in = A.shape
    num_rows = x.shape[0]
    a_block, b_weights, active = _dense_selectors(routes, rank, banks_b, row_scale, scale, x.dtype)
    z = (x @ A.reshape(n_a * rank, d_in).t()).view(num_rows, n_a, rank).gather(1, a_block).squeeze(1)
    spread = _apply_core(U, routes.u_idx, z).unsqueeze(1) * b_weights
    return spread.view(num_rows, banks_b * rank), torch.where(active, z, 0)


def dense_delta(x: Tensor, A: Tensor, B: Tensor, U: Tensor | None, row_scale: Tensor | None, scale: float,
                routes: RowRoutes) -> tuple[Tensor, Tensor]:
    """``(delta (T, d_out), z (T, r))`` in the dense formulation (module docstring); rows without adapter get an
    exactly zero delta."""
    spread, z = dense_shrink(x, A, U, row_scale, scale, routes, B.shape[0])
    return spread @ expand_layout(B), z


def dense_backward(grad_out: Tensor, x: Tensor, z: Tensor, A: Tensor, B: Tensor, U: Tensor | None,
                   row_scale: Tensor | None, scale: float, routes: RowRoutes, needs) -> tuple:
    """``(dx, dA, dB, dU, d_row_scale)`` of the adapter delta in the dense formulation; an entry is None unless
    ``needs`` asks for it. Formulas as :func:`lora_route.kernels.reference.segment_backward`."""
    need_dx, need_dA, need_dB, need_dU, need_ds = needs
    need_dU = need_dU and U is not None
    need_ds = need_ds and row_scale is not None
    rank = A.shape[1]
    a_idx, u_idx, b_idx = routes.a_idx, routes.u_idx, routes.b_idx
    active = a_idx >= 0
    mask = active.unsqueeze(1)
    dy = torch.where(mask, grad_out, 0)
    core = _apply_core(U, u_idx, z)  # z is zero on rows without adapter
    row_s = _row_scales(row_scale, scale, active, x.dtype)
    g = torch.where(mask, _select(dy @ B.permute(1, 0, 2).reshape(B.shape[1], -1), b_idx, rank), 0)  # B[b]ᵀ·dy
    h = g * row_s
    k = _apply_core(U, u_idx, h, transpose=True)
    d_row_scale = torch.where(active, (g * core).sum(1) * scale, 0) if need_ds else None
    dB = None
    if need_dB:
        spread_core = _spread(core, b_idx, B.shape[0])
        dB = ((dy * row_s).t() @ spread_core).view(B.shape[1], B.shape[0], rank).permute(1, 0, 2).contiguous()
    dU = (_spread(h, u_idx, U.shape[0]).t() @ z).view_as(U) if need_dU else None
    spread_k = _spread(k, a_idx, A.shape[0]) if (need_dA or need_dx) else None
    dA = (spread_k.t() @ torch.where(mask, x, 0)).view_as(A) if need_dA else None
    dx = spread_k @ A.reshape(-1, A.shape[2]) if need_dx else None
    return dx, dA, dB, dU, d_row_scale


def forward(x, weight, bias, A, B, U, row_scale, scale, routes: RowRoutes):
    """The backend interface's forward (:mod:`lora_route.kernels.backend`)."""
    if not uses_dense(A, B):
        delta, z = reference.segment_forward(x, A, B, U, row_scale, scale, routes.plan().segments())
        return (delta if weight is None else torch.nn.functional.linear(x, weight, bias).add_(delta)), z
    spread, z = dense_shrink(x, A, U, row_scale, scale, routes, B.shape[0])
    if weight is None:
        return spread @ expand_layout(B), z
    return torch.nn.functional.linear(x, weight, bias).addmm_(spread, expand_layout(B)), z


def backward(grad_out, x, z, weight, A, B, U, row_scale, scale, routes: RowRoutes, needs):
    """The backend interface's backward (:mod:`lora_route.kernels.backend`)."""
    if uses_dense(A, B):
        grads = dense_backward(grad_out, x, z, A, B, U, row_scale, scale, routes, needs)
    else:
        grads = reference.segment_backward(grad_out, x, z, A, B, U, row_scale, scale, routes.plan().segments(),
                                           needs)
    dx, *rest = grads
    if dx is not None and weight is not None:
        dx = dx + grad_out @ weight
    return (dx, *rest)


BACKEND = Backend("torch", available=lambda: True, unsupported_reason=lambda x, weight, rank: None,
                  forward=forward, backward=backward)
