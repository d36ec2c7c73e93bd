"""The ``triton`` and ``triton_fused`` backends: the kernels of ``lora_route.triton_kernels`` behind the backend
interface (:mod:`lora_route.kernels.backend`).

``triton``: cuBLAS (``F.linear``) for the base, then the shrink and expand kernels add the delta in place
(``routed_lora``). ``triton_fused``: the shrink kernel, then one GEMM that adds the delta in its epilogue
(``fused_linear``); it needs the layer's weight, so calls without one (``routed_lora_delta``) go to the unfused
kernels. On CPU the kernels run only under ``TRITON_INTERPRET=1`` (tests).
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor

from lora_route.kernels.backend import Backend, RowRoutes

# Installed from the top-level folder triton_kernels/ (outside this package's source tree), so loaded by its
# installed name; it imports nothing of lora_route, and without triton it reports itself unavailable.
triton_kernels = importlib.import_module("lora_route.triton_kernels")


def _unsupported_reason(x: Tensor, weight: Tensor | None, rank: int | None) -> str | None:
    return triton_kernels.unsupported_reason(x, rank)


def _forward(x, weight, bias, A, B, U, row_scale, scale, routes: RowRoutes):
    out = torch.nn.functional.linear(x, weight, bias) if weight is not None else x.new_zeros(x.shape[0], B.shape[1])
    z = triton_kernels.routed_forward(x, A, B, U, row_scale, scale, routes.plan().tensors(), out)
    return out, z


def _backward(grad_out, x, z, weight, A, B, U, row_scale, scale, routes: RowRoutes, needs):
    dx, *rest = triton_kernels.routed_backward(grad_out, x, z, A, B, U, row_scale, scale, routes.plan().tensors(),
                                               needs)
    if dx is not None and weight is not None:
        dx = dx + grad_out @ weight
    return (dx, *rest)


def _fused_unsupported_reason(x: Tensor, weight: Tensor | None, rank: int | None) -> str | None:
    if not triton_kernels.available():
        return _unsupported_reason(x, weight, rank) or "triton is not available"
    if weight is None:
        return _unsupported_reason(x, weight, rank)
    return triton_kernels.fused_unsupported_reason(x, weight, rank)


def _fused_forward(x, weight, bias, A, B, U, row_scale, scale, routes: RowRoutes):
    if weight is None:
        return _forward(x, weight, bias, A, B, U, row_scale, scale, routes)
    return triton_kernels.fused_linear_forward(x, weight, bias, A, B, U, row_scale, scale, routes.plan().tensors(),
                                               routes.b_idx)


def _fused_backward(grad_out, x, z, weight, A, B, U, row_scale, scale, routes: RowRoutes, needs):
    if weight is None:
        return _backward(grad_out, x, z, weight, A, B, U, row_scale, scale, routes, needs)
    return triton_kernels.fused_linear_backward(grad_out, x, z, weight, A, B, U, row_scale, scale,
                                                routes.plan().tensors(), routes.a_idx, needs)


TRITON = Backend("triton", available=triton_kernels.available, unsupported_reason=_unsupported_reason,
                 forward=_forward, backward=_backward)
TRITON_FUSED = Backend("triton_fused", available=triton_kernels.available,
                       unsupported_reason=_fused_unsupported_reason, forward=_fused_forward,
                       backward=_fused_backward)
