"""What a benchmark records for a measurement that did not run: :class:`ProviderUnavailable` (a skip, with the reason
the provider gave) and :func:`failure_fields` (an error that stopped one provider; the run goes on)."""
from __future__ import annotations

import torch


class ProviderUnavailable(Exception):
    """A provider cannot run a workload on this install; the message is recorded as the skip reason."""


def failure_fields(error: BaseException, device: torch.device) -> dict:
    """``{"status": "error", "reason": "<Type>: <message>"}`` for one failed measurement (a GPU run is too scarce to
    lose to one provider); on CUDA the cached allocator is emptied so that the next measurement starts clean."""
    if not isinstance(error, BaseException):
        raise ValueError(f"error must be an exception, got {type(error).__name__}")
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return {"status": "error", "reason": f"{type(error).__name__}: {error}"}
