"""End-to-end experiments on the embedded default: the demo (:mod:`.demo`).

A top layer beside :mod:`lora_route.analysis` and :mod:`lora_route.bench` (independent of both): it may import
training, evaluation and everything below them.
"""
