"""Helpers every layer shares: atomic file and folder writes, JSON / JSON-lines reading and writing
(:mod:`.files`), language codes, names, typology groups and ``src-tgt`` direction keys (:mod:`.languages`).

The bottom layer: it imports nothing from the rest of lora_route (nor torch).
"""
