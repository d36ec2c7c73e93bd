"""Benchmarks of the routed LoRA operation against PEFT and a naive per-direction loop (issue 4 items 4-5).

:func:`run_benchmark` measures a :class:`BenchPreset` on one device and returns a JSON-safe dict;
:func:`write_results` writes it with its plot. ``lora-route bench`` (:mod:`lora_route.bench`) and
``benchmarks/run_benchmarks.py`` are the command lines.
"""
from .config import LAYER_PROVIDERS, PRESETS, TRAIN_PROVIDERS, BenchPreset, MLPShape, TrainModelSpec, Workload
from .runner import run_benchmark, write_results

__all__ = ["BenchPreset", "LAYER_PROVIDERS", "MLPShape", "PRESETS", "TRAIN_PROVIDERS", "TrainModelSpec", "Workload",
           "run_benchmark", "write_results"]
