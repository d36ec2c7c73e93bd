"""The parallel-text record shared by every loader, hash splits and JSONL persistence."""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_route.common.files import atomic_path
from lora_route.common.languages import check_language, direction_key

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TranslationPair:
    """One sentence pair: ``src`` in ``src_lang`` translated as ``tgt`` in ``tgt_lang``; ``origin`` = where from."""

    src_lang: str
    tgt_lang: str
    src: str
    tgt: str
    origin: str = ""

    def __post_init__(self) -> None:
        check_language(self.src_lang, "src_lang")
        check_language(self.tgt_lang, "tgt_lang")
        if self.src_lang == self.tgt_lang:
            raise ValueError(f"src_lang and tgt_lang are both {self.src_lang!r}")
        for field in ("src", "tgt", "origin"):
            if not isinstance(getattr(self, field), str):
                raise TypeError(f"TranslationPair.{field} must be str, got {type(getattr(self, field)).__name__}")
        if not self.src.strip() or not self.tgt.strip():
            raise ValueError(f"empty source or target in a {self.src_lang}->{self.tgt_lang} pair from {self.origin!r}")

    @property
    def direction(self) -> tuple[str, str]:
        return self.src_lang, self.tgt_lang


def hash_split(key: str, dev_fraction: float, test_fraction: float, salt: str = "") -> str:
    """Deterministic split of a key (e.g. the English message): 'train', 'dev' or 'test'.

    The bucket comes from sha256(salt + key), so it is stable across runs, machines and Python versions.
    """
    if not (0.0 <= dev_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and dev_fraction + test_fraction < 1.0):
        raise ValueError(f"dev_fraction={dev_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum < 1")
    digest = hashlib.sha256((salt + "\x00" + key).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2.0**64
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + dev_fraction:
        return "dev"
    return "train"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def group_by_direction(pairs: Iterable[TranslationPair]) -> dict[tuple[str, str], list[TranslationPair]]:
    """Pairs grouped by (src_lang, tgt_lang), keeping their order inside each group."""
    groups: dict[tuple[str, str], list[TranslationPair]] = defaultdict(list)
    for pair in pairs:
        groups[pair.direction].append(pair)
    return dict(groups)


def direction_counts(pairs: Iterable[TranslationPair]) -> dict[str, int]:
    """``{"de-en": n, ...}`` sorted by direction name."""
    return {direction_key(s, t): len(v) for (s, t), v in sorted(group_by_direction(pairs).items())}


def write_pairs_jsonl(pairs: Iterable[TranslationPair], path: str | os.PathLike) -> Path:
    """Write pairs as JSON lines (fields src_lang, tgt_lang, src, tgt, origin), atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")
    return Path(path)
