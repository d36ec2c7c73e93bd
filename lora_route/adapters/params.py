"""Trainable-parameter accounting: trainable / (frozen + trainable), what ``peft``'s ``print_trainable_parameters``
prints (the reading that reproduces the papers' tables, see :mod:`lora_route.adapters.paper_table`)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParameterCount:
    """trainable / total parameters (total = frozen + trainable, tied weights once); share_percent = 100·t/total."""

    trainable: int
    total: int
    share_percent: float

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count the parameters of ``model`` (works on meta-device models)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    trainable = total = 0
    for param in model.parameters():  # deduplicates shared (tied) parameters
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    if total == 0:
        raise ValueError("the model has no parameters")
    return ParameterCount(trainable, total, 100.0 * trainable / total)
