"""Decoded test examples: the ``TranslationOutput`` record and its JSON-lines file (``outputs.jsonl``)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lora_route.common.files import read_jsonl, write_jsonl


@dataclass(frozen=True)
class TranslationOutput:
    """One decoded test example: the reference ``ref`` and the system output ``hyp`` for ``src``."""
    src_lang: str
    tgt_lang: str
    src: str
    ref: str
    hyp: str


def _field(pair: Any, name: str) -> Any:
    value = pair.get(name) if isinstance(pair, Mapping) else getattr(pair, name, None)
    if not isinstance(value, str):
        raise ValueError(f"test pair {pair!r} has no string field {name!r}")
    return value


def pair_fields(pair: Any) -> tuple[str, str, str, str]:
    """(src_lang, tgt_lang, src, tgt) of a TranslationPair-like object or dict."""
    return tuple(_field(pair, n) for n in ("src_lang", "tgt_lang", "src", "tgt"))  # type: ignore[return-value]


def save_outputs(path: str | os.PathLike, outputs: Sequence[TranslationOutput]) -> Path:
    """JSONL with ``src_lang, tgt_lang, src, ref, hyp`` per line (atomic)."""
    return write_jsonl(path, (asdict(o) for o in outputs))


def load_outputs(path: str | os.PathLike) -> list[TranslationOutput]:
    """Read a file written by ``save_outputs``; a record missing a field raises ValueError naming it."""
    outputs = []
    for number, record in enumerate(read_jsonl(path), 1):
        missing = [k for k in ("src_lang", "tgt_lang", "src", "ref", "hyp") if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}: record {number} lacks string field(s) {missing}")
        outputs.append(TranslationOutput(**{k: record[k] for k in ("src_lang", "tgt_lang", "src", "ref", "hyp")}))
    return outputs
