"""The routed LoRA operation: input validation, backend dispatch, autograd and ``torch.library`` registration.

``routed_lora_delta`` / ``routed_linear`` compute, for every row ``t`` of ``x`` (..., d_in)::

    delta_t = scale_t · B[b_t] · U[u_t] · A[a_t] · x_t          (rows with a_t == -1: delta_t = 0)

The work runs in two custom ops, ``lora_route::routed_lora_forward`` and ``lora_route::routed_lora_backward``,
so ``torch.compile(fullgraph=True)`` traces calls without a graph break. Backends (``"cuda"``, ``"triton"``,
``"triton_fused"``, ``"torch"``) implement the interface of :mod:`lora_route.kernels.backend`; ``backend="auto"``
(or ``LORA_ROUTE_BACKEND``) picks one per call, see :func:`lora_route.kernels.dispatch.resolve_backend`. This module
knows nothing about languages.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from lora_route.kernels.backend import RowRoutes
from lora_route.kernels.dispatch import get_backend, resolve_backend_cached
from lora_route.kernels.plan import RoutePlan, check_index, check_route_consistency

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------------------------------------- the custom ops
def _routes(a_idx, b_idx, u_idx, row_order, segment_starts, segment_routes, num_segments,
            shared_plan: RoutePlan | None = None) -> RowRoutes:
    plan_tensors = None if row_order is None else (row_order, segment_starts, segment_routes, num_segments)
    return RowRoutes(a_idx, u_idx, b_idx, plan_tensors, shared_plan)


def _run_forward(backend: str, check_indices: bool, x, weight, bias, A, B, U, row_scale, scale,
                 routes: RowRoutes) -> tuple[Tensor, Tensor]:
    """``(out, z)``: ``out`` (T, d_out) = base (when ``weight`` is given) + delta; ``z`` (T, r) = A[a]·x."""
    if check_indices:
        _check_indices(routes.a_idx, routes.b_idx, routes.u_idx, A, B, U)
    return get_backend(backend).forward(x, weight, bias, A, B, U, row_scale, scale, routes)


def _check_indices(a_idx: Tensor, b_idx: Tensor, u_idx: Tensor | None, A: Tensor, B: Tensor, U: Tensor | None) -> None:
    """Raise ValueError for indices below -1, rows that are -1 in one index tensor but not in another, and indices
    outside their bank (synchronises; calls with a plan from :func:`plan_routes` skip it)."""
    check_route_consistency(a_idx, b_idx, u_idx)
    if a_idx.numel():
        indices = [a_idx, u_idx if u_idx is not None else a_idx.new_zeros(1), b_idx]
        _raise_if_out_of_range(torch.stack([index.max() for index in indices]).tolist(), A, B, U)


def _raise_if_out_of_range(upper: Sequence[int], A: Tensor, B: Tensor, U: Tensor | None) -> None:
    max_a, max_u, max_b = upper
    if max_a >= A.shape[0]:
        raise ValueError(f"a_idx holds {max_a} but the A bank has {A.shape[0]} adapters")
    if max_b >= B.shape[0]:
        raise ValueError(f"b_idx holds {max_b} but the B bank has {B.shape[0]} adapters")
    if U is not None and max_u >= U.shape[0]:
        raise ValueError(f"u_idx holds {max_u} but the U bank has {U.shape[0]} cores")


def _routed_lora_forward_impl(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    A: Tensor,
    B: Tensor,
    U: Tensor | None,
    a_idx: Tensor,
    b_idx: Tensor,
    u_idx: Tensor | None,
    row_scale: Tensor | None,
    scale: float,
    row_order: Tensor | None,
    segment_starts: Tensor | None,
    segment_routes: Tensor | None,
    num_segments: Tensor | None,
    check_indices: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """The custom op's forward: :func:`_run_forward` on the routes given as tensors."""
    routes = _routes(a_idx, b_idx, u_idx, row_order, segment_starts, segment_routes, num_segments)
    return _run_forward(backend, check_indices, x, weight, bias, A, B, U, row_scale, scale, routes)


_routed_lora_forward = torch.library.custom_op("lora_route::routed_lora_forward", _routed_lora_forward_impl,
                                               mutates_args=())


@_routed_lora_forward.register_fake
def _(x, weight, bias, A, B, U, a_idx, b_idx, u_idx, row_scale, scale, row_order, segment_starts, segment_routes,
      num_segments, check_indices, backend):
    return x.new_empty(x.shape[0], B.shape[1]), x.new_empty(x.shape[0], A.shape[1])


@torch.library.custom_op("lora_route::routed_lora_backward", mutates_args=())
def _routed_lora_backward(
    grad_out: Tensor,
    x: Tensor,
    z: Tensor,
    weight: Tensor | None,
    A: Tensor,
    B: Tensor,
    U: Tensor | None,
    a_idx: Tensor,
    b_idx: Tensor,
    u_idx: Tensor | None,
    row_scale: Tensor | None,
    scale: float,
    row_order: Tensor | None,
    segment_starts: Tensor | None,
    segment_routes: Tensor | None,
    num_segments: Tensor | None,
    needs: list[bool],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dA, dB, dU, d_row_scale)``; dx includes ``grad_out · weight`` when a weight is given; an entry not
    asked for in ``needs`` is empty."""
    routes = _routes(a_idx, b_idx, u_idx, row_order, segment_starts, segment_routes, num_segments)
    grads = get_backend(backend).backward(grad_out, x, z, weight, A, B, U, row_scale, scale, routes, needs)
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@_routed_lora_backward.register_fake
def _(grad_out, x, z, weight, A, B, U, a_idx, b_idx, u_idx, row_scale, scale, row_order, segment_starts,
      segment_routes, num_segments, needs, backend):
    shapes = (x, A, B, U, row_scale)
    return tuple(
        t.new_empty(t.shape) if (need and t is not None) else x.new_empty(0) for t, need in zip(shapes, needs)
    )


def _setup_context(ctx, inputs, output):
    (x, weight, bias, A, B, U, a_idx, b_idx, u_idx, row_scale, scale, row_order, segment_starts, segment_routes,
     num_segments, _check_indices, backend) = inputs
    _, z = output
    ctx.save_for_backward(x, weight, z, A, B, U, a_idx, b_idx, u_idx, row_scale, row_order, segment_starts,
                          segment_routes, num_segments)
    ctx.scale = scale
    ctx.backend = backend
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(z)


def _backward(ctx, grad_out, _grad_z):
    if torch.is_grad_enabled():
        raise RuntimeError("double backward (create_graph=True, higher-order gradients) through lora_route's routed "
                           "op is not supported: its backward is not differentiable")
    (x, weight, z, A, B, U, a_idx, b_idx, u_idx, row_scale, row_order, segment_starts, segment_routes,
     num_segments) = ctx.saved_tensors
    need = ctx.needs_input_grad
    needs = [need[0], need[3], need[4], U is not None and need[5], row_scale is not None and need[9]]
    grad_out = grad_out.contiguous()
    grads = [None] * 5
    if any(needs):
        computed = _routed_lora_backward(
            grad_out, x, z, weight, A, B, U, a_idx, b_idx, u_idx, row_scale, ctx.scale, row_order, segment_starts,
            segment_routes, num_segments, needs, ctx.backend,
        )
        grads = [grad if need_it else None for grad, need_it in zip(computed, needs)]
    d_weight = grad_out.t() @ x if (weight is not None and need[1]) else None
    d_bias = grad_out.sum(0) if (ctx.has_bias and need[2]) else None
    return (grads[0], d_weight, d_bias, grads[1], grads[2], grads[3], None, None, None, grads[4], None, None, None,
            None, None, None, None)


torch.library.register_autograd("lora_route::routed_lora_forward", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------- public API
def _validate(x, weight, bias, A, B, U, a_idx, b_idx, u_idx, scale, plan):
    """Raise a ValueError/TypeError naming the first argument that disagrees with the others (no host sync); return
    the number of rows. The index tensors are checked here only when no plan vouches for them (:func:`_plan_vouches`)."""
    for name, tensor in (("x", x), ("A", A), ("B", B)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; supported: {', '.join(map(str, SUPPORTED_DTYPES))}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (..., d_in)")
    if A.dim() != 3:
        raise ValueError(f"A must be (n_a, r, d_in), got shape {tuple(A.shape)}")
    if B.dim() != 3:
        raise ValueError(f"B must be (n_b, d_out, r), got shape {tuple(B.shape)}")
    d_in, r = x.shape[-1], A.shape[1]
    if A.shape[2] != d_in:
        raise ValueError(f"A is {tuple(A.shape)} but x has d_in={d_in}: A must be (n_a, r, {d_in})")
    if B.shape[2] != r:
        raise ValueError(f"B is {tuple(B.shape)} but A has rank r={r}: B must be (n_b, d_out, {r})")
    named = [("A", A), ("B", B)]
    if U is not None:
        if not isinstance(U, Tensor) or U.dim() != 3 or U.shape[1:] != (r, r):
            shape = tuple(U.shape) if isinstance(U, Tensor) else type(U).__name__
            raise ValueError(f"U must be (n_u, {r}, {r}) for rank r={r}, got {shape}")
        if u_idx is None:
            raise ValueError("U is given but u_idx is None: pass one core index per row")
        named.append(("U", U))
    elif u_idx is not None:
        raise ValueError("u_idx is given but U is None")
    if weight is not None:
        if weight.dim() != 2 or weight.shape != (B.shape[1], d_in):
            raise ValueError(f"weight is {tuple(weight.shape)} but must be (d_out, d_in) = ({B.shape[1]}, {d_in})")
        named.append(("weight", weight))
        if bias is not None:
            if bias.shape != (B.shape[1],):
                raise ValueError(f"bias is {tuple(bias.shape)} but must be (d_out,) = ({B.shape[1]},)")
            named.append(("bias", bias))
    dtype, device = x.dtype, x.device
    for name, tensor in named:
        if tensor.dtype != dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but x has {dtype}; cast them to one dtype")
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but x is on {device}")
    num_rows = x.numel() // d_in if d_in else x.shape[:-1].numel()
    if isinstance(scale, Tensor):
        if scale.dim() > 1 or (scale.dim() == 1 and scale.shape[0] != num_rows):
            raise ValueError(f"scale must be a float, a 0-d tensor or ({num_rows},) per row, got {tuple(scale.shape)}")
        if not scale.is_floating_point():
            raise ValueError(f"scale must be a floating-point tensor, got {scale.dtype}")
        if scale.device != device:
            raise ValueError(f"scale is on {scale.device} but x is on {device}")
    elif not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or a tensor, got {type(scale).__name__}")
    if plan is not None and _plan_vouches(plan, num_rows, device, a_idx, b_idx, u_idx, A, B, U):
        return num_rows
    for name, index in (("a_idx", a_idx), ("b_idx", b_idx), ("u_idx", u_idx)):
        if index is None:
            continue
        check_index(name, index, num_rows)
        if index.device != device:
            raise ValueError(f"{name} is on {index.device} but x is on {device}")
    return num_rows


def _plan_vouches(plan, num_rows, device, a_idx, b_idx, u_idx, A, B, U) -> bool:
    """Raise unless ``plan`` fits a call of ``num_rows`` rows on ``device`` with these banks; True when it vouches for
    the index tensors: :func:`plan_routes` built it from these very tensors (it checked their dtype, shape and device)
    and none changed since, so the call need not check them again."""
    if not isinstance(plan, RoutePlan):
        raise TypeError(f"plan must be a RoutePlan from lora_route.plan_routes, got {type(plan).__name__}")
    if plan.num_rows != num_rows:
        raise ValueError(f"plan was built for {plan.num_rows} rows but x has {num_rows}")
    if plan.row_order.device != device:
        raise ValueError(f"plan is on {plan.row_order.device} but x is on {device}")
    vouches = plan.indices is not None and not torch.compiler.is_compiling()
    if vouches:
        plan.check_built_from(a_idx, b_idx, u_idx)
    if plan.index_bounds is not None:
        (_, max_a), (_, max_b), (_, max_u) = plan.index_bounds
        _raise_if_out_of_range((max_a, max_u, max_b), A, B, U)
    return vouches


def _call(x, weight, bias, A, B, a_idx, b_idx, U, u_idx, scale, plan, backend):
    num_rows = _validate(x, weight, bias, A, B, U, a_idx, b_idx, u_idx, scale, plan)
    flat = x.dim() == 2
    x2d = x if flat else x.reshape(num_rows, x.shape[-1])
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    if isinstance(scale, Tensor):
        row_scale = scale.to(x.dtype).expand(num_rows) if scale.dim() == 0 else scale.to(x.dtype)
        scale_value = 1.0
    else:
        row_scale, scale_value = None, float(scale)
    name = resolve_backend_cached(backend, x, A.shape[1], weight, num_rows)
    plan_tensors = plan.tensors() if plan is not None else (None, None, None, None)
    check_indices = plan is None or plan.index_bounds is None
    A, B, U = A.contiguous(), B.contiguous(), U.contiguous() if U is not None else None
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(
            isinstance(t, Tensor) and t.requires_grad for t in (x, weight, bias, A, B, U, row_scale))):
        out, _ = _routed_lora_forward(x2d, weight, bias, A, B, U, a_idx, b_idx, u_idx, row_scale, scale_value,
                                      *plan_tensors, check_indices, name)
    else:
        # Eager calls that record no autograd graph (decoding) skip the custom op's dispatch: the same implementation
        # without the dispatcher's host time, which at decode sizes is more than the rest of the call. A plan that
        # vouches for the indices is passed on, so that what the backend derives from the routes is built once per
        # plan (per step), not once per layer.
        shared_plan = plan if (plan is not None and plan.indices is not None) else None
        routes = _routes(a_idx, b_idx, u_idx, *plan_tensors, shared_plan)
        out, _ = _run_forward(name, check_indices, x2d, weight, bias, A, B, U, row_scale, scale_value, routes)
    return out if flat else out.reshape(*x.shape[:-1], out.shape[-1])


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
    plan: RoutePlan | None = None,
    backend: str = "auto",
) -> Tensor:
    """Adapter delta ``scale_t · B[b_t] · U[u_t] · A[a_t] · x_t`` per row.

    x: (..., d_in); A: (n_a, r, d_in); B: (n_b, d_out, r); U: (n_u, r, r) or None;
    a_idx, b_idx, u_idx: (T,) int32/int64 with T = x.numel() // d_in, -1 = no adapter on that row;
    scale: float, 0-d tensor or (T,) tensor (differentiable); plan: a :func:`plan_routes` result for these
    indices, built once and reused across layers (built per call when None). Returns (..., d_out) in x's dtype.
    """
    return _call(x, None, None, A, B, a_idx, b_idx, U, u_idx, scale, plan, backend)


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
    plan: RoutePlan | None = None,
    backend: str = "auto",
) -> Tensor:
    """``F.linear(x, weight, bias)`` plus the routed adapter delta, accumulated into the base output.

    weight: (d_out, d_in); bias: (d_out,) or None; other arguments as in :func:`routed_lora_delta`.
    Rows with ``a_idx == -1`` return the base output bit for bit.
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    return _call(x, weight, bias, A, B, a_idx, b_idx, U, u_idx, scale, plan, backend)
