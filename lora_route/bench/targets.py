"""The project's speed targets, evaluated from a run's results: target vs measured vs met. Never asserted.

Layer targets are ratios to the base MLP on the Llama-3-8B shape (the first shape of the run when it lacks that
one), worst case over the index popularities, each popularity taking its fastest lora_route backend (what dispatch
by measurement picks). Training targets take the slower mixed-batch method (molora_static, crosslora; each on its
fastest backend) against the faster single-LoRA provider (PEFT or lora_route's ``lora`` method; see
:func:`lora_route.bench.report.add_training_ratios`); memory is peak allocated bytes on a GPU, saved
activation bytes elsewhere. A target counts as
``met`` only in a run under its conditions (a Hopper data-centre GPU — compute capability 9.0: H100, H200 —,
bfloat16, the Llama-3-8B shape); otherwise ``met`` is None and ``within_threshold`` still compares the numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

TARGET_SHAPE = "llama3_8b_mlp"
# Hopper data-centre GPUs (H100, H200): the compute capability that environment() records for a CUDA device.
TARGET_COMPUTE_CAPABILITY = "9.0"
TARGET_DEVICE = f"Hopper GPU (compute capability {TARGET_COMPUTE_CAPABILITY}: H100, H200)"
TARGET_DTYPE = "bfloat16"
FAST_BACKEND_PROVIDERS = ("lora_route_triton", "lora_route_triton_fused", "lora_route_cuda")
MIXED_METHODS = ("lora_route_molora_static", "lora_route_crosslora")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    threshold: float
    workload: str | None = None  # layer targets: the workload name; None for the training targets


TARGETS = (
    Target("forward_4096_vs_base", "MLP forward at 4096 tokens, time × base layer", 1.10, "forward_4096"),
    Target("forward_backward_4096_vs_base", "MLP forward+backward at 4096 tokens, time × base layer", 1.15,
           "forward_backward_4096"),
    Target("decode_64_vs_base", "MLP decode step of 64 sequences, time × base layer", 1.30, "decode_64"),
    Target("decode_256_vs_base", "MLP decode step of 256 sequences, time × base layer", 1.30, "decode_256"),
    Target("train_step_time_vs_single_lora", "training step with a mixed 30-direction batch, time × single-LoRA step",
           1.10),
    Target("train_step_memory_vs_single_lora",
           "training step with a mixed 30-direction batch, peak memory × single-LoRA step", 1.05),
)

# Issue 4 item 5, "for reference, measured on an H100 with peft 0.21": (provider, workload, ratio to base).
H100_REFERENCE = (
    ("peft_mixed", "forward_4096", 5.8, "PEFT mixed batch of 30 adapters, MLP forward at 4096 tokens"),
    ("peft_mixed", "decode_64", 110.0, "PEFT mixed batch of 30 adapters, MLP decode of 64 sequences"),
    ("naive_loop", "forward_backward_4096", 5.4, "per-direction training loop, MLP forward+backward at 4096 tokens"),
)


def _target_shape(layer_results: list[dict]) -> str | None:
    shapes = [r["shape"] for r in layer_results]
    if TARGET_SHAPE in shapes:
        return TARGET_SHAPE
    return shapes[0] if shapes else None


def _routed_rows(rows: list[dict]) -> list[dict]:
    """The fast-backend rows when any ran, else the other lora_route rows (the torch backend of a CPU run)."""
    ok = [r for r in rows if r["status"] == "ok" and r["provider"].startswith("lora_route_")]
    fast = [r for r in ok if r["provider"] in FAST_BACKEND_PROVIDERS]
    return fast or ok


def _layer_measure(target: Target, layer_results: list[dict], shape: str | None) -> tuple[float | None, dict]:
    rows = [r for r in layer_results if r["shape"] == shape and r["workload"] == target.workload]
    per_popularity = {}
    for popularity in sorted({r["popularity"] for r in rows}):
        candidates = _routed_rows([r for r in rows if r["popularity"] == popularity])
        candidates = [r for r in candidates if r["ratio_to_base"] is not None]
        if candidates:
            best = min(candidates, key=lambda r: r["ratio_to_base"])
            per_popularity[popularity] = {"provider": best["provider"], "ratio_to_base": best["ratio_to_base"]}
    measured = max((v["ratio_to_base"] for v in per_popularity.values()), default=None)
    return measured, {"shape": shape, "per_popularity": per_popularity}


def _train_measure(training_results: list[dict], ratio_key: str) -> tuple[float | None, dict]:
    """Worst mixed method's ratio to the single-LoRA step, each method on its best backend."""
    best: dict[str, dict] = {}
    for row in training_results:
        if row["status"] == "ok" and row["provider"] in MIXED_METHODS and row.get(ratio_key) is not None:
            if row["provider"] not in best or row[ratio_key] < best[row["provider"]][ratio_key]:
                best[row["provider"]] = row
    details = {"ratio": ratio_key,
               "memory_metric": next((r["memory_metric"] for r in training_results if "memory_metric" in r), None),
               "mixed": {p: {"backend": r["backend"], ratio_key: r[ratio_key]} for p, r in best.items()}}
    measured = max((r[ratio_key] for r in best.values()), default=None)
    return measured, details


def on_target_device(environment: dict) -> bool:
    """Whether a run's ``environment`` (:func:`lora_route.bench.report.environment`) is a target device: a CUDA device
    of compute capability :data:`TARGET_COMPUTE_CAPABILITY`."""
    if not isinstance(environment, dict):
        raise ValueError(f"environment must be a dict, got {type(environment).__name__}")
    return (environment.get("device_type") == "cuda"
            and environment.get("compute_capability") == TARGET_COMPUTE_CAPABILITY)


def evaluate_targets(layer_results: list[dict], training_results: list[dict], environment: dict,
                     dtype: str) -> list[dict]:
    """One entry per :data:`TARGETS`: threshold, measured (None when the run lacks the workload), met, details."""
    shape = _target_shape(layer_results)
    target_conditions = on_target_device(environment) and dtype == TARGET_DTYPE
    entries = []
    for target in TARGETS:
        if target.workload is not None:
            measured, details = _layer_measure(target, layer_results, shape)
            conditions = target_conditions and shape == TARGET_SHAPE
        else:
            key = "time_ratio_to_single_lora" if "time" in target.name else "memory_ratio_to_single_lora"
            measured, details = _train_measure(training_results, key)
            conditions = target_conditions
        within = None if measured is None else measured <= target.threshold
        entries.append({
            "name": target.name,
            "description": target.description,
            "target": f"<= {target.threshold}",
            "threshold": target.threshold,
            "measured": measured,
            "within_threshold": within,
            "conditions": f"{TARGET_DEVICE}, {TARGET_DTYPE}" + (f", {TARGET_SHAPE}" if target.workload else ""),
            "conditions_match": conditions,
            "met": within if conditions else None,
            "details": details,
        })
    return entries


def h100_reference(layer_results: list[dict]) -> list[dict]:
    """H100 reference ratios of PEFT and the naive loop beside this run's figure (uniform popularity, target shape)."""
    shape = _target_shape(layer_results)
    out = []
    for provider, workload, reference, description in H100_REFERENCE:
        match = [r for r in layer_results if r["shape"] == shape and r["workload"] == workload
                 and r["provider"] == provider and r["popularity"] == "uniform" and r["status"] == "ok"]
        out.append({"description": description, "provider": provider, "workload": workload, "shape": shape,
                    "reference_ratio_to_base_h100": reference,
                    "measured_ratio_to_base": match[0]["ratio_to_base"] if match else None})
    return out
