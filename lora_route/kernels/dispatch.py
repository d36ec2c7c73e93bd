"""Which backend serves a call: the registry of backends and the ``backend="auto"`` rule.

Backends (``"cuda"``: the compiled extension, ``"triton"``: the Triton shrink / expand kernels after cuBLAS,
``"triton_fused"``: the base GEMM with the delta in its epilogue, ``"torch"``: plain PyTorch) implement the interface
of :mod:`lora_route.kernels.backend`. ``backend="auto"`` (or ``LORA_ROUTE_BACKEND``) takes, on CUDA tensors, the first
backend of :data:`AUTO_PREFERENCE` for the call's shape class that can serve it, then torch; an explicit backend that
cannot serve a call raises ``ValueError`` saying why.
"""
from __future__ import annotations

import math
import os

from torch import Tensor

from lora_route.kernels import cuda_ext, torch_backend, triton_backend
from lora_route.kernels.backend import Backend
from lora_route.kernels.plan import shape_class

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (
    cuda_ext.BACKEND, triton_backend.TRITON, triton_backend.TRITON_FUSED, torch_backend.BACKEND)}
BACKEND_NAMES = tuple(BACKENDS)
# backend="auto" on CUDA tensors tries the fast backends in this order per shape class, then torch. Not measured yet
# (no GPU has run the benchmark): the order is to be set from a GPU run's ``auto_preference`` (benchmarks/), and
# triton_fused joins it only once a GPU run has measured it faster.
AUTO_PREFERENCE = {"decode": ("triton", "cuda"), "prefill_or_training": ("triton", "cuda")}


def get_backend(name: str) -> Backend:
    return BACKENDS[name]


def backends() -> dict[str, bool]:
    """Which backends this install can run: ``{"cuda": bool, "triton": bool, "triton_fused": bool, "torch": True}``."""
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
    :func:`~lora_route.kernels.plan.shape_class` that can serve it, else torch; on CPU tensors it takes torch (Triton
    runs on CPU only under ``TRITON_INTERPRET=1``, which is for tests).
    """
    if backend == "auto":
        backend = os.environ.get("LORA_ROUTE_BACKEND", "auto")
    if backend == "auto":
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
