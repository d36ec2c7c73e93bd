"""Paired bootstrap resampling of a system against a baseline, per group of directions.

sacreBLEU's paired bootstrap test (``sacrebleu.significance``, after Koehn 2004 and Moses'
``bootstrap-hypothesis-difference-significance.pl``) compares two systems on one test set: it draws resamples of the
sentences (the same draws for both systems), recomputes each metric from the sentences' sufficient statistics and
counts how often the resampled difference exceeds the observed one. A group of the papers' tables (En-centric,
non-English, zero-shot) is a macro average over directions scored with different tokenizers, so here each direction
is resampled on its own (paired, its draws shared by both systems and every metric) and a resample's group score is
the mean of its directions' scores. With a single direction this is sacreBLEU's test exactly (same seed, same draws,
same statistics, same p-value; tested). Defaults follow sacreBLEU: 1,000 resamples, seed 12345
(``SACREBLEU_SEED``), a 95 % interval from the 2.5th / 97.5th percentiles of the resampled differences.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import _compute_p_value

from lora_route.common.languages import direction_key
from lora_route.eval.metrics import bleu_tokenizer
from lora_route.eval.outputs import TranslationOutput

METRICS = ("bleu", "chrf")
DEFAULT_SAMPLES = 1000
SIGNIFICANCE_LEVEL = 0.05
Direction = tuple[str, str]


@dataclass(frozen=True)
class PairedComparison:
    """One group and metric: both systems' scores, their difference with its 95 % bootstrap interval and the
    p-value of the difference (``significant`` when below 0.05)."""

    group: str
    metric: str
    directions: int
    system: float
    baseline: float
    delta: float
    delta_low: float
    delta_high: float
    p_value: float
    significant: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _metric(name: str, tgt_lang: str):
    return BLEU(tokenize=bleu_tokenizer(tgt_lang)) if name == "bleu" else CHRF(word_order=2)


def _by_direction(outputs: Sequence[TranslationOutput]) -> dict[Direction, list[TranslationOutput]]:
    grouped: dict[Direction, list[TranslationOutput]] = {}
    for output in outputs:
        grouped.setdefault((output.src_lang, output.tgt_lang), []).append(output)
    return grouped


def _seed() -> int | None:
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    return None if seed.lower() == "none" else int(seed)


def paired_bootstrap(system: Sequence[TranslationOutput], baseline: Sequence[TranslationOutput],
                     groups: Mapping[str, Sequence[Direction]], *, metrics: Sequence[str] = METRICS,
                     n_samples: int = DEFAULT_SAMPLES) -> list[PairedComparison]:
    """Compare ``system`` with ``baseline`` (outputs of the same test set) on every group of ``groups`` (name →
    directions; empty groups are left out) for every metric of ``metrics`` (``bleu``, ``chrf``).

    ValueError when the two systems' outputs are not of the same sentences in the same order, a group names a
    direction that was not evaluated, or a metric is unknown."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    ours, theirs = _by_direction(system), _by_direction(baseline)
    if ours.keys() != theirs.keys():
        raise ValueError(f"the two systems were evaluated on other directions: {sorted(ours)} vs {sorted(theirs)}")
    for direction, rows in ours.items():
        if [(o.src, o.ref) for o in rows] != [(o.src, o.ref) for o in theirs[direction]]:
            raise ValueError(f"{direction_key(*direction)}: the two systems' outputs are not of the same sentences in "
                             "the same order; a paired test needs one test set")
    wanted = {direction for members in groups.values() for direction in members}
    missing = sorted(wanted - ours.keys())
    if missing:
        raise ValueError(f"the groups name directions that were not evaluated: {[direction_key(*d) for d in missing]}")
    rng = np.random.default_rng(_seed())
    samples: dict[Direction, dict[str, tuple[float, float, np.ndarray, np.ndarray]]] = {}
    for direction in sorted(wanted):
        rows_sys, rows_bl = ours[direction], theirs[direction]
        draws = rng.choice(len(rows_sys), size=(n_samples, len(rows_sys)), replace=True)
        refs = [[o.ref for o in rows_sys]]
        samples[direction] = {}
        for name in metrics:
            scores = []
            for rows in (rows_sys, rows_bl):
                metric = _metric(name, direction[1])
                stats = np.array(metric._extract_corpus_statistics([o.hyp for o in rows], refs), dtype="float32")
                observed = metric._compute_score_from_stats(stats.sum(0)).score
                resampled = np.array([metric._compute_score_from_stats(s.sum(0)).score for s in stats[draws]])
                scores.append((observed, resampled))
            (sys_observed, sys_resampled), (bl_observed, bl_resampled) = scores
            samples[direction][name] = (sys_observed, bl_observed, sys_resampled, bl_resampled)
    comparisons = []
    for group, members in groups.items():
        if not members:
            continue
        for name in metrics:
            per_direction = [samples[tuple(d)][name] for d in members]
            system_score = float(np.mean([entry[0] for entry in per_direction]))
            baseline_score = float(np.mean([entry[1] for entry in per_direction]))
            sys_resampled = np.mean([entry[2] for entry in per_direction], axis=0)
            bl_resampled = np.mean([entry[3] for entry in per_direction], axis=0)
            differences = sys_resampled - bl_resampled
            absolute = np.abs(differences)
            # Identical outputs give no difference in any resample: no evidence of one (sacreBLEU's count would
            # report 1 / (n + 1) here).
            p_value = 1.0 if not absolute.any() else _compute_p_value(absolute - absolute.mean(),
                                                                      abs(system_score - baseline_score))
            low, high = np.percentile(differences, [2.5, 97.5])
            comparisons.append(PairedComparison(
                group=group, metric=name, directions=len(members), system=system_score, baseline=baseline_score,
                delta=system_score - baseline_score, delta_low=float(low), delta_high=float(high),
                p_value=float(p_value), significant=bool(p_value < SIGNIFICANCE_LEVEL)))
    return comparisons


def comparison_table(comparisons: Mapping[str, Sequence[PairedComparison]], baseline: str) -> str:
    """Markdown table: one row per system and group, per metric the difference to ``baseline`` with its 95 %
    interval and p-value (``*`` = significant at 0.05)."""
    metrics = list(dict.fromkeys(c.metric for rows in comparisons.values() for c in rows))
    header = ["run", "group", "directions"] + [f"Δ{m.upper() if m == 'bleu' else 'chrF++'} vs {baseline} [95 % CI] p"
                                               for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, rows in comparisons.items():
        by_group: dict[str, dict[str, PairedComparison]] = {}
        for row in rows:
            by_group.setdefault(row.group, {})[row.metric] = row
        for group, cells in by_group.items():
            first = next(iter(cells.values()))
            values = [f"{c.delta:+.2f} [{c.delta_low:+.2f}, {c.delta_high:+.2f}] p={c.p_value:.3f}"
                      f"{' *' if c.significant else ''}" if (c := cells.get(m)) else "–" for m in metrics]
            lines.append(f"| {run} | {group} | {first.directions} | " + " | ".join(values) + " |")
    return "\n".join(lines)
