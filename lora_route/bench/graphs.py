"""Decode calls replayed from a CUDA graph: the same GPU work as the eager call without the host's share (validation,
dispatch, launches), which at decode sizes can cost more than the kernels.

A provider's decode call is warmed up on a side stream, captured once in a ``torch.cuda.CUDAGraph`` and the replay is
timed with the run's timer; the output the replay rewrites is checked like the eager one. A capture that fails is
recorded (``graph_status`` ``"error"`` with the reason), never fatal.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from lora_route.bench.timing import Timer

# Providers whose decode call needs no host synchronisation and no host-to-device copy, so a graph can record it.
# peft_mixed is left out: PEFT's mixed batch turns its Python list of adapter names into row indices on every call.
GRAPH_PROVIDERS = ("base", "peft_single", "naive_loop", "lora_route_triton", "lora_route_triton_fused",
                   "lora_route_cuda", "lora_route_torch")
WARMUP_CALLS = 3
GRAPH_FIELDS = ("graph_status", "graph_reason", "graph_median_ms", "graph_max_rel_error")


def capture(call: Callable[[], Tensor], warmup_calls: int = WARMUP_CALLS) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """``(graph, output)``: ``call`` run ``warmup_calls`` times on a side stream (lazy initialisation, autotuning and
    caches happen outside the graph), then recorded; every ``graph.replay()`` rewrites ``output`` in place."""
    if warmup_calls < 1:
        raise ValueError(f"warmup_calls must be >= 1 (a first call must happen outside the graph), got {warmup_calls}")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_calls):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = call()
    return graph, output


def not_captured_reason(provider: str, kind: str, device: torch.device) -> str | None:
    """Why a ``provider`` row of a ``kind`` workload on ``device`` gets no graph measurement; None when it gets one."""
    if kind != "decode":
        return "graph replay is measured for decode workloads only"
    if torch.device(device).type != "cuda":
        return f"CUDA graphs need a CUDA device; this run is on {torch.device(device).type}"
    if provider not in GRAPH_PROVIDERS:
        return f"{provider} is not captured: it copies host data to the device on every call"
    return None


def skipped(reason: str) -> dict:
    """The graph fields of a row that was not captured, with the reason."""
    if not reason:
        raise ValueError("a skipped graph measurement needs a reason")
    return {"graph_status": "skipped", "graph_reason": reason, "graph_median_ms": None, "graph_max_rel_error": None}


def measure_replay(call: Callable[[], Tensor], timer: Timer, relative_error: Callable[[Tensor], float]) -> dict:
    """Capture ``call`` (:func:`capture`), time ``graph.replay`` with ``timer`` and check one replay's output with
    ``relative_error``; the graph fields of an ``ok`` row (``graph_median_ms`` in ms)."""
    graph, output = capture(call)
    timing = timer.measure(graph.replay)
    graph.replay()
    return {"graph_status": "ok", "graph_reason": None, "graph_median_ms": timing.median_ms,
            "graph_max_rel_error": relative_error(output)}
