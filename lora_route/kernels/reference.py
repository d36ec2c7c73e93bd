"""The specification of the routed LoRA operation, in plain PyTorch.

For a frozen linear layer ``W0`` (d_out × d_in) and adapter banks ``A`` (n_a, r, d_in), ``B`` (n_b, d_out, r) and
an optional core ``U`` (n_u, r, r), every row ``t`` of ``x`` (T × d_in) gets::

    y_t = W0 x_t (+ bias) + scale_t · B[b_t] · U[u_t] · A[a_t] · x_t

A row whose ``a_idx`` is -1 carries no adapter (its ``b_idx`` and ``u_idx`` are -1 too) and keeps the base output.
Every backend is tested against :func:`routed_lora_delta` evaluated in float64; the torch backend of
:mod:`lora_route.kernels.op` runs :func:`segment_forward` / :func:`segment_backward`, which compute the same thing one
segment (rows sharing an ``(a, u, b)`` route) at a time.
"""
from __future__ import annotations

import torch
from torch import Tensor


def routed_lora_delta(
    x: Tensor,
    A: Tensor,
    B: Tensor,
    a_idx: Tensor,
    b_idx: Tensor,
    *,
    U: Tensor | None = None,
    u_idx: Tensor | None = None,
    scale: float | Tensor = 1.0,
) -> Tensor:
    """Row-by-row definition of the adapter delta. ``x`` (T, d_in) → (T, d_out); differentiable by autograd."""
    active = a_idx >= 0
    rows = active.nonzero().squeeze(1)
    z = torch.einsum("trd,td->tr", A[a_idx[rows]], x[rows])
    if U is not None:
        z = torch.einsum("tqr,tr->tq", U[u_idx[rows]], z)
    delta_rows = torch.einsum("tor,tr->to", B[b_idx[rows]], z)
    if isinstance(scale, Tensor):
        delta_rows = delta_rows * scale.expand(x.shape[0])[rows].unsqueeze(1)
    else:
        delta_rows = delta_rows * scale
    delta = x.new_zeros(x.shape[0], B.shape[1])
    return delta.index_put((rows,), delta_rows)


def routed_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    A: Tensor,
    B: Tensor,
    a_idx: Tensor,
    b_idx: Tensor,
    *,
    U: Tensor | None = None,
    u_idx: Tensor | None = None,
    scale: float | Tensor = 1.0,
) -> Tensor:
    """``F.linear(x, weight, bias) + routed_lora_delta(...)`` for ``x`` (T, d_in) → (T, d_out)."""
    base = torch.nn.functional.linear(x, weight, bias)
    return base + routed_lora_delta(x, A, B, a_idx, b_idx, U=U, u_idx=u_idx, scale=scale)


def segment_forward(x, A, B, U, row_scale, scale, segments):
    """Adapter delta (T, d_out) and shrink output ``z = A[a]·x`` (T, r, zero on inactive rows), per segment.

    ``segments`` is a list of ``(rows, a, u, b)``: the row indices (int64 tensor) sharing one route and its bank
    indices (``u`` is ignored without ``U``). ``row_scale`` is (T,) or None; ``scale`` a Python float.
    """
    delta = x.new_zeros(x.shape[0], B.shape[1])
    z = x.new_zeros(x.shape[0], A.shape[1])
    for rows, a, u, b in segments:
        z_seg = x[rows] @ A[a].t()
        core = z_seg @ U[u].t() if U is not None else z_seg
        out = core @ B[b].t()
        out = out * (row_scale[rows].unsqueeze(1) * scale if row_scale is not None else scale)
        z[rows] = z_seg
        delta[rows] = out
    return delta, z


def segment_backward(grad_out, x, z, A, B, U, row_scale, scale, segments, needs):
    """Gradients ``(dx, dA, dB, dU, d_row_scale)`` of :func:`segment_forward`; an entry is None unless ``needs``
    (five booleans in that order) asks for it. With ``s_t`` the row's scale, ``g_t = B^T dy_t``, ``z'_t = U z_t``:
    ``d_row_scale_t = scale · g_t·z'_t``, ``dB[b] += s_t dy_t z'_t^T``, ``dU[u] += s_t g_t z_t^T``,
    ``dA[a] += U^T s_t g_t x_t^T``, ``dx_t = A^T U^T s_t g_t``.
    """
    need_dx, need_dA, need_dB, need_dU, need_ds = needs
    dx = torch.zeros_like(x) if need_dx else None
    dA = torch.zeros_like(A) if need_dA else None
    dB = torch.zeros_like(B) if need_dB else None
    dU = torch.zeros_like(U) if (need_dU and U is not None) else None
    d_row_scale = torch.zeros_like(row_scale) if (need_ds and row_scale is not None) else None
    for rows, a, u, b in segments:
        dy = grad_out[rows]
        z_seg = z[rows]
        core = z_seg @ U[u].t() if U is not None else z_seg
        g = dy @ B[b]
        s = row_scale[rows].unsqueeze(1) * scale if row_scale is not None else scale
        if d_row_scale is not None:
            d_row_scale[rows] = (g * core).sum(1) * scale
        if dB is not None:
            dB[b] += (dy * s).t() @ core
        h = g * s
        if dU is not None:
            dU[u] += h.t() @ z_seg
        k = h @ U[u] if U is not None else h
        if dA is not None:
            dA[a] += k.t() @ x[rows]
        if dx is not None:
            dx[rows] = k @ A[a]
    return dx, dA, dB, dU, d_row_scale
