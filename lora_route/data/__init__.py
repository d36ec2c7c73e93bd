"""Data: prompt templates, parallel-corpus loaders, direction sampling and collation with loss masks.

Beside :mod:`lora_route.adapters` and :mod:`lora_route.models`, independent of both (data knows no adapters); it may
import only :mod:`lora_route.common`.
"""
from lora_route.data.collate import Batch, EncodedPair, collate, encode_pairs
from lora_route.data.corpus import TranslationPair, direction_counts, write_pairs_jsonl
from lora_route.data.gettext_corpus import load_gettext_corpus
from lora_route.data.loaders import load_flores_plus, load_local_pairs, load_opus100
from lora_route.data.prompts import DEFAULT_TEMPLATE, format_prompt
from lora_route.data.sampling import directions_for, replay_sample, sample_per_direction

__all__ = [
    "Batch", "DEFAULT_TEMPLATE", "EncodedPair", "TranslationPair", "collate", "direction_counts", "directions_for",
    "encode_pairs", "format_prompt", "load_flores_plus", "load_gettext_corpus", "load_local_pairs", "load_opus100",
    "replay_sample", "sample_per_direction", "write_pairs_jsonl",
]
