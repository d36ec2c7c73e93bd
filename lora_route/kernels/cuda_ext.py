"""The ``cuda`` backend: the compiled extension ``lora_route._C`` (``csrc/``) behind the backend interface of
:mod:`lora_route.kernels.dispatch`.

Forward runs in CUDA: a shrink (``z = A[a]·x``), a finish (split-K sum, rounding of ``z`` to the input dtype,
optional core ``U[u]·z``) and an expand that adds ``scale_t · B[b]·U[u]·z`` into the base output in place.
Batches of at most :data:`lora_route.kernels.plan.DECODE_MAX_ROWS` rows take the per-row gather kernels (BGMV-style:
one block per row), larger ones the segment-tiled kernels (SGMV-style: 64-row tiles of the plan's sorted rows,
tensor cores for fp16/bf16). Rows without adapter are neither read nor written.

Backward is plain torch on whatever device the tensors live on: every per-bank reduction is one dense GEMM
against a one-hot expansion of the rows (``(T, n·r)``), so it needs no host synchronisation, no per-segment
loop and no atomics (deterministic), at ``n_bank`` times the FLOPs of the adapter part of a segment-wise
backward. Where that is too slow (many banks) the Triton backward is the faster choice.
"""
from __future__ import annotations

import functools
import importlib

import torch
from torch import Tensor

from lora_route.kernels.plan import RoutePlan, shape_class

CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNELS = ("auto", "gather", "segment")
MIN_COMPUTE_CAPABILITY = (8, 0)


@functools.lru_cache(maxsize=1)
def _extension():
    """``(module, None)`` when ``lora_route._C`` imports, else ``(None, why)``."""
    try:
        module = importlib.import_module("lora_route._C")  # a compiled binary, present only where it was built
    except ImportError as error:
        return None, f"lora_route._C is not built or does not load ({error})"
    return module, None


def available() -> bool:
    """True when ``lora_route._C`` imports and torch sees a CUDA device."""
    return _extension()[0] is not None and torch.cuda.is_available()


def unsupported_reason(x: Tensor, rank: int | None = None) -> str | None:
    """Why this backend cannot serve a call on ``x`` (None when it can); every rank is served."""
    module, why = _extension()
    if module is None:
        return why
    if x.device.type != "cuda":
        return f"the cuda backend needs CUDA tensors; got {x.device.type}"
    if x.dtype not in CUDA_DTYPES:
        return f"the cuda backend supports float32, float16 and bfloat16; got {x.dtype}"
    capability = torch.cuda.get_device_capability(x.device)
    if capability < MIN_COMPUTE_CAPABILITY:
        needed = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
        return (f"the cuda backend needs compute capability >= {needed}; "
                f"{torch.cuda.get_device_name(x.device)} has {capability[0]}.{capability[1]}")
    return None


def routed_forward(x: Tensor, A: Tensor, B: Tensor, U: Tensor | None, row_scale: Tensor | None, scale: float,
                   plan: tuple[Tensor, Tensor, Tensor, Tensor], out: Tensor, kernel: str = "auto") -> Tensor:
    """Add ``scale · row_scale_t · B[b]·U[u]·A[a]·x_t`` into ``out`` (T, d_out) in place; return ``z`` (T, r).

    x: (T, d_in) contiguous; A: (n_a, r, d_in); B: (n_b, d_out, r); U: (n_u, r, r) or None; row_scale: (T,) or
    None, in x's dtype; plan: the four tensors of the rows' :class:`RoutePlan` (``RoutePlan.tensors()``).
    ``z = A[a]·x`` is in x's dtype, zero on rows without adapter. ``kernel``: ``"gather"`` (per-row, decode),
    ``"segment"`` (tiled, prefill/training) or ``"auto"`` (gather for at most ``DECODE_MAX_ROWS`` rows).
    """
    reason = unsupported_reason(x)
    if reason is not None:
        raise ValueError(reason)
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(map(repr, KERNELS))}")
    if kernel == "auto":
        gather = shape_class(x.shape[0]) == "decode"
    else:
        gather = kernel == "gather"
    module, _ = _extension()
    if row_scale is not None:
        row_scale = row_scale.contiguous()  # a 0-d scale reaches here expanded to (T,) with stride 0
    row_order, segment_starts, segment_routes, _ = plan
    return module.routed_forward(x, A, B, U, row_scale, float(scale), row_order, segment_starts, segment_routes,
                                 out, gather)


def _row_routes(plan: RoutePlan) -> tuple[Tensor, Tensor]:
    """Per-row ``(a, u, b)`` (T, 3) int64 (-1 on rows without adapter) and the active mask (T,), from the plan."""
    num_rows = plan.num_rows
    positions = torch.arange(num_rows, device=plan.row_order.device)
    num_active = plan.segment_starts[num_rows]
    segment = torch.searchsorted(plan.segment_starts, positions, right=True) - 1
    routes = plan.segment_routes[segment.clamp(0, max(num_rows - 1, 0))]
    routes = torch.where((positions < num_active).unsqueeze(1), routes, -1)
    by_row = torch.empty_like(routes).index_copy_(0, plan.row_order, routes)
    return by_row, by_row[:, 0] >= 0


def _spread(values: Tensor, index: Tensor, active: Tensor, banks: int) -> Tensor:
    """(T, banks·r): row t holds ``values[t]`` in the block of bank ``index[t]`` and zeros elsewhere."""
    one_hot = torch.nn.functional.one_hot(index.clamp(min=0), banks).to(values.dtype)
    one_hot = one_hot * active.unsqueeze(1).to(values.dtype)
    return (one_hot.unsqueeze(2) * values.unsqueeze(1)).reshape(values.shape[0], -1)


def _select(values: Tensor, index: Tensor, active: Tensor) -> Tensor:
    """(T, r) from (T, banks, r): the block of bank ``index[t]`` per row, zero on inactive rows (exact copy)."""
    picked = values.gather(1, index.clamp(min=0).view(-1, 1, 1).expand(-1, 1, values.shape[2])).squeeze(1)
    return torch.where(active.unsqueeze(1), picked, 0)


def routed_backward(grad_out: Tensor, x: Tensor, z: Tensor, A: Tensor, B: Tensor, U: Tensor | None,
                    row_scale: Tensor | None, scale: float, plan: tuple[Tensor, Tensor, Tensor, Tensor],
                    needs) -> tuple:
    """``(dx, dA, dB, dU, d_row_scale)`` of :func:`routed_forward`'s delta; an entry is None unless ``needs`` (five
    booleans in that order) asks for it. Shapes as in :func:`routed_forward`; ``grad_out`` (T, d_out), ``z`` the
    forward's (T, r). Formulas as :func:`lora_route.kernels.reference.segment_backward`; runs on any device.
    """
    need_dx, need_dA, need_dB, need_dU, need_ds = needs
    need_dU = need_dU and U is not None
    need_ds = need_ds and row_scale is not None
    num_rows, rank = x.shape[0], A.shape[1]
    routes, active = _row_routes(RoutePlan(*plan))
    a_idx, u_idx, b_idx = routes.unbind(1)
    mask = active.unsqueeze(1)
    dy = torch.where(mask, grad_out, 0)
    if U is not None:
        core = _spread(z, u_idx, active, U.shape[0]) @ U.transpose(1, 2).reshape(-1, rank)   # z'_t = U[u] z_t
    else:
        core = z
    row_s = row_scale * scale if row_scale is not None else torch.full_like(active, scale, dtype=x.dtype)
    row_s = torch.where(active, row_s, 0).unsqueeze(1)
    g = _select((dy @ B.permute(1, 0, 2).reshape(B.shape[1], -1)).view(num_rows, B.shape[0], rank), b_idx, active)
    h = g * row_s
    k = _spread(h, u_idx, active, U.shape[0]) @ U.reshape(-1, rank) if U is not None else h  # U[u]^T h_t
    d_row_scale = torch.where(active, (g * core).sum(1) * scale, 0) if need_ds else None
    dB = None
    if need_dB:
        spread_core = _spread(core, b_idx, active, B.shape[0])
        dB = ((dy * row_s).t() @ spread_core).view(B.shape[1], B.shape[0], rank).permute(1, 0, 2).contiguous()
    dU = (_spread(h, u_idx, active, U.shape[0]).t() @ z).view_as(U) if need_dU else None
    spread_k = _spread(k, a_idx, active, A.shape[0]) if (need_dA or need_dx) else None
    dA = (spread_k.t() @ torch.where(mask, x, 0)).view_as(A) if need_dA else None
    dx = spread_k @ A.reshape(-1, A.shape[2]) if need_dx else None
    return dx, dA, dB, dU, d_row_scale
