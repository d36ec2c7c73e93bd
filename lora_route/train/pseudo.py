"""Pivot pseudo-corpus (CrossLoRA stage 1.5): a stage-1 model translates X→En→Y for every non-English direction,
then rule-based filters remove bad pairs (language ID, length ratio, empty / copied / repeated outputs, duplicates).

Output is ``lora_route.data.corpus.TranslationPair`` records (JSONL with src_lang, tgt_lang, src, tgt, origin),
the format training reads, plus a JSON report of how many pairs each filter removed.
"""
from __future__ import annotations

import os
import random
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from lora_route.common.files import write_json, write_jsonl
from lora_route.common.languages import check_language
from lora_route.data.corpus import TranslationPair, write_pairs_jsonl
from lora_route.eval.evaluate import decode_pairs
from lora_route.eval.langid import EMPTY, NO_LANGUAGE, LanguageIdentifier, normalize_language_code
from lora_route.train.config import RecipeConfig
from lora_route.train.recipe import corpus_pairs, stage_train_pairs

# Filters in the order they are applied; a pair is counted under the first filter that removes it.
FILTERS = ("empty", "copy", "repetition", "length_ratio", "source_language", "pivot_language", "target_language",
           "duplicate")
CHARACTER_LENGTH_LANGUAGES = frozenset({"zh", "ja", "ko", "th", "lo", "km", "my", "bo"})


@dataclass(frozen=True)
class PseudoCandidate:
    """A generated pair before filtering: ``src`` (original, ``src_lang``) → ``pivot`` (English) → ``tgt``."""
    src_lang: str
    tgt_lang: str
    src: str
    pivot: str
    tgt: str
    origin: str = ""


@dataclass
class FilterReport:
    """How many candidates each filter removed (first matching filter only), and how many were kept."""
    total: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: {name: 0 for name in FILTERS})
    kept_per_direction: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        lines = ["| filter | removed |", "|---|---|"]
        lines += [f"| {name} | {count} |" for name, count in self.removed.items()]
        lines.append(f"| **kept** | {self.kept} of {self.total} |")
        return "\n".join(lines)


def length_unit(lang: str) -> str:
    """'char' for languages written without spaces between words (zh, ja, ...), else 'word'."""
    return "char" if normalize_language_code(lang) in CHARACTER_LENGTH_LANGUAGES else "word"


def text_length(text: str, lang: str) -> int:
    """Length in words, or in non-space characters for zh/ja-like languages."""
    if length_unit(lang) == "char":
        return sum(not ch.isspace() for ch in text)
    return len(text.split())


def length_ratio(src: str, src_lang: str, tgt: str, tgt_lang: str) -> float:
    """max/min of the two lengths (OpusFilter's LengthRatioFilter); infinite when one side is empty."""
    a, b = text_length(src, src_lang), text_length(tgt, tgt_lang)
    if min(a, b) == 0:
        return float("inf")
    return max(a, b) / min(a, b)


def _normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def has_repetition(text: str, min_chars: int = 3, times: int = 3) -> bool:
    """True when a substring of at least ``min_chars`` characters occurs ``times`` times in a row (decoding loops,
    OpusFilter's RepetitionFilter)."""
    if min_chars < 1 or times < 2:
        raise ValueError("min_chars must be >= 1 and times >= 2")
    pattern = re.compile(r"(\S.{%d,}?)(?:\s*\1){%d,}" % (min_chars - 1, times - 1), re.DOTALL)
    return pattern.search(text) is not None


def filter_candidates(candidates: Iterable[PseudoCandidate], identifier: LanguageIdentifier | None, *,
                      max_length_ratio: float = 3.0, repetition_min_chars: int = 3, repetition_times: int = 3,
                      pivot_lang: str = "en", origin: str = "pseudo-pivot"
                      ) -> tuple[list[TranslationPair], FilterReport]:
    """Apply ``FILTERS`` in order; return the kept pairs as TranslationPair (origin = ``origin:<source origin>``)
    and the per-filter removal report. ``identifier=None`` skips the three language-ID filters."""
    if max_length_ratio < 1:
        raise ValueError(f"max_length_ratio must be >= 1, got {max_length_ratio}")
    report = FilterReport()
    kept: list[TranslationPair] = []
    seen: set[tuple[str, str, str, str]] = set()
    for cand in candidates:
        if not isinstance(cand, PseudoCandidate):
            raise TypeError(f"expected PseudoCandidate, got {type(cand).__name__}")
        check_language(cand.src_lang, "src_lang")
        check_language(cand.tgt_lang, "tgt_lang")
        report.total += 1
        reason = _first_failing_filter(cand, identifier, max_length_ratio, repetition_min_chars, repetition_times,
                                       pivot_lang, seen)
        if reason is not None:
            report.removed[reason] += 1
            continue
        src, tgt = cand.src.strip(), cand.tgt.strip()
        kept.append(TranslationPair(cand.src_lang, cand.tgt_lang, src, tgt,
                                    f"{origin}:{cand.origin}" if cand.origin else origin))
        key = f"{cand.src_lang}-{cand.tgt_lang}"
        report.kept_per_direction[key] = report.kept_per_direction.get(key, 0) + 1
    report.kept = len(kept)
    return kept, report


def _first_failing_filter(cand: PseudoCandidate, identifier: LanguageIdentifier | None, max_ratio: float,
                          rep_chars: int, rep_times: int, pivot_lang: str, seen: set) -> str | None:
    src, tgt = cand.src.strip(), cand.tgt.strip()
    if not src or not tgt:
        return "empty"
    norm_tgt = _normalized(tgt)
    if norm_tgt == _normalized(src) or (cand.tgt_lang != pivot_lang and norm_tgt == _normalized(cand.pivot)):
        return "copy"
    if has_repetition(tgt, rep_chars, rep_times):
        return "repetition"
    if length_ratio(src, cand.src_lang, tgt, cand.tgt_lang) > max_ratio:
        return "length_ratio"
    if identifier is not None:
        for name, text, lang in (("source_language", src, cand.src_lang), ("pivot_language", cand.pivot, pivot_lang),
                                 ("target_language", tgt, cand.tgt_lang)):
            label = identifier.identify_one(text)
            if label != NO_LANGUAGE and (label == EMPTY or label != normalize_language_code(lang)):
                return name
    key = (cand.src_lang, cand.tgt_lang, _normalized(src), norm_tgt)
    if key in seen:
        return "duplicate"
    seen.add(key)
    return None


def pivot_sources(pairs: Iterable[TranslationPair], pivot_lang: str = "en") -> list[tuple[str, str, str]]:
    """Non-pivot sides of English-centric pairs as (lang, text, origin), deduplicated, in first-seen order."""
    sources: dict[tuple[str, str], str] = {}
    for pair in pairs:
        if pivot_lang not in pair.direction:
            raise ValueError(f"pivot_sources takes {pivot_lang}-centric pairs, got {pair.src_lang}-{pair.tgt_lang}")
        lang, text = (pair.tgt_lang, pair.tgt) if pair.src_lang == pivot_lang else (pair.src_lang, pair.src)
        sources.setdefault((lang, text), pair.origin)
    return [(lang, text, origin) for (lang, text), origin in sources.items()]


def generate_candidates(model, tokenizer, sources: Sequence[tuple[str, str, str]], languages: Sequence[str], *,
                        pivot_lang: str = "en", num_beams: int = 1, batch_size: int = 16, progress: bool = True,
                        translate_fn: Callable[..., list[str]] | None = None, **decode_kwargs) -> list[PseudoCandidate]:
    """Translate each (lang, text, origin) source into the pivot, then the pivot into every other non-pivot
    language in ``languages``; both steps decode all directions mixed in length-sorted batches."""
    languages = [check_language(lang) for lang in languages]
    if pivot_lang not in languages:
        raise ValueError(f"pivot language {pivot_lang!r} must be one of {languages}")
    for lang, text, _ in sources:
        if lang not in languages or lang == pivot_lang:
            raise ValueError(f"source language {lang!r} must be a non-pivot language of {languages}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty source text in language {lang!r}")
    to_pivot = [{"src_lang": lang, "tgt_lang": pivot_lang, "src": text, "tgt": ""} for lang, text, _ in sources]
    pivots = decode_pairs(model, tokenizer, to_pivot, num_beams=num_beams, batch_size=batch_size, progress=progress,
                          translate_fn=translate_fn, **decode_kwargs)
    jobs = [(i, tgt) for i, (lang, _, _) in enumerate(sources) for tgt in languages if tgt not in (lang, pivot_lang)]
    from_pivot = [{"src_lang": pivot_lang, "tgt_lang": tgt, "src": pivots[i], "tgt": ""} for i, tgt in jobs]
    decodable = [j for j, job in enumerate(from_pivot) if job["src"].strip()]
    outputs = [""] * len(from_pivot)
    for j, out in zip(decodable, decode_pairs(model, tokenizer, [from_pivot[j] for j in decodable],
                                              num_beams=num_beams, batch_size=batch_size, progress=progress,
                                              translate_fn=translate_fn, **decode_kwargs)):
        outputs[j] = out
    return [PseudoCandidate(sources[i][0], tgt, sources[i][1], pivots[i], outputs[j], sources[i][2])
            for j, (i, tgt) in enumerate(jobs)]


def build_pseudo_corpus(model, tokenizer, sources: Sequence[tuple[str, str, str]], languages: Sequence[str],
                        out_path: str | os.PathLike, *, identifier: LanguageIdentifier | None = None,
                        pivot_lang: str = "en", max_length_ratio: float = 3.0, **generate_kwargs
                        ) -> tuple[list[TranslationPair], FilterReport]:
    """Generate, filter and write the pseudo-corpus: ``out_path`` (JSONL of TranslationPair), the unfiltered
    candidates beside it (``<stem>.candidates.jsonl``) and the filter report (``<stem>.report.json``)."""
    out_path = Path(out_path)
    candidates = generate_candidates(model, tokenizer, sources, languages, pivot_lang=pivot_lang, **generate_kwargs)
    write_jsonl(out_path.with_name(out_path.stem + ".candidates.jsonl"), (asdict(c) for c in candidates))
    pairs, report = filter_candidates(candidates, identifier, max_length_ratio=max_length_ratio,
                                      pivot_lang=pivot_lang)
    write_pairs_jsonl(pairs, out_path)
    write_json(out_path.with_name(out_path.stem + ".report.json"), report.to_dict())
    return pairs, report


def sample_sources(sources: Sequence[tuple[str, str, str]], per_language: int | None, seed: int,
                   exclude: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """At most ``per_language`` sources per language (seeded, order kept), skipping texts in ``exclude``
    (e.g. the sentences stage 1 trained on, so the pseudo-corpus brings new data)."""
    if per_language is not None and per_language < 1:
        raise ValueError(f"per_language must be >= 1 or None, got {per_language}")
    skip = set(exclude)
    by_lang: dict[str, list[int]] = {}
    for i, (lang, text, _) in enumerate(sources):
        if text not in skip:
            by_lang.setdefault(lang, []).append(i)
    keep: list[int] = []
    for lang, indices in sorted(by_lang.items()):
        if per_language is not None and len(indices) > per_language:
            indices = sorted(random.Random(f"{seed}:{lang}").sample(indices, per_language))
        keep += indices
    return [sources[i] for i in sorted(keep)]


def recipe_pivot_sources(recipe: RecipeConfig, stage_name: str, languages: Sequence[str], pivot_lang: str,
                         per_language: int | None) -> list[tuple[str, str, str]]:
    """Sources for the pseudo-corpus of a trained recipe stage: the non-pivot sides of the recipe corpus's
    English-centric training pairs among ``languages`` that no stage up to ``stage_name`` trained on (so the
    pseudo-corpus brings new sentences), at most ``per_language`` per language (seeded by the recipe's seed)."""
    stage = recipe.stage(stage_name)
    pool = [p for p in corpus_pairs(recipe.stage_data(stage), "train")
            if pivot_lang in p.direction and p.src_lang in languages and p.tgt_lang in languages]
    used = {text for earlier in recipe.stages[: recipe.stages.index(stage) + 1]
            for p in stage_train_pairs(recipe, earlier) for text in (p.src, p.tgt)}
    return sample_sources(pivot_sources(pool, pivot_lang), per_language, recipe.seed, exclude=used)
