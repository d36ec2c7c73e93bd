"""Evaluation of multilingual translation: mixed-direction decoding of a test set, scores per direction
(:mod:`lora_route.eval.metrics`), averages over the papers' groups (En→X, X→En, non-English, zero-shot), N×N matrices
and heatmaps.

Test sets are sequences of pair records with attributes or keys ``src_lang, tgt_lang, src, tgt``
(``lora_route.data.corpus.TranslationPair`` or plain dicts).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tqdm.auto import tqdm

from lora_route.common.files import write_json
from lora_route.common.languages import direction_key, parse_direction
from lora_route.eval.generation import translate
from lora_route.eval.langid import LanguageIdentifier
from lora_route.eval.metrics import CometScorer, DirectionScore, score_direction
from lora_route.eval.outputs import TranslationOutput, pair_fields, save_outputs
from lora_route.eval.report import plot_heatmap, save_matrix_json

Direction = tuple[str, str]
GROUPS = ("en_to_x", "x_to_en", "en_centric", "non_english", "supervised", "zero_shot", "all")
MATRIX_METRICS = ("bleu", "chrf", "comet", "off_target_rate")


# ---------------------------------------------------------------------------------------------------- groups
def _as_direction_set(directions: Iterable[Sequence[str]] | None) -> set[Direction] | None:
    return None if directions is None else {parse_direction(d) for d in directions}


def direction_groups(directions: Iterable[Direction], *, trained: Iterable[Sequence[str]] | None = None,
                     pivot: str = "en") -> dict[str, list[Direction]]:
    """Split directions into the papers' groups. ``en_centric`` = En→X ∪ X→En; ``non_english`` = neither side
    is the pivot; ``zero_shot`` = absent from ``trained`` (empty when ``trained`` is None), ``supervised`` = in it."""
    directions = list(dict.fromkeys(tuple(d) for d in directions))
    trained_set = _as_direction_set(trained)
    groups: dict[str, list[Direction]] = {g: [] for g in GROUPS}
    for src, tgt in directions:
        if src == tgt:
            raise ValueError(f"direction {src}→{tgt} has the same source and target language")
        groups["all"].append((src, tgt))
        if src == pivot:
            groups["en_to_x"].append((src, tgt))
        if tgt == pivot:
            groups["x_to_en"].append((src, tgt))
        if pivot in (src, tgt):
            groups["en_centric"].append((src, tgt))
        else:
            groups["non_english"].append((src, tgt))
        if trained_set is not None:
            groups["supervised" if (src, tgt) in trained_set else "zero_shot"].append((src, tgt))
    return groups


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def group_averages(scores: Mapping[Direction, DirectionScore], *, trained: Iterable[Sequence[str]] | None = None,
                   pivot: str = "en") -> dict[str, dict[str, Any]]:
    """Macro averages (mean over directions, as in the papers' tables) of every metric per group.
    A metric missing in any direction of a group (e.g. COMET unavailable) is None for that group."""
    groups = direction_groups(scores.keys(), trained=trained, pivot=pivot)
    result = {}
    for name, members in groups.items():
        entry: dict[str, Any] = {"n_directions": len(members), "directions": [direction_key(s, t) for s, t in members]}
        for metric in MATRIX_METRICS:
            entry[metric] = _mean([getattr(scores[d], metric) for d in members])
        result[name] = entry
    return result


def score_matrix(scores: Mapping[Direction, DirectionScore], languages: Sequence[str], metric: str
                 ) -> list[list[float | None]]:
    """N×N matrix of one metric: row = source language, column = target; None where not evaluated."""
    if metric not in MATRIX_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {MATRIX_METRICS}")
    if len(set(languages)) != len(languages):
        raise ValueError(f"languages must be distinct, got {list(languages)}")
    unknown = {lang for d in scores for lang in d} - set(languages)
    if unknown:
        raise ValueError(f"scores contain languages {sorted(unknown)} missing from {list(languages)}")
    return [[getattr(scores[(s, t)], metric) if (s, t) in scores else None for t in languages] for s in languages]


@dataclass
class EvaluationResult:
    """Per-direction scores, group averages and the settings they were measured with."""
    directions: dict[Direction, DirectionScore]
    groups: dict[str, dict[str, Any]]
    languages: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"languages": self.languages, "settings": self.settings, "groups": self.groups,
                "directions": [asdict(s) for s in self.directions.values()]}

    def save(self, out_dir: str | os.PathLike, *, heatmaps: bool = True) -> Path:
        """Write ``metrics.json``, ``matrix_<metric>.json`` and (matplotlib permitting) ``heatmap_<metric>.png``."""
        out = Path(out_dir)
        write_json(out / "metrics.json", self.to_dict())
        for metric in MATRIX_METRICS:
            matrix = score_matrix(self.directions, self.languages, metric)
            if all(v is None for row in matrix for v in row):
                continue
            save_matrix_json(out / f"matrix_{metric}.json", matrix, self.languages, metric)
            if heatmaps:
                shown = [[None if v is None else (100.0 * v if metric == "off_target_rate" else v) for v in row]
                         for row in matrix]
                label = "off-target %" if metric == "off_target_rate" else {"bleu": "BLEU", "chrf": "chrF++",
                                                                             "comet": "COMET"}[metric]
                title = f"{label} ({self.settings.get('name', out.name)})"
                plot_heatmap(out / f"heatmap_{metric}.png", shown, self.languages, title)
        return out / "metrics.json"


def evaluate_outputs(outputs: Sequence[TranslationOutput], *, trained: Iterable[Sequence[str]] | None = None,
                     identifier: LanguageIdentifier | None = None, comet: CometScorer | None = None,
                     pivot: str = "en", languages: Sequence[str] | None = None,
                     settings: Mapping[str, Any] | None = None) -> EvaluationResult:
    """Score decoded outputs per direction and per group. ``trained`` = directions seen in training (defines
    zero-shot); ``languages`` fixes the matrix order (default: pivot first, then order of appearance)."""
    if not outputs:
        raise ValueError("no outputs to evaluate")
    by_direction: dict[Direction, list[TranslationOutput]] = {}
    for o in outputs:
        if not isinstance(o, TranslationOutput):
            raise TypeError(f"expected TranslationOutput, got {type(o).__name__}")
        by_direction.setdefault((o.src_lang, o.tgt_lang), []).append(o)
    trained_set = _as_direction_set(trained)
    scores = {d: score_direction(outs, identifier=identifier, comet=comet,
                                 zero_shot=None if trained_set is None else d not in trained_set)
              for d, outs in by_direction.items()}
    if languages is None:
        seen = dict.fromkeys(lang for d in by_direction for lang in d)
        languages = ([pivot] if pivot in seen else []) + [lang for lang in seen if lang != pivot]
    meta = dict(settings or {})
    meta.update({"pivot": pivot, "trained_directions": None if trained_set is None else sorted(
        direction_key(s, t) for s, t in trained_set), "langid_backend": identifier.backend if identifier else None,
        "comet_model": comet.model_name if comet else None,
        "comet_unavailable": comet.unavailable if comet else "not requested"})
    return EvaluationResult(directions=scores, groups=group_averages(scores, trained=trained_set, pivot=pivot),
                            languages=list(languages), settings=meta)


# -------------------------------------------------------------------------------------------------- decoding
def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def decode_pairs(model, tokenizer, pairs: Sequence[Any], *, num_beams: int = 1, batch_size: int = 16,
                 max_new_tokens_ratio: float = 2.0, max_new_tokens_extra: int = 16, template: str | None = None,
                 progress: bool = True, translate_fn: Callable[..., list[str]] | None = None) -> list[str]:
    """Translate every pair's ``src`` into its ``tgt_lang``, directions mixed inside batches.

    Batches are length-sorted over all directions; a batch may generate ``ceil(ratio · longest source in
    tokens) + extra`` new tokens. Returns outputs in the order of ``pairs``. ``translate_fn`` defaults to
    ``lora_route.eval.generation.translate``.
    """
    if num_beams < 1 or not isinstance(num_beams, int):
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
    if max_new_tokens_ratio <= 0 or max_new_tokens_extra < 0:
        raise ValueError("max_new_tokens_ratio must be > 0 and max_new_tokens_extra >= 0")
    translate_fn = translate if translate_fn is None else translate_fn
    fields = [pair_fields(p) for p in pairs]
    if not fields:
        return []
    lengths = [len(ids) for ids in tokenizer([f[2] for f in fields], add_special_tokens=False)["input_ids"]]
    batches = length_sorted_batches(lengths, batch_size)
    outputs: list[str | None] = [None] * len(fields)
    with tqdm(total=len(fields), desc=f"decoding ({'greedy' if num_beams == 1 else f'beam {num_beams}'})",
              unit="sent", disable=not progress) as bar:
        for batch in batches:
            max_new = math.ceil(max_new_tokens_ratio * max(lengths[i] for i in batch)) + max_new_tokens_extra
            kwargs = {"num_beams": num_beams, "max_new_tokens": max_new, "batch_size": len(batch)}
            if template is not None:
                kwargs["template"] = template
            hyps = translate_fn(model, tokenizer, [fields[i][2] for i in batch], [fields[i][0] for i in batch],
                                [fields[i][1] for i in batch], **kwargs)
            if len(hyps) != len(batch):
                raise RuntimeError(f"translate returned {len(hyps)} outputs for {len(batch)} inputs")
            for i, hyp in zip(batch, hyps):
                outputs[i] = hyp
            bar.update(len(batch))
    return outputs  # type: ignore[return-value]


def evaluate_model(model, tokenizer, pairs: Sequence[Any], out_dir: str | os.PathLike, *,
                   trained: Iterable[Sequence[str]] | None = None, name: str | None = None, num_beams: int = 1,
                   batch_size: int = 16, identifier: LanguageIdentifier | None = None,
                   comet: CometScorer | None = None, pivot: str = "en", languages: Sequence[str] | None = None,
                   heatmaps: bool = True, progress: bool = True, settings: Mapping[str, Any] | None = None,
                   **decode_kwargs) -> EvaluationResult:
    """Decode ``pairs``, save ``outputs.jsonl`` (src, ref, hyp per line) and the metrics/matrices/heatmaps into
    ``out_dir``, and return the result. ``settings`` are recorded in ``metrics.json``."""
    hyps = decode_pairs(model, tokenizer, pairs, num_beams=num_beams, batch_size=batch_size, progress=progress,
                        **decode_kwargs)
    outputs = [TranslationOutput(s, t, src, ref, hyp) for (s, t, src, ref), hyp in
               zip((pair_fields(p) for p in pairs), hyps)]
    out = Path(out_dir)
    save_outputs(out / "outputs.jsonl", outputs)
    result = evaluate_outputs(outputs, trained=trained, identifier=identifier, comet=comet, pivot=pivot,
                              languages=languages, settings={"name": name or out.name, "num_beams": num_beams,
                                                             "batch_size": batch_size, "n_pairs": len(outputs),
                                                             **(settings or {})})
    result.save(out, heatmaps=heatmaps)
    return result
