"""Decoded test examples: the ``TranslationOutput`` record and its JSON-lines file (``outputs.jsonl``)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lora_route.common.files import read_jsonl, write_jsonl
from lora_route.common.languages import LANGUAGE_NAMES
from lora_route.eval.langid import normalize_language_code


@dataclass(frozen=True)
class TranslationOutput:
    """One decoded test example: the reference ``ref`` and the system output ``hyp`` for ``src``. Both languages must
    be ones lora_route knows (a code such as ``de``, ``zh_CN`` or ``deu_Latn``): an unknown target language would
    otherwise be scored as 100 % off-target."""
    src_lang: str
    tgt_lang: str
    src: str
    ref: str
    hyp: str

    def __post_init__(self) -> None:
        for name in ("src_lang", "tgt_lang", "src", "ref", "hyp"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        for name in ("src_lang", "tgt_lang"):
            code = getattr(self, name)
            if normalize_language_code(code) not in LANGUAGE_NAMES:
                raise ValueError(f"{name} {code!r} is not a language lora_route knows "
                                 f"(known: {', '.join(sorted(LANGUAGE_NAMES))})")


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
        try:
            outputs.append(TranslationOutput(**{k: record[k] for k in ("src_lang", "tgt_lang", "src", "ref", "hyp")}))
        except ValueError as err:
            raise ValueError(f"{path}: record {number}: {err}") from None
    if not outputs:
        raise ValueError(f"{path} holds no outputs")
    return outputs
