"""The evaluation layer: mixed-direction generation (:mod:`.generation`), language ID (:mod:`.langid`), scores per
direction — BLEU, chrF++, COMET-22, off-target rate (:mod:`.metrics`), decoded outputs (:mod:`.outputs`), test sets
(:mod:`.test_sets`), group averages and whole evaluations (:mod:`.evaluate`), report tables and heatmaps
(:mod:`.report`).

It may import :mod:`lora_route.adapters`, :mod:`lora_route.data`, :mod:`lora_route.models`, the kernels and common
layers; nothing of training, analysis, benchmarks, experiments or the command line.
"""
