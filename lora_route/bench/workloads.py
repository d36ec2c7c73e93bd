"""Adapter index popularity: which adapter each sequence of a benchmark batch uses.

- ``uniform``: balanced — every adapter gets the same share of sequences (as near as the count allows), in a
  shuffled order; with at least as many sequences as adapters all of them are present, as in a mixed training batch.
- ``zipf``: i.i.d. draws with ``P(k) ∝ 1 / (k + 1) ** 1.5`` (Punica's ``zipf:1.5``): a few popular directions.
- ``single``: every sequence uses adapter 0 (the single-LoRA case run through the routed path).
"""
from __future__ import annotations

import torch
from torch import Tensor

from lora_route.bench.config import POPULARITIES

ZIPF_EXPONENT = 1.5


def sequence_adapters(popularity: str, sequences: int, num_adapters: int, seed: int) -> Tensor:
    """(sequences,) int64 adapter id per sequence, on the CPU, reproducible from ``seed``."""
    if popularity not in POPULARITIES:
        raise ValueError(f"unknown popularity {popularity!r}; choose one of {POPULARITIES}")
    if sequences < 1 or num_adapters < 1:
        raise ValueError(f"need >= 1 sequence and >= 1 adapter, got {sequences} and {num_adapters}")
    generator = torch.Generator().manual_seed(seed)
    if popularity == "single":
        return torch.zeros(sequences, dtype=torch.int64)
    if popularity == "uniform":
        balanced = torch.arange(sequences, dtype=torch.int64) % num_adapters
        return balanced[torch.randperm(sequences, generator=generator)]
    weights = 1.0 / torch.arange(1, num_adapters + 1, dtype=torch.float64) ** ZIPF_EXPONENT
    return torch.multinomial(weights, sequences, replacement=True, generator=generator)


def row_adapters(per_sequence: Tensor, seq_len: int) -> Tensor:
    """(sequences * seq_len,) adapter id per row: each sequence's id repeated over its tokens (row-major)."""
    if per_sequence.dim() != 1:
        raise ValueError(f"per_sequence must be 1-D, got shape {tuple(per_sequence.shape)}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return per_sequence.repeat_interleave(seq_len)
