"""The ``cuda`` backend: the compiled extension ``lora_route._C`` (``csrc/``) behind the backend interface of
:mod:`lora_route.kernels.dispatch`.

Forward runs in CUDA: a shrink (``z = A[a]·x``), a finish (split-K sum, rounding of ``z`` to the input dtype,
optional core ``U[u]·z``) and an expand that adds ``scale_t · B[b]·U[u]·z`` into the base output in place.
Batches of at most :data:`lora_route.kernels.plan.DECODE_MAX_ROWS` rows take the per-row gather kernels (BGMV-style:
one block per row), larger ones the segment-tiled kernels (SGMV-style: 64-row tiles of the plan's sorted rows,
tensor cores for fp16/bf16). Rows without adapter are neither read nor written.

Backward is plain torch on the GPU, the dense (one-hot) backward of :mod:`lora_route.kernels.torch_backend`: every
per-bank reduction is one dense GEMM against a one-hot expansion of the rows (``(T, n·r)``), so it needs no host
synchronisation, no per-segment loop and no atomics (deterministic), at ``n_bank`` times the FLOPs of the adapter part
of a segment-wise backward. Where that is too slow (many banks) the Triton backward is the faster choice.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lora_route.kernels.backend import Backend, RowRoutes
from lora_route.kernels.extension import extension_entry
from lora_route.kernels.plan import shape_class
from lora_route.kernels.torch_backend import dense_backward

CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNELS = ("auto", "gather", "segment")
MIN_COMPUTE_CAPABILITY = (8, 0)


def _kernel():
    """``(lora_route._C.routed_forward, None)``, or ``(None, why)`` where it is not there."""
    return extension_entry("routed_forward",
                           "this build of lora_route._C has no CUDA kernels (it was built without a CUDA toolchain)")


def available() -> bool:
    """True when ``lora_route._C`` imports with its CUDA kernels and torch sees a CUDA device."""
    return _kernel()[0] is not None and torch.cuda.is_available()


def unsupported_reason(x: Tensor, rank: int | None = None) -> str | None:
    """Why this backend cannot serve a call on ``x`` (None when it can); every rank is served."""
    kernel, why = _kernel()
    if kernel is None:
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
    if row_scale is not None:
        row_scale = row_scale.contiguous()  # a 0-d scale reaches here expanded to (T,) with stride 0
    row_order, segment_starts, segment_routes, _ = plan
    return _kernel()[0](x, A, B, U, row_scale, float(scale), row_order, segment_starts, segment_routes, out, gather)


def _forward(x, weight, bias, A, B, U, row_scale, scale, routes: RowRoutes):
    out = torch.nn.functional.linear(x, weight, bias) if weight is not None else x.new_zeros(x.shape[0], B.shape[1])
    z = routed_forward(x, A, B, U, row_scale, scale, routes.plan().tensors(), out)
    return out, z


def _backward(grad_out, x, z, weight, A, B, U, row_scale, scale, routes: RowRoutes, needs):
    """Plain torch on the GPU: the dense (one-hot) backward of :mod:`lora_route.kernels.torch_backend`, which needs
    no host synchronisation, no per-segment loop and no atomics (deterministic)."""
    dx, *rest = dense_backward(grad_out, x, z, A, B, U, row_scale, scale, routes, needs)
    if dx is not None and weight is not None:
        dx = dx + grad_out @ weight
    return (dx, *rest)


BACKEND = Backend("cuda", available=available, unsupported_reason=lambda x, weight, rank: unsupported_reason(x, rank),
                  forward=_forward, backward=_backward)
