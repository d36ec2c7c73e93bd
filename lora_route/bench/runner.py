"""One benchmark run: the host time per routed call, every layer provider on every shape × workload (decode also
replayed from a CUDA graph), then the end-to-end training step, then the targets; the result is one JSON-safe dict
(:func:`run_benchmark`) written with its plot and text summary by :func:`write_results`."""
from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from lora_route.bench import graphs
from lora_route.bench.budget import TimeBudget
from lora_route.bench.config import DTYPES, LAYER_PROVIDERS, TRAIN_PROVIDERS, BenchPreset
from lora_route.bench.errors import ProviderUnavailable, failure_fields
from lora_route.bench.host_overhead import measure_host_overhead
from lora_route.bench.layer_bench import AGREEMENT_TOLERANCE, LayerBench, time_plan_build
from lora_route.bench.plot import write_plot_atomic
from lora_route.bench.report import (
    SCHEMA_VERSION,
    add_ratios,
    add_training_ratios,
    auto_preference,
    environment,
    fastest_backends,
)
from lora_route.bench.summary import format_summary
from lora_route.bench.targets import evaluate_targets, h100_reference
from lora_route.bench.timing import Timer
from lora_route.bench.training_bench import (
    DIRECTIONS,
    build_small_llama,
    make_batch,
    run_training_provider,
    training_providers,
)
from lora_route.bench.workloads import row_adapters, sequence_adapters
from lora_route.common.files import write_json, write_text_atomic
from lora_route.kernels.dispatch import resolve_backend

FAST_BACKENDS = ("triton", "triton_fused", "cuda")


def _log_to_stderr(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fast_backends(device: torch.device, dtype: torch.dtype) -> dict[str, str | None]:
    """For each fast backend: None when it serves ``dtype`` tensors on ``device``, else the reason it cannot."""
    sample = torch.zeros(1, 8, device=device, dtype=dtype)
    reasons = {}
    for name in FAST_BACKENDS:
        try:
            resolve_backend(name, sample, weight=torch.zeros(8, 8, device=device, dtype=dtype))
            reasons[name] = None
        except ValueError as error:
            reasons[name] = str(error)
    return reasons


def _check_choice(kind: str, requested: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise ValueError(f"unknown {kind} provider(s) {unknown}; choose from {list(known)}")
    return tuple(requested)


def _measure_layer_provider(bench, provider, workload, x, dy, sequence_ids, timer, dtype, budget: TimeBudget) -> dict:
    """The result fields of one provider on one workload: ``ok`` with timing and error, ``skipped`` with the reason
    the provider gave (or the spent budget), or ``error`` with the exception that stopped it; then the graph fields
    (:func:`_measure_graph`)."""
    empty = {"timing": None, "median_ms": None, "max_rel_error": None, "agrees_with_reference": None}
    not_run = graphs.skipped("the eager call did not run")
    if budget.spent():
        return {"provider": provider, "status": "skipped", "reason": budget.skip_reason, **empty, **not_run}
    try:
        call = bench.prepare(provider, workload, x, dy, sequence_ids)
        timing = timer.measure(call.run, call.grad_to_none)
        error = bench.relative_error(call.forward(), x, call.rows)
    except ProviderUnavailable as reason:
        return {"provider": provider, "status": "skipped", "reason": str(reason), **empty, **not_run}
    except Exception as failure:  # noqa: BLE001 - recorded in the result, see failure_fields
        return {"provider": provider, **failure_fields(failure, bench.device), **empty, **not_run}
    return {"provider": provider, "status": "ok", "reason": None, "timing": timing.to_dict(),
            "median_ms": timing.median_ms, "max_rel_error": error,
            "agrees_with_reference": error <= AGREEMENT_TOLERANCE[dtype],
            **_measure_graph(bench, provider, workload, call, x, timer, budget)}


def _measure_graph(bench, provider, workload, call, x, timer, budget: TimeBudget) -> dict:
    """The graph fields of a provider's row (:mod:`lora_route.bench.graphs`): its decode call replayed from a CUDA
    graph, or why not; a capture that fails is recorded as ``error``."""
    reason = (graphs.not_captured_reason(provider, workload.kind, bench.device) or bench.synchronising_reason(provider)
              or (budget.skip_reason if budget.spent() else None))
    if reason is not None:
        return graphs.skipped(reason)
    try:
        return graphs.measure_replay(call.run, timer, lambda output: bench.relative_error(output, x, call.rows))
    except Exception as failure:  # noqa: BLE001 - recorded in the result, see failure_fields
        fields = failure_fields(failure, bench.device)
        return {"graph_status": "error", "graph_reason": fields["reason"], "graph_median_ms": None,
                "graph_max_rel_error": None}


def _logged(row: dict) -> str:
    """``provider=0.123 ms`` (with ``graph 0.045`` when replayed from a graph), or ``provider=<status>``."""
    if row["status"] != "ok":
        return f"{row['provider']}={row['status']}"
    graph = f" (graph {row['graph_median_ms']:.3f})" if row["graph_status"] == "ok" else ""
    return f"{row['provider']}={row['median_ms']:.3f} ms{graph}"


def _layer_results(preset: BenchPreset, providers, device, dtype, timer, seed, budget, log) -> tuple[list, list]:
    results, plans = [], []
    workloads = preset.workloads()
    for shape_number, shape in enumerate(preset.shapes):
        bench = LayerBench(shape, device, dtype, seed)
        for number, workload in enumerate(workloads):
            sequence_ids = sequence_adapters(workload.popularity, workload.sequences, shape.num_adapters,
                                             seed + 1000 + number)
            x, dy = bench.inputs(workload, seed + 2000 + number)
            common = {
                "shape": shape.name, "hidden": shape.hidden, "ffn": shape.ffn, "rank": shape.rank,
                "num_adapters": shape.num_adapters, "workload": workload.name, "kind": workload.kind,
                "tokens": workload.tokens, "sequences": workload.sequences, "seq_len": workload.seq_len,
                "popularity": workload.popularity, "active_adapters": int(sequence_ids.unique().numel()),
            }
            if shape_number == 0:
                row_ids = row_adapters(sequence_ids, workload.seq_len).to(device)
                timing = None if budget.spent() else time_plan_build(timer, row_ids).to_dict()
                plans.append({key: common[key] for key in ("workload", "tokens", "popularity", "active_adapters")}
                             | {"timing": timing})
            for provider in providers:
                results.append(common | _measure_layer_provider(bench, provider, workload, x, dy, sequence_ids,
                                                                timer, dtype, budget))
            log(f"{shape.name} {workload.name} {workload.popularity}: "
                + ", ".join(_logged(row) for row in results[-len(providers):]))
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()
    add_ratios(results)
    return results, plans


def _training_results(preset: BenchPreset, providers, device, dtype, timer, seed, backends, budget,
                      log) -> list[dict]:
    spec = preset.train
    batch = make_batch(spec, device, seed)
    base_model = None  # built for the first provider that runs
    results = []
    for provider, backend in training_providers(providers, backends):
        common = {"provider": provider, "backend": backend, "tokens": batch.tokens, "sequences": spec.sequences,
                  "seq_len": spec.seq_len, "directions_in_batch": int(batch.direction_ids.unique().numel())}
        if budget.spent():
            results.append(common | {"status": "skipped", "reason": budget.skip_reason, "step_median_ms": None})
            continue
        if base_model is None:
            base_model = build_small_llama(spec, device, dtype, seed)
        try:
            fields = run_training_provider(provider, backend, base_model, batch, spec, timer, preset.train_rep_ms)
        except ProviderUnavailable as reason:
            results.append(common | {"status": "skipped", "reason": str(reason), "step_median_ms": None})
            log(f"train {provider}[{backend}]: skipped ({reason})")
            continue
        except Exception as failure:  # noqa: BLE001 - recorded in the result, see failure_fields
            results.append(common | failure_fields(failure, device) | {"step_median_ms": None})
            log(f"train {provider}[{backend}]: ERROR {results[-1]['reason']}")
            continue
        results.append(common | {"status": "ok", "reason": None, "step_median_ms": fields["timing"]["median_ms"]}
                       | fields)
        log(f"train {provider}[{backend}]: {fields['timing']['median_ms']:.2f} ms/step, "
            f"{fields['tokens_per_s']:.0f} tokens/s")
    add_training_ratios(results)
    return results


@contextmanager
def _torch_threads(count: int | None):
    """Run the block with ``torch.set_num_threads(count)`` (None: leave it), restoring the previous count."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_benchmark(preset: BenchPreset, *, device: str | torch.device, layer_providers=LAYER_PROVIDERS,
                  train_providers=TRAIN_PROVIDERS, run_layers: bool = True, run_training: bool = True,
                  run_host_overhead: bool = True, seed: int = 0, cpu_threads: int | None = 1,
                  time_budget_s: float | None = None, log: Callable[[str], None] = _log_to_stderr) -> dict:
    """Run ``preset`` on ``device``; returns the JSON-safe result (see ``README`` section "Benchmarks").

    Each section runs when asked for and the preset has it (host overhead, layers, training step). Once
    ``time_budget_s`` seconds have passed, measurements not yet started are recorded as skipped, so the result is
    complete in form whatever the budget. On a CPU, ``TRITON_INTERPRET=1`` is set (unless already set) so the Triton
    backend runs in the interpreter, provided the Triton kernels were not imported earlier in this process without it;
    and torch runs on ``cpu_threads`` threads (default 1: on a shared machine several OpenMP threads turn a
    microsecond matmul into tens of milliseconds of barrier waits; None keeps torch's setting).
    """
    if cpu_threads is not None and cpu_threads < 1:
        raise ValueError(f"cpu_threads must be >= 1 or None, got {cpu_threads}")
    sections = (run_host_overhead and preset.host_overhead is not None, run_layers and bool(preset.shapes),
                run_training and preset.train is not None)
    if not any(sections):
        raise ValueError(f"nothing to run: preset {preset.name!r} has none of the sections asked for "
                         "(host overhead, layers, training)")
    budget = TimeBudget(time_budget_s)
    with _torch_threads(cpu_threads if torch.device(device).type == "cpu" else None):
        return _run(preset, torch.device(device), layer_providers, train_providers, sections, seed, budget, log)


def _run(preset, device, layer_providers, train_providers, sections, seed, budget, log) -> dict:
    with_host_overhead, with_layers, with_training = sections
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False (no GPU visible)")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device}")
    layer_providers = _check_choice("layer", tuple(layer_providers), LAYER_PROVIDERS)
    train_providers = _check_choice("training", tuple(train_providers), TRAIN_PROVIDERS)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dtype = DTYPES[preset.dtype]
    timer = Timer(device, reps=preset.reps, warmup=preset.warmup, rep_ms=preset.rep_ms, warmup_ms=preset.warmup_ms)
    env = environment(device)
    reasons = fast_backends(device, dtype)
    log(f"{env['device_name']} · {preset.name} · {preset.dtype} · fast backends: "
        + ", ".join(f"{k}={'yes' if v is None else 'no'}" for k, v in reasons.items()))

    started = time.time()
    # At least one warm-up repetition: a provider's first calls pay one-time costs (caches, allocations, compiles).
    host_overhead = (measure_host_overhead(preset.host_overhead, device, dtype, reps=preset.reps,
                                           warmup=max(preset.warmup, 1), seed=seed, budget=budget, log=log)
                     if with_host_overhead else None)
    layer, plans = (_layer_results(preset, layer_providers, device, dtype, timer, seed, budget, log)
                    if with_layers else ([], []))
    # The training step runs lora_route on the backends chosen among the layer providers that can run here.
    train_backends = [name for name in ("triton", "triton_fused", "cuda", "torch")
                      if f"lora_route_{name}" in layer_providers and reasons.get(name) is None]
    training = (_training_results(preset, train_providers, device, dtype, timer, seed, train_backends, budget, log)
                if with_training else [])
    gpu = device.type == "cuda"
    fastest = fastest_backends(layer)
    label = (f"lora_route benchmark on {env['device_name']} ({preset.dtype})" if gpu else
             f"CPU SMOKE RUN on {env['device_name']} (preset {preset.name}) — plumbing check; "
             "timings are NOT performance evidence")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "gpu" if gpu else "cpu_smoke",
        "performance_evidence": gpu,
        "label": label,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - started, 1),
        "environment": env,
        "settings": {
            "preset": preset.to_dict(),
            "dtype": preset.dtype,
            "seed": seed,
            "timer": timer.method,
            "time_budget_s": budget.seconds,
            "time_budget_spent": budget.spent(),
            "layer_providers": list(layer_providers),
            "train_providers": list(train_providers),
            "train_backends": train_backends,
            "fast_backend_unavailable_reasons": {k: v for k, v in reasons.items() if v is not None},
            "notes": [
                "Layer benchmark: one gated MLP block (gate/up/down, a rank-r LoRA on each, alpha = 2r); inputs "
                "(sequences, seq_len, hidden), every sequence on one adapter drawn by the popularity.",
                "The route plan (lora_route) and row groups (naive_loop) are built once per step outside the timed "
                "call, as in a model where every layer shares them; plan_results times plan_routes alone.",
                "PEFT layer providers keep adapters in the base dtype (autocast_adapter_dtype=False); the training "
                "step uses PEFT's training default (float32 adapters). lora_route and naive_loop train float32 "
                "adapter weights cast to the compute dtype in forward.",
                "max_rel_error = max|out - ref| / max|ref| against the float32 torch backend of lora_route.",
                "Decode rows on CUDA: graph_median_ms times graph.replay() of the call captured in a CUDA graph "
                "(same timer); graph_ratio_to_base compares it with the base layer's replay.",
                "Training memory: peak_allocated_bytes = torch.cuda.max_memory_allocated over one step (GPU only); "
                "saved_activation_bytes = distinct storages saved for backward in one forward, parameters "
                "excluded (every device).",
            ],
        },
        "host_overhead": host_overhead,
        "layer_results": layer,
        "plan_results": plans,
        "training_model": ({"architecture": "LlamaForCausalLM (random weights, SDPA attention)",
                            **asdict(preset.train), "directions": len(DIRECTIONS)} if with_training else None),
        "training_results": training,
        "fastest_backends": fastest,
        "auto_preference": auto_preference(fastest),
        "targets": evaluate_targets(layer, training, env, preset.dtype),
        "h100_reference": h100_reference(layer),
    }


def default_stem(result: dict) -> str:
    """``cpu_smoke`` for a CPU run of the ``cpu-smoke`` preset, ``cpu_<preset>`` for other CPU runs, else
    ``<device-name-slug>_<dtype>`` (e.g. ``nvidia_h100_80gb_hbm3_bfloat16``)."""
    if result["kind"] == "cpu_smoke":
        preset = result["settings"]["preset"]["name"]
        return "cpu_smoke" if preset == "cpu-smoke" else "cpu_" + preset.replace("-", "_")
    slug = re.sub(r"[^a-z0-9]+", "_", result["environment"]["device_name"].lower()).strip("_")
    return f"{slug}_{result['settings']['dtype']}"


def write_results(result: dict, out_dir: str | os.PathLike, stem: str | None = None) -> tuple[Path, Path, Path]:
    """Write ``<stem>.json``, ``<stem>.png`` and the text summary ``<stem>.txt`` into ``out_dir`` (each atomically);
    returns the three paths."""
    stem = stem or default_stem(result)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem):
        raise ValueError(f"output stem {stem!r} may hold only letters, digits, '_', '.', '-'")
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / f"{stem}.json", result)
    png_path = write_plot_atomic(result, out_dir / f"{stem}.png")
    text_path = write_text_atomic(out_dir / f"{stem}.txt", format_summary(result) + "\n")
    return json_path, png_path, text_path
