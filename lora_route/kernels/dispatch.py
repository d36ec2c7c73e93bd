"""Which backend serves a call: the registry of backends and the ``backend="auto"`` rule.

Backends (``"cuda"``: the compiled extension's CUDA kernels, ``"triton"``: the Triton shrink / expand kernels after
cuBLAS, ``"triton_fused"``: the base GEMM with the delta in its epilogue, ``"cpu"``: the compiled extension's CPU
kernels, ``"torch"``: plain PyTorch) implement the interface of :mod:`lora_route.kernels.backend`. ``backend="auto"``
(or ``LORA_ROUTE_BACKEND``) takes, on CUDA tensors, the first backend of :data:`AUTO_PREFERENCE` for the call's shape
class that can serve it, then torch; on CPU tensors the cpu backend where it can serve the call, then torch; an
explicit backend that cannot serve a call raises ``ValueError`` saying why. The op resolves through
:func:`resolve_backend_cached`, so the layers of a model that share one kind of call resolve it once, not once per
layer.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from lora_route.kernels import cpu_ext, cuda_ext, torch_backend, triton_backend
from lora_route.kernels.backend import Backend
from lora_route.kernels.plan import DECODE_MAX_ROWS, shape_class

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (
    cuda_ext.BACKEND, triton_backend.TRITON, triton_backend.TRITON_FUSED, cpu_ext.BACKEND, torch_backend.BACKEND)}
BACKEND_NAMES = tuple(BACKENDS)
# backend="auto" on CUDA tensors tries the fast backends in this order per shape class, then torch. Not measured yet
# (no GPU has run the benchmark): the order is to be set from a GPU run's ``auto_preference`` (benchmarks/), and
# triton_fused joins it only once a GPU run has measured it faster.
AUTO_PREFERENCE = {"decode": ("triton", "cuda"), "prefill_or_training": ("triton", "cuda")}


@contextmanager
def backend_override(backend: str | None) -> Iterator[None]:
    """Set ``LORA_ROUTE_BACKEND`` (what ``backend="auto"`` resolves to) inside the block; None leaves it alone."""
    if backend is None:
        yield
        return
    previous = os.environ.get("LORA_ROUTE_BACKEND")
    os.environ["LORA_ROUTE_BACKEND"] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LORA_ROUTE_BACKEND", None)
        else:
            os.environ["LORA_ROUTE_BACKEND"] = previous


def get_backend(name: str) -> Backend:
    return BACKENDS[name]


def backends() -> dict[str, bool]:
    """Which backends this install can run: ``{"cuda": bool, "triton": bool, "triton_fused": bool, "cpu": bool,
    "torch": True}``."""
    return {name: backend.available() for name, backend in BACKENDS.items()}


def unsupported_reason(name: str, x: Tensor, rank: int | None, weight: Tensor | None = None) -> str | None:
    """Why backend ``name`` cannot serve a call on ``x`` with adapters of rank ``rank`` (and the layer's ``weight``,
    None for the delta alone); None when it can."""
    backend = BACKENDS[name]
    if not backend.available():
        return f"the {name} backend is not available in this install (lora_route.backends() = {backends()})"
    return backend.unsupported_reason(x, weight, rank)


def resolve_backend(backend: str, x: Tensor, rank: int | None = None, weight: Tensor | None = None) -> str:
    """Pick the backend for one call on ``x`` (..., d_in) with adapters of rank ``rank`` (``weight``: the layer's, or
    None for the delta alone).

    An explicit ``backend`` (or ``LORA_ROUTE_BACKEND`` when ``backend="auto"``) must be able to serve the call,
    else ``ValueError``. ``"auto"`` on CUDA tensors takes the first backend of ``AUTO_PREFERENCE`` for the call's
    :func:`~lora_route.kernels.plan.shape_class` that can serve it, else torch; on CPU tensors it takes the cpu backend
    where that can serve the call (``lora_route._C`` built, float32), else torch (Triton runs on CPU only under
    ``TRITON_INTERPRET=1``, which is for tests).
    """
    if backend == "auto":
        backend = os.environ.get("LORA_ROUTE_BACKEND", "auto")
    if backend == "auto":
        if x.device.type == "cpu":
            return "cpu" if unsupported_reason("cpu", x, rank, weight) is None else "torch"
        if x.device.type != "cuda":
            return "torch"
        for name in AUTO_PREFERENCE[shape_class(math.prod(x.shape[:-1]))]:
            if unsupported_reason(name, x, rank, weight) is None:
                return name
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of 'auto', {', '.join(map(repr, BACKEND_NAMES))}")
    reason = unsupported_reason(backend, x, rank, weight)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot serve this call: {reason}")
    return backend


# Successful resolutions of earlier calls (a request that cannot be served is not kept, so it raises on every call),
# keyed by everything resolve_backend reads: the request, LORA_ROUTE_BACKEND, TRITON_INTERPRET for CPU tensors (the
# only ones whose Triton support it decides), x's device and dtype, the rank, the weight's dtype and device (None
# without weight) and the shape class of the call.
_RESOLVED: dict[tuple, str] = {}
RESOLVED_MAX_ENTRIES = 1024


def resolve_backend_cached(backend: str, x: Tensor, rank: int, weight: Tensor | None, num_rows: int) -> str:
    """:func:`resolve_backend` for a call on ``x`` (..., d_in) of ``num_rows`` rows, remembered per kind of call: the
    layers of a model that share one kind of call resolve it once. ``torch.compile`` evaluates the resolution while
    tracing and keeps its answer as a constant of the graph (nothing of the resolution is traced)."""
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    device = x.device
    interpret_variable = os.environ.get("TRITON_INTERPRET") if device.type == "cpu" else None
    return _resolve_kind(backend, os.environ.get("LORA_ROUTE_BACKEND"), interpret_variable, device, x.dtype, rank,
                         None if weight is None else weight.dtype, None if weight is None else weight.device,
                         shape_class(num_rows))


@torch.compiler.assume_constant_result
def _resolve_kind(backend, backend_variable, interpret_variable, device, dtype, rank, weight_dtype, weight_device,
                  call_class) -> str:
    """The backend for one kind of call (the arguments of :func:`resolve_backend_cached`'s key), from
    :data:`_RESOLVED` or resolved on empty tensors of that kind."""
    key = (backend, backend_variable, interpret_variable, device, dtype, rank, weight_dtype, weight_device, call_class)
    name = _RESOLVED.get(key)
    if name is None:
        rows = 1 if call_class == "decode" else DECODE_MAX_ROWS + 1
        x = torch.empty(rows, 0, dtype=dtype, device=device)
        weight = None if weight_dtype is None else torch.empty(0, 0, dtype=weight_dtype, device=weight_device)
        name = resolve_backend(backend, x, rank, weight)
        if len(_RESOLVED) >= RESOLVED_MAX_ENTRIES:
            _RESOLVED.clear()
        _RESOLVED[key] = name
    return name
