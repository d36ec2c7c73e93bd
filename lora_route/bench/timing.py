"""Timing one callable: ``triton.testing.do_bench`` on a GPU (L2 flushed before every repetition), or
``time.perf_counter`` around each call on a CPU. Both report the median and the 20th / 80th percentiles in ms."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over ``repetitions`` timed calls."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    repetitions: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(times_ms: Sequence[float]) -> Timing:
    """Median and 20th / 80th percentiles (inclusive method) of a non-empty list of per-call times in ms."""
    if not times_ms:
        raise ValueError("no timed repetitions to summarise")
    values = sorted(float(t) for t in times_ms)
    if len(values) == 1:
        return Timing(values[0], values[0], values[0], 1)
    cuts = statistics.quantiles(values, n=10, method="inclusive")
    return Timing(statistics.median(values), cuts[1], cuts[7], len(values))


class Timer:
    """Measures callables on one device. ``method`` names how, for the report."""

    def __init__(self, device: torch.device, *, reps: int, warmup: int, rep_ms: int, warmup_ms: int):
        if reps < 1 or warmup < 0 or rep_ms < 1 or warmup_ms < 0:
            raise ValueError(f"invalid timer budget: reps={reps}, warmup={warmup}, rep_ms={rep_ms}, warmup_ms={warmup_ms}")
        self.device = torch.device(device)
        self.reps, self.warmup, self.rep_ms, self.warmup_ms = reps, warmup, rep_ms, warmup_ms

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return (f"triton.testing.do_bench(warmup={self.warmup_ms} ms, rep={self.rep_ms} ms): CUDA events, "
                    "L2 cache flushed before every repetition; median of the repetitions")
        return f"time.perf_counter around each call: {self.warmup} warm-up + {self.reps} timed calls; median"

    def measure(self, fn: Callable[[], object], grad_to_none: Sequence[Tensor] = (), *, rep_ms: int | None = None) -> Timing:
        """Time ``fn``; the ``.grad`` of every tensor in ``grad_to_none`` is reset to None before each call."""
        if self.device.type == "cuda":
            from triton.testing import do_bench

            times = do_bench(fn, warmup=self.warmup_ms, rep=rep_ms or self.rep_ms, grad_to_none=list(grad_to_none),
                             return_mode="all")
            return summarize(times)
        times = []
        for step in range(self.warmup + self.reps):
            for tensor in grad_to_none:
                tensor.grad = None
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if step >= self.warmup:
                times.append(elapsed * 1e3)
        return summarize(times)
