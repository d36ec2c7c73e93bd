"""Host time per routed call at decode sizes, per backend, beside ``F.linear`` on the same layer.

At decode sizes a routed layer's GPU work is tiny, so the host time per call (input validation, backend resolution,
the op's dispatch, each kernel launch) can cost more than the kernels. Each layer of :class:`HostOverheadSpec` is
called ``calls`` times per repetition with rows routed at random over the A and B experts, with a prebuilt plan (as
every layer of a model shares one) and without one (the op then checks the indices and plans per call).

Providers: ``f_linear`` (the base layer alone), ``torch_dense`` and ``torch_segments`` (the torch backend in each of
its formulations, whatever the bank sizes would pick), on a CPU ``cpu`` (the compiled CPU kernels, where built), and
on CUDA ``triton``, ``triton_fused`` and ``cuda``. On a CPU the Triton and CUDA backends are not measured: the Triton
kernels run there only in the interpreter, whose times mean nothing.

Times are µs per call, median over the repetitions. On a CPU every op is synchronous: ``host_us`` is the whole call.
On CUDA ``host_us`` is ``time.perf_counter`` around ``calls`` enqueued calls without synchronising (the host's share)
and ``wall_us`` adds the synchronisation that waits for the GPU to finish them.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_route.bench.budget import TimeBudget
from lora_route.bench.config import HostOverheadSpec, json_native
from lora_route.bench.errors import ProviderUnavailable, failure_fields
from lora_route.kernels.dispatch import resolve_backend
from lora_route.kernels.op import routed_linear
from lora_route.kernels.plan import plan_routes
from lora_route.kernels.torch_backend import forced_formulation

HOST_PROVIDERS = ("f_linear", "torch_dense", "torch_segments", "cpu", "triton", "triton_fused", "cuda")
CUDA_ONLY = ("triton", "triton_fused", "cuda")


def make_layer(spec: HostOverheadSpec, d_in: int, d_out: int, device: torch.device, dtype: torch.dtype,
               seed: int) -> dict[str, Tensor]:
    """Random ``x`` (rows, d_in), ``weight`` (d_out, d_in), banks ``A`` (num_a, r, d_in), ``B`` (num_b, d_out, r) and
    per-row expert indices ``a_idx``, ``b_idx`` (rows,) drawn uniformly (every row has an adapter)."""
    if min(d_in, d_out) < 1:
        raise ValueError(f"layer sizes must be >= 1, got d_in={d_in}, d_out={d_out}")
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, std):
        return (torch.randn(*size, generator=generator) * std).to(device=device, dtype=dtype)

    return {
        "x": randn(spec.rows, d_in, std=1.0),
        "weight": randn(d_out, d_in, std=d_in ** -0.5),
        "A": randn(spec.num_a, spec.rank, d_in, std=d_in ** -0.5),
        "B": randn(spec.num_b, d_out, spec.rank, std=0.1 * spec.rank ** -0.5),
        "a_idx": torch.randint(0, spec.num_a, (spec.rows,), generator=generator).to(device),
        "b_idx": torch.randint(0, spec.num_b, (spec.rows,), generator=generator).to(device),
    }


def provider_call(provider: str, layer: dict[str, Tensor], with_plan: bool) -> tuple[Callable[[], Tensor],
                                                                                     ContextManager]:
    """``(call, context)``: one call of ``provider`` on ``layer`` and the context to time it in (the torch backend's
    formulation); :class:`ProviderUnavailable` when the provider cannot run here."""
    if provider not in HOST_PROVIDERS:
        raise ValueError(f"unknown host-overhead provider {provider!r}; choose one of {HOST_PROVIDERS}")
    x, weight, A, B = layer["x"], layer["weight"], layer["A"], layer["B"]
    if provider == "f_linear":
        return (lambda: F.linear(x, weight)), nullcontext()
    if provider in CUDA_ONLY and x.device.type != "cuda":
        raise ProviderUnavailable("measured on CUDA only: on a CPU the Triton kernels run only in the interpreter and "
                                  "the cuda backend not at all")
    backend, context = provider, nullcontext()
    if provider.startswith("torch_"):
        backend, context = "torch", forced_formulation(provider.removeprefix("torch_"))
    try:
        resolve_backend(backend, x, A.shape[1], weight)
    except ValueError as error:
        raise ProviderUnavailable(str(error)) from error
    a_idx, b_idx = layer["a_idx"], layer["b_idx"]
    plan = plan_routes(a_idx, b_idx) if with_plan else None

    def call():
        return routed_linear(x, weight, None, A, B, a_idx, b_idx, scale=2.0, plan=plan, backend=backend)
    return call, context


def time_calls(call: Callable[[], object], calls: int, reps: int, warmup: int,
               device: torch.device) -> tuple[float, float | None]:
    """``(host_us, wall_us)``: µs per call, medians over ``reps`` repetitions of ``calls`` calls after ``warmup``
    repetitions; ``wall_us`` is None off CUDA (every op there is synchronous: the host time is the whole call)."""
    if calls < 1 or reps < 1 or warmup < 0:
        raise ValueError(f"need calls >= 1, reps >= 1, warmup >= 0; got {calls}, {reps}, {warmup}")
    cuda = torch.device(device).type == "cuda"
    host, wall = [], []
    for repetition in range(warmup + reps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            call()
        enqueued = time.perf_counter()
        if cuda:
            torch.cuda.synchronize(device)
        finished = time.perf_counter()
        if repetition >= warmup:
            host.append((enqueued - start) / calls * 1e6)
            wall.append((finished - start) / calls * 1e6)
    return statistics.median(host), (statistics.median(wall) if cuda else None)


def _measure(provider: str, layer: dict[str, Tensor], with_plan: bool | None, spec: HostOverheadSpec, reps: int,
             warmup: int, budget: TimeBudget) -> dict:
    """The result fields of one provider on one layer: ``ok`` with the times, or ``skipped`` / ``error`` with why."""
    empty = {"host_us": None, "wall_us": None}
    if budget.spent():
        return {"status": "skipped", "reason": budget.skip_reason, **empty}
    device = layer["x"].device
    try:
        call, context = provider_call(provider, layer, bool(with_plan))
        with torch.no_grad(), context:
            host_us, wall_us = time_calls(call, spec.calls, reps, warmup, device)
    except ProviderUnavailable as reason:
        return {"status": "skipped", "reason": str(reason), **empty}
    except Exception as failure:  # noqa: BLE001 - recorded in the result, see failure_fields
        return failure_fields(failure, device) | empty
    return {"status": "ok", "reason": None, "host_us": host_us, "wall_us": wall_us}


def measure_host_overhead(spec: HostOverheadSpec, device: torch.device, dtype: torch.dtype, *, reps: int, warmup: int,
                      seed: int, budget: TimeBudget, log: Callable[[str], None]) -> dict:
    """Every provider of :data:`HOST_PROVIDERS` on every layer of ``spec``, with and without a prebuilt plan
    (``f_linear`` once, ``plan`` None); ``ratio_to_f_linear`` = host_us / the layer's F.linear host_us."""
    if not isinstance(spec, HostOverheadSpec):
        raise ValueError(f"spec must be a HostOverheadSpec, got {type(spec).__name__}")
    rows = []
    for number, (d_in, d_out) in enumerate(spec.layers):
        layer = make_layer(spec, d_in, d_out, torch.device(device), dtype, seed + number)
        common = {"layer": f"{d_in}x{d_out}", "d_in": d_in, "d_out": d_out}
        layer_rows = []
        for provider in HOST_PROVIDERS:
            for with_plan in ((None,) if provider == "f_linear" else (True, False)):
                fields = _measure(provider, layer, with_plan, spec, reps, warmup, budget)
                layer_rows.append(common | {"provider": provider, "plan": with_plan} | fields)
        base = next(r["host_us"] for r in layer_rows if r["provider"] == "f_linear")
        for row in layer_rows:
            ok = row["status"] == "ok" and base is not None and base > 0
            row["ratio_to_f_linear"] = row["host_us"] / base if ok else None
        rows.extend(layer_rows)
        log(f"host overhead {common['layer']} (µs/call): " + ", ".join(
            f"{r['provider']}{'' if r['plan'] is None else ('[plan]' if r['plan'] else '[no plan]')}="
            + (f"{r['host_us']:.1f}" if r["status"] == "ok" else r["status"]) for r in layer_rows))
    cuda = torch.device(device).type == "cuda"
    method = ("time.perf_counter around calls enqueued without synchronising (host_us), then the synchronisation "
              "(wall_us)" if cuda else "time.perf_counter around synchronous calls (host_us; wall_us is None)")
    return {"spec": json_native(spec), "dtype": str(dtype).removeprefix("torch."), "repetitions": reps,
            "warmup_repetitions": warmup, "method": f"{method}; µs per call, median over repetitions",
            "results": rows}
