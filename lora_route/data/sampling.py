"""Which directions a stage trains on, how many pairs per direction, and replay of an earlier stage's data.

All sampling is seeded and stratified by direction, so a stage's data is a pure function of (corpus, config, seed).
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from lora_route.common.languages import check_language, direction_key, parse_direction
from lora_route.data.corpus import TranslationPair, group_by_direction

DIRECTION_SETS = ("en_centric", "x_to_en", "en_to_x", "non_english", "all")


def directions_for(spec: str | Sequence, languages: Sequence[str], pivot: str = "en") -> list[tuple[str, str]]:
    """Ordered (src, tgt) directions among ``languages`` for a named set or an explicit list.

    Named sets: ``en_centric`` (X->pivot and pivot->X), ``x_to_en``, ``en_to_x``, ``non_english`` (neither side is
    the pivot), ``all`` (every ordered pair). A list holds ``"de-en"`` strings or ``(src, tgt)`` pairs.
    """
    languages = [check_language(lang) for lang in languages]
    if len(set(languages)) != len(languages):
        raise ValueError(f"duplicate language in {languages}")
    every = [(s, t) for s in languages for t in languages if s != t]
    if isinstance(spec, str):
        if spec not in DIRECTION_SETS:
            raise ValueError(f"unknown direction set {spec!r}; expected one of {DIRECTION_SETS} or a list")
        if spec != "all" and spec != "non_english" and pivot not in languages:
            raise ValueError(f"direction set {spec!r} needs the pivot {pivot!r} among {languages}")
        chosen = {
            "en_centric": [d for d in every if pivot in d],
            "x_to_en": [d for d in every if d[1] == pivot],
            "en_to_x": [d for d in every if d[0] == pivot],
            "non_english": [d for d in every if pivot not in d],
            "all": every,
        }[spec]
    else:
        chosen = [parse_direction(d) for d in spec]
        for d in chosen:
            if d[0] not in languages or d[1] not in languages:
                raise ValueError(f"direction {d[0]}-{d[1]} uses a language outside {languages}")
    if not chosen:
        raise ValueError(f"direction set {spec!r} is empty for languages {languages}")
    return chosen


def sample_per_direction(pairs: Sequence[TranslationPair], directions: Sequence[tuple[str, str]],
                         cap: int | None, seed: int) -> list[TranslationPair]:
    """Pairs of ``directions`` with at most ``cap`` per direction (uniform without replacement, seeded).

    Directions with no pair raise ValueError (a silent gap would skew the mix). Output is grouped by direction.
    """
    if cap is not None and cap < 1:
        raise ValueError(f"cap per direction must be >= 1 or None, got {cap}")
    groups = group_by_direction(pairs)
    empty = [direction_key(s, t) for s, t in directions if not groups.get((s, t))]
    if empty:
        raise ValueError(f"no training pairs for directions {empty}")
    out = []
    for src, tgt in directions:
        group = groups[(src, tgt)]
        if cap is not None and len(group) > cap:
            rng = random.Random(f"{seed}:{src}-{tgt}")
            keep = sorted(rng.sample(range(len(group)), cap))
            group = [group[i] for i in keep]
        out.extend(group)
    return out


def replay_sample(previous: Sequence[TranslationPair], fraction: float, seed: int) -> list[TranslationPair]:
    """``fraction`` of an earlier stage's pairs, stratified by direction (at least one per direction when > 0)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"replay fraction must be in [0, 1], got {fraction}")
    if fraction == 0.0:
        return []
    out = []
    for (src, tgt), group in sorted(group_by_direction(previous).items()):
        count = max(1, round(fraction * len(group)))
        rng = random.Random(f"replay:{seed}:{src}-{tgt}")
        keep = sorted(rng.sample(range(len(group)), min(count, len(group))))
        out.extend(group[i] for i in keep)
    return out
