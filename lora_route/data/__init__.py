"""Data: prompt templates, parallel-corpus loaders, direction sampling and collation with loss masks."""

from .collate import Batch, EncodedPair, collate, encode_pairs
from .corpus import TranslationPair, direction_counts, parse_direction, write_pairs_jsonl
from .gettext_corpus import load_gettext_corpus
from .loaders import load_flores_plus, load_local_pairs, load_opus100
from .prompts import DEFAULT_TEMPLATE, format_prompt
from .sampling import directions_for, replay_sample, sample_per_direction

__all__ = [
    "Batch", "DEFAULT_TEMPLATE", "EncodedPair", "TranslationPair", "collate", "direction_counts", "directions_for",
    "encode_pairs", "format_prompt", "load_flores_plus", "load_gettext_corpus", "load_local_pairs", "load_opus100",
    "parse_direction", "replay_sample", "sample_per_direction", "write_pairs_jsonl",
]
