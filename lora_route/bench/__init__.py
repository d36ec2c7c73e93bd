"""Benchmarks of the routed LoRA operation against the base layer, PEFT and a naive per-direction loop.

:func:`run_benchmark` measures a :class:`BenchPreset` on one device and returns a JSON-safe dict;
:func:`write_results` writes it with its plot and one-screen text summary (:mod:`.summary`). ``lora-route bench``
(:mod:`lora_route.cli.bench`) and ``benchmarks/run_benchmarks.py`` are the command lines;
``benchmarks/gpu_check.sh`` runs the build, the cuda-marked tests and the benchmark on a lent GPU in one command.

A top layer beside :mod:`lora_route.analysis` and :mod:`lora_route.experiments` (independent of both): it may import
the adapters, kernels and common layers.
"""
from lora_route.bench.config import (
           LAYER_PROVIDERS,
           PRESETS,
           TRAIN_PROVIDERS,
           BenchPreset,
           MLPShape,
           TrainModelSpec,
           Workload,
)
from lora_route.bench.runner import run_benchmark, write_results

__all__ = ["BenchPreset", "LAYER_PROVIDERS", "MLPShape", "PRESETS", "TRAIN_PROVIDERS", "TrainModelSpec", "Workload",
           "run_benchmark", "write_results"]
