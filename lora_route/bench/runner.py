"""One benchmark run: every layer provider on every shape × workload, then the end-to-end training step, then the
targets; the result is one JSON-safe dict (:func:`run_benchmark`) written with its plot by :func:`write_results`."""
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

from lora_route.bench.config import DTYPES, LAYER_PROVIDERS, TRAIN_PROVIDERS, BenchPreset
from lora_route.bench.errors import ProviderUnavailable
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
from lora_route.common.files import write_json
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


def _failure(error: BaseException, device: torch.device) -> dict:
    """An ``error`` row: one provider failed; the run goes on (a GPU run is too scarce to lose to one provider)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"status": "error", "reason": f"{type(error).__name__}: {error}"}


def _measure_layer_provider(bench, provider, workload, x, dy, sequence_ids, timer, dtype) -> dict:
    """The result fields of one provider on one workload: ``ok`` with timing and error, ``skipped`` with the reason
    the provider gave, or ``error`` with the exception that stopped it."""
    empty = {"timing": None, "median_ms": None, "max_rel_error": None, "agrees_with_reference": None}
    try:
        call = bench.prepare(provider, workload, x, dy, sequence_ids)
        timing = timer.measure(call.run, call.grad_to_none)
        error = bench.relative_error(call.forward(), x, call.rows)
    except ProviderUnavailable as reason:
        return {"provider": provider, "status": "skipped", "reason": str(reason), **empty}
    except Exception as failure:  # noqa: BLE001 - recorded in the result, see _failure
        return {"provider": provider, **_failure(failure, bench.device), **empty}
    return {"provider": provider, "status": "ok", "reason": None, "timing": timing.to_dict(),
            "median_ms": timing.median_ms, "max_rel_error": error,
            "agrees_with_reference": error <= AGREEMENT_TOLERANCE[dtype]}


def _layer_results(preset: BenchPreset, providers, device, dtype, timer, seed, log) -> tuple[list, list]:
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
                plans.append({key: common[key] for key in ("workload", "tokens", "popularity", "active_adapters")}
                             | {"timing": time_plan_build(timer, row_ids).to_dict()})
            for provider in providers:
                results.append(common | _measure_layer_provider(bench, provider, workload, x, dy, sequence_ids,
                                                                timer, dtype))
            log(f"{shape.name} {workload.name} {workload.popularity}: "
                + ", ".join(f"{r['provider']}={r['median_ms']:.3f} ms" if r["status"] == "ok"
                            else f"{r['provider']}={r['status']}" for r in results[-len(providers):]))
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()
    add_ratios(results)
    return results, plans


def _training_results(preset: BenchPreset, providers, device, dtype, timer, seed, backends, log) -> list[dict]:
    spec = preset.train
    base_model = build_small_llama(spec, device, dtype, seed)
    batch = make_batch(spec, device, seed)
    results = []
    for provider, backend in training_providers(providers, backends):
        common = {"provider": provider, "backend": backend, "tokens": batch.tokens, "sequences": spec.sequences,
                  "seq_len": spec.seq_len, "directions_in_batch": int(batch.direction_ids.unique().numel())}
        try:
            fields = run_training_provider(provider, backend, base_model, batch, spec, timer, preset.train_rep_ms)
        except ProviderUnavailable as reason:
            results.append(common | {"status": "skipped", "reason": str(reason), "step_median_ms": None})
            log(f"train {provider}[{backend}]: skipped ({reason})")
            continue
        except Exception as failure:  # noqa: BLE001 - recorded in the result, see _failure
            results.append(common | _failure(failure, device) | {"step_median_ms": None})
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
                  train_providers=TRAIN_PROVIDERS, run_layers: bool = True, run_training: bool = True, seed: int = 0,
                  cpu_threads: int | None = 1, log: Callable[[str], None] = _log_to_stderr) -> dict:
    """Run ``preset`` on ``device``; returns the JSON-safe result (see ``README`` section "Benchmarks").

    On a CPU, ``TRITON_INTERPRET=1`` is set (unless already set) so the Triton backend runs in the interpreter,
    provided the Triton kernels were not imported earlier in this process without it; and torch runs on
    ``cpu_threads`` threads (default 1: on a shared machine several OpenMP threads turn a microsecond matmul into
    tens of milliseconds of barrier waits; None keeps torch's setting).
    """
    if cpu_threads is not None and cpu_threads < 1:
        raise ValueError(f"cpu_threads must be >= 1 or None, got {cpu_threads}")
    with _torch_threads(cpu_threads if torch.device(device).type == "cpu" else None):
        return _run(preset, torch.device(device), layer_providers, train_providers, run_layers, run_training, seed,
                    log)


def _run(preset, device, layer_providers, train_providers, run_layers, run_training, seed, log) -> dict:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device}")
    if not (run_layers or run_training):
        raise ValueError("nothing to run: both the layer and the training benchmark are disabled")
    if run_training and preset.train is None:
        raise ValueError(f"preset {preset.name!r} has no training model; disable the training benchmark")
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
    layer, plans = (_layer_results(preset, layer_providers, device, dtype, timer, seed, log)
                    if run_layers else ([], []))
    # The training step runs lora_route on the backends chosen among the layer providers that can run here.
    train_backends = [name for name in ("triton", "triton_fused", "cuda", "torch")
                      if f"lora_route_{name}" in layer_providers and reasons.get(name) is None]
    training = (_training_results(preset, train_providers, device, dtype, timer, seed, train_backends, log)
                if run_training else [])
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
                "Training memory: peak_allocated_bytes = torch.cuda.max_memory_allocated over one step (GPU only); "
                "saved_activation_bytes = distinct storages saved for backward in one forward, parameters "
                "excluded (every device).",
            ],
        },
        "layer_results": layer,
        "plan_results": plans,
        "training_model": ({"architecture": "LlamaForCausalLM (random weights, SDPA attention)",
                            **asdict(preset.train), "directions": len(DIRECTIONS)} if run_training else None),
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


def write_results(result: dict, out_dir: str | os.PathLike, stem: str | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.png`` into ``out_dir`` (each atomically); returns both paths."""
    stem = stem or default_stem(result)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem):
        raise ValueError(f"output stem {stem!r} may hold only letters, digits, '_', '.', '-'")
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / f"{stem}.json", result)
    png_path = write_plot_atomic(result, out_dir / f"{stem}.png")
    return json_path, png_path
