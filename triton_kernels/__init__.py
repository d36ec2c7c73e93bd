"""Triton kernels of lora_route (installed as ``lora_route.triton_kernels``; they import nothing of lora_route).

``routed_forward`` / ``routed_backward`` (:mod:`.routed_lora`: shrink, expand and bank-gradient kernels) and
``fused_linear_forward`` / ``fused_linear_backward`` (:mod:`.fused_linear`: the base GEMM with the delta in its
epilogue) serve ``lora_route.kernels.triton_backend``; ``available`` and ``unsupported_reason`` tell the dispatcher
when they can. On CPU the kernels run only under ``TRITON_INTERPRET=1``
(set before triton is imported; meant for tests).
"""
from __future__ import annotations

import torch

try:
    from .fused_linear import fused_linear_backward, fused_linear_forward, fused_unsupported_reason
    from .routed_lora import INTERPRETED_KERNELS, MAX_RANK, interpreting, routed_backward, routed_forward
except ImportError:  # triton is not installed
    MAX_RANK = 0
    INTERPRETED_KERNELS = False
    interpreting = routed_forward = routed_backward = None
    fused_linear_forward = fused_linear_backward = fused_unsupported_reason = None

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["available", "unsupported_reason", "routed_forward", "routed_backward", "fused_linear_forward",
           "fused_linear_backward", "fused_unsupported_reason", "MAX_RANK"]


def available() -> bool:
    """True when triton is importable and a CUDA device is present (or ``TRITON_INTERPRET=1``)."""
    return routed_forward is not None and (torch.cuda.is_available() or interpreting())


def unsupported_reason(x: torch.Tensor, rank: int | None = None) -> str | None:
    """Why the Triton kernels cannot serve a call on ``x`` (with adapters of rank ``rank``); None when they can."""
    if routed_forward is None:
        return "triton is not installed"
    if x.dtype not in KERNEL_DTYPES:
        return f"Triton kernels take fp32/fp16/bf16 inputs, got {x.dtype}"
    if rank is not None and rank > MAX_RANK:
        return f"Triton kernels take ranks up to {MAX_RANK}, got r={rank}"
    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu":
        if not interpreting():
            return "Triton kernels need a CUDA tensor (CPU only under TRITON_INTERPRET=1)"
        if not INTERPRETED_KERNELS:
            return ("the Triton kernels were imported before TRITON_INTERPRET=1 was set, so they cannot run on CPU "
                    "tensors in this process; set it before Python starts")
        return None
    return f"Triton kernels need a CUDA tensor, got a tensor on {x.device}"
