"""The ``cpu`` backend: the CPU kernels of the compiled extension ``lora_route._C`` (``csrc/routed_lora_cpu.cpp``)
behind the backend interface of :mod:`lora_route.kernels.dispatch`.

Forward, float32 on CPU tensors: the base GEMM (``torch.nn.functional.linear``), then one call that adds every row's
``scale_t · B[b]·U[u]·A[a]·x_t`` into its output in place. Rows sharing a bank share one pass over it (up to four rows
per pass), so a mixed decode batch reads each bank it uses about once instead of every bank for every row as the torch
backend's dense formulation does. The active rows sorted by ``a`` and by ``b``, which group them, are built once per
shared plan. Backward is the torch backend's (dense or per segment, as it chooses), from the ``z`` the kernel returns.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lora_route.kernels import torch_backend
from lora_route.kernels.backend import Backend, RowRoutes
from lora_route.kernels.extension import extension_entry


def _kernel():
    """``(lora_route._C.routed_forward_cpu, None)``, or ``(None, why)`` where it is not there."""
    return extension_entry("routed_forward_cpu",
                           "this build of lora_route._C has no CPU kernels (rebuild it from this version's csrc/)")


def available() -> bool:
    """True when ``lora_route._C`` imports and holds the CPU kernels."""
    return _kernel()[0] is not None


def unsupported_reason(x: Tensor) -> str | None:
    """Why this backend cannot serve a call on ``x`` (None when it can); every rank is served."""
    kernel, why = _kernel()
    if kernel is None:
        return why
    if x.device.type != "cpu":
        return f"the cpu backend needs CPU tensors; got {x.device.type}"
    if x.dtype != torch.float32:
        return f"the cpu backend supports float32; got {x.dtype}"
    return None


def kernel_routes(routes: RowRoutes) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """``(a_idx, b_idx, u_idx, order_a, order_b)`` as the kernel takes them: the indices as contiguous int64 and the
    rows with an adapter sorted (stably) by their A bank and by their B bank. Built once per shared plan."""

    def build() -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        a_idx, b_idx = routes.a_idx.long().contiguous(), routes.b_idx.long().contiguous()
        u_idx = routes.u_idx.long().contiguous() if routes.u_idx is not None else None
        rows = (a_idx >= 0).nonzero().squeeze(1)
        order_a = rows[torch.argsort(a_idx[rows], stable=True)]
        order_b = rows[torch.argsort(b_idx[rows], stable=True)]
        return a_idx, b_idx, u_idx, order_a, order_b

    return routes.derived(("cpu_kernel_routes",), build)


def routed_forward(x: Tensor, A: Tensor, B: Tensor, U: Tensor | None, row_scale: Tensor | None, scale: float,
                   routes: RowRoutes, out: Tensor) -> Tensor:
    """Add ``scale · row_scale_t · B[b]·U[u]·A[a]·x_t`` into ``out`` (T, d_out) in place; return ``z`` (T, r).

    x: (T, d_in); A: (n_a, r, d_in); B: (n_b, d_out, r); U: (n_u, r, r) or None; row_scale: (T,) or None; all
    float32 CPU tensors. ``z = A[a]·x``, zero on rows without adapter. The extension checks every shape and index and
    raises ``RuntimeError`` naming the one that is wrong.
    """
    reason = unsupported_reason(x)
    if reason is not None:
        raise ValueError(reason)
    return _launch(x, A, B, U, row_scale, scale, routes, out)


def _launch(x, A, B, U, row_scale, scale, routes: RowRoutes, out) -> Tensor:
    """:func:`routed_forward` on a call the dispatcher has already found this backend able to serve."""
    a_idx, b_idx, u_idx, order_a, order_b = kernel_routes(routes)
    n_b, d_out, rank = B.shape
    B_t = torch_backend.expand_layout(B).view(n_b, rank, d_out)
    if row_scale is not None:
        row_scale = row_scale.contiguous()  # a 0-d scale reaches here expanded to (T,) with stride 0
    return _kernel()[0](x.contiguous(), A.contiguous(), B_t, None if U is None else U.contiguous(), row_scale,
                        float(scale), a_idx, b_idx, u_idx if U is not None else None, order_a, order_b, out)


def _forward(x, weight, bias, A, B, U, row_scale, scale, routes: RowRoutes):
    out = torch.nn.functional.linear(x, weight, bias) if weight is not None else x.new_zeros(x.shape[0], B.shape[1])
    return out, _launch(x, A, B, U, row_scale, scale, routes, out)


BACKEND = Backend("cpu", available=available, unsupported_reason=lambda x, weight, rank: unsupported_reason(x),
                  forward=_forward, backward=torch_backend.backward)
