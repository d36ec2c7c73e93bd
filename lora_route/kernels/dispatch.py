"""Which backend serves a call: the registry of backends this install can run and the ``backend="auto"`` rule.

Backends (``"cuda"``: the compiled extension, ``"triton"``: the Triton kernels, ``"torch"``: the reference segment
loop) implement ``routed_forward`` / ``routed_backward`` over the same row plan. ``backend="auto"`` (or
``LORA_ROUTE_BACKEND``) takes, on CUDA tensors, the first backend of :data:`AUTO_PREFERENCE` for the call's shape
class that can serve it, then torch; an explicit backend that cannot serve a call raises ``ValueError`` saying why.
"""
from __future__ import annotations

import importlib
import math
import os
from types import ModuleType

from torch import Tensor

from lora_route.kernels import cuda_ext
from lora_route.kernels.plan import shape_class

# Installed from the top-level folder triton_kernels/ (outside this package's source tree), so loaded by its
# installed name; it imports nothing of lora_route, and without triton it reports itself unavailable.
triton_kernels = importlib.import_module("lora_route.triton_kernels")

BACKEND_NAMES = ("cuda", "triton", "torch")
# backend="auto" on CUDA tensors tries the fast backends in this order per shape class, then torch. Not measured yet
# (no GPU has run the benchmark): the order is to be set from a GPU run's ``auto_preference`` (benchmarks/).
AUTO_PREFERENCE = {"decode": ("triton", "cuda"), "prefill_or_training": ("triton", "cuda")}


def backend_module(name: str) -> ModuleType | None:
    """The module implementing backend ``name`` when this install can run it (None for torch or when it cannot)."""
    if name == "triton":
        return triton_kernels if triton_kernels.available() else None
    if name == "cuda":
        return cuda_ext if cuda_ext.available() else None
    return None


def backends() -> dict[str, bool]:
    """Which backends this install can run: ``{"cuda": bool, "triton": bool, "torch": True}``."""
    return {"cuda": backend_module("cuda") is not None, "triton": backend_module("triton") is not None, "torch": True}


def unsupported_reason(name: str, x: Tensor, rank: int | None) -> str | None:
    """Why backend ``name`` cannot serve a call on ``x`` with adapters of rank ``rank`` (None when it can)."""
    if name == "torch":
        return None
    module = backend_module(name)
    if module is None:
        return f"the {name} backend is not available in this install (lora_route.backends() = {backends()})"
    return module.unsupported_reason(x, rank)


def resolve_backend(backend: str, x: Tensor, rank: int | None = None) -> str:
    """Pick the backend for one call on ``x`` (..., d_in) with adapters of rank ``rank``.

    An explicit ``backend`` (or ``LORA_ROUTE_BACKEND`` when ``backend="auto"``) must be able to serve the call,
    else ``ValueError``. ``"auto"`` on CUDA tensors takes the first backend of ``AUTO_PREFERENCE`` for the call's
    :func:`~lora_route.kernels.plan.shape_class` that can serve it, else torch; on CPU tensors it takes torch
    (Triton runs on CPU only under ``TRITON_INTERPRET=1``, which is for tests).
    """
    if backend == "auto":
        backend = os.environ.get("LORA_ROUTE_BACKEND", "auto")
    if backend == "auto":
        if x.device.type != "cuda":
            return "torch"
        for name in AUTO_PREFERENCE[shape_class(math.prod(x.shape[:-1]))]:
            if unsupported_reason(name, x, rank) is None:
                return name
        return "torch"
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose one of 'auto', {', '.join(map(repr, BACKEND_NAMES))}")
    reason = unsupported_reason(backend, x, rank)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot serve this call: {reason}")
    return backend
