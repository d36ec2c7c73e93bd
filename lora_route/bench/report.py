"""The run's record: environment (device, versions), ratios between providers, atomic JSON writing."""
from __future__ import annotations

import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from lora_route import __version__, backends
from lora_route.kernels.plan import SHAPE_CLASSES, shape_class

# 2: host_overhead section, graph_* fields of decode rows, time budget in settings.
SCHEMA_VERSION = 2
RATIO_REFERENCES = ("base", "peft_single", "peft_mixed")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """Device name and type, library versions, backends of this install, CPU threads, git commit."""
    device = torch.device(device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        name = properties.name
        detail = {"total_memory_bytes": properties.total_memory,
                  "compute_capability": f"{properties.major}.{properties.minor}"}
    else:
        name, detail = _cpu_name(), {"logical_cpus": os.cpu_count()}
    return {
        "device_type": device.type,
        "device_name": name,
        **detail,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_runtime_available": torch.cuda.is_available(),
        "triton": _version("triton"),
        "peft": _version("peft"),
        "transformers": _version("transformers"),
        "lora_route": __version__,
        "lora_route_backends": backends(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "git_commit": _git_commit(),
    }


def add_ratios(layer_results: list[dict]) -> None:
    """Set ``ratio_to_<ref>`` = median / the median of provider ``ref`` on the same shape, workload and popularity
    (None where either did not run), for every ref in :data:`RATIO_REFERENCES`, and ``graph_ratio_to_base`` = the
    graph replay's median / the base layer's replay median. In place."""
    medians = {(r["shape"], r["workload"], r["popularity"], r["provider"]): r["median_ms"]
               for r in layer_results if r["status"] == "ok"}
    graph_medians = {(r["shape"], r["workload"], r["popularity"]): r["graph_median_ms"]
                     for r in layer_results if r["provider"] == "base" and r.get("graph_status") == "ok"}
    for row in layer_results:
        for reference in RATIO_REFERENCES:
            ref = medians.get((row["shape"], row["workload"], row["popularity"], reference))
            ok = row["status"] == "ok" and ref is not None and ref > 0
            row[f"ratio_to_{reference}"] = row["median_ms"] / ref if ok else None
        base_graph = graph_medians.get((row["shape"], row["workload"], row["popularity"]))
        ok = row.get("graph_status") == "ok" and base_graph is not None and base_graph > 0
        row["graph_ratio_to_base"] = row["graph_median_ms"] / base_graph if ok else None


def add_training_ratios(training_results: list[dict]) -> None:
    """Set ``time_ratio_to_single_lora`` / ``memory_ratio_to_single_lora`` against the fastest / leanest
    single-LoRA provider (``peft_single`` or ``lora_route_lora``), per memory metric available. In place."""
    single = [r for r in training_results if r["status"] == "ok" and r["provider"] in ("peft_single", "lora_route_lora")]
    best_time = min((r["step_median_ms"] for r in single), default=None)
    memory_key = "peak_allocated_bytes" if any("peak_allocated_bytes" in r for r in single) else "saved_activation_bytes"
    best_memory = min((r[memory_key] for r in single if r.get(memory_key) is not None), default=None)
    for row in training_results:
        ok = row["status"] == "ok"
        row["time_ratio_to_single_lora"] = row["step_median_ms"] / best_time if ok and best_time else None
        value = row.get(memory_key) if ok else None
        row["memory_metric"] = memory_key
        row["memory_ratio_to_single_lora"] = value / best_memory if value is not None and best_memory else None


def fastest_backends(layer_results: list[dict]) -> list[dict]:
    """Per shape, workload and popularity: the fastest lora_route backend that ran and every backend's median —
    the measurement behind ``backend="auto"``, labelled with the shape class that the dispatcher gives a call of
    that many rows (:func:`lora_route.kernels.plan.shape_class`)."""
    groups: dict[tuple, dict[str, float]] = {}
    for row in layer_results:
        if row["status"] == "ok" and row["provider"].startswith("lora_route_"):
            key = (row["shape"], row["workload"], row["kind"], row["tokens"], row["popularity"])
            groups.setdefault(key, {})[row["provider"].removeprefix("lora_route_")] = row["median_ms"]
    return [{"shape": shape, "workload": workload, "popularity": popularity, "rows": tokens,
             "shape_class": shape_class(tokens), "fastest": min(medians, key=medians.get), "median_ms": medians}
            for (shape, workload, kind, tokens, popularity), medians in groups.items()]


def auto_preference(fastest: list[dict]) -> dict[str, dict]:
    """Per shape class: the backends ordered by the geometric mean, over that class's rows of
    :func:`fastest_backends` where they ran, of their median over the row's fastest median (1.0 = always fastest).
    ``order`` without ``torch`` is what ``lora_route.kernels.dispatch.AUTO_PREFERENCE`` takes for that class."""
    preference = {}
    for name in SHAPE_CLASSES:
        slowdowns: dict[str, list[float]] = {}
        for row in fastest:
            if row["shape_class"] == name:
                best = min(row["median_ms"].values())
                for backend, median in row["median_ms"].items():
                    slowdowns.setdefault(backend, []).append(median / best)
        geomean = {backend: math.exp(sum(map(math.log, values)) / len(values))
                   for backend, values in slowdowns.items()}
        preference[name] = {"order": sorted(geomean, key=geomean.get), "geomean_slowdown": geomean,
                            "rows_measured": {backend: len(values) for backend, values in slowdowns.items()}}
    return preference
