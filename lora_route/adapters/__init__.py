"""The adapters layer: adapter methods as configurations over one layer type and one kernel.

Owns the method configs (:mod:`.config`), language → bank routing (:mod:`.routing`), the routed linear layer
(:mod:`.layer`), model patching and ``route()`` (:mod:`.patch`), checkpoints and the PEFT export (:mod:`.io`),
folding and merging weight updates (:mod:`.merging`, :mod:`.lowrank`), parameter counts (:mod:`.params`,
:mod:`.paper_table`) and the DAT language table (:mod:`.dat_languages`). It may import :mod:`lora_route.kernels` and
:mod:`lora_route.common`; it knows nothing of data, evaluation or training.
"""
