"""Evaluation reports: N×N direction matrices (JSON), PNG heatmaps, and markdown tables of several runs in the
papers' layout (``lora-route compare``).

A "run" is a folder holding ``metrics.json`` as written by ``EvaluationResult.save`` (or the path of that file).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lora_route.common.files import read_json, write_json
from lora_route.common.plotting import pyplot, save_png

# Groups and metrics of the papers' summary table, in column order.
TABLE_GROUPS = (("en_centric", "En-centric"), ("non_english", "non-En-centric"), ("zero_shot", "zero-shot"),
                ("all", "Average"))
TABLE_METRICS = (("bleu", "BLEU"), ("chrf", "chrF++"), ("comet", "COMET"), ("off_target_rate", "off-tgt %"))


def save_matrix_json(path: str | os.PathLike, matrix: Sequence[Sequence[float | None]], languages: Sequence[str],
                     metric: str) -> Path:
    """N×N matrix JSON: rows = source language, columns = target language, ``null`` where not evaluated."""
    _check_matrix(matrix, languages)
    return write_json(path, {"metric": metric, "rows": "source", "columns": "target",
                             "languages": list(languages), "matrix": [list(row) for row in matrix]})


def plot_heatmap(path: str | os.PathLike, matrix: Sequence[Sequence[float | None]], languages: Sequence[str],
                 title: str) -> Path:
    """PNG heatmap of an N×N direction matrix (source rows × target columns), values written in the cells."""
    _check_matrix(matrix, languages)
    plt = pyplot("heatmaps")
    values = np.array([[math.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    n = len(languages)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * n, 0.8 + 0.8 * n))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis")
    ax.set_xticks(range(n), labels=list(languages))
    ax.set_yticks(range(n), labels=list(languages))
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    ax.set_title(title)
    finite = values[np.isfinite(values)]
    middle = float(finite.mean()) if finite.size else 0.0
    for i in range(n):
        for j in range(n):
            if math.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center",
                        color="black" if values[i, j] > middle else "white", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def _check_matrix(matrix: Sequence[Sequence[float | None]], languages: Sequence[str]) -> None:
    n = len(languages)
    if n == 0:
        raise ValueError("matrix needs at least one language")
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"matrix must be {n}×{n} for languages {list(languages)}")


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{100.0 * value:.1f}" if metric == "off_target_rate" else f"{value:.2f}"


def load_run(run: str | os.PathLike) -> dict:
    """The metrics dict of a run folder (``<run>/metrics.json``) or of a metrics JSON file."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.json for run {run!s} (looked at {path})")
    data = read_json(path)
    if "groups" not in data or "directions" not in data:
        raise ValueError(f"{path} is not an evaluation metrics file (needs 'groups' and 'directions')")
    return data


def summary_table(runs: Mapping[str, Mapping], metrics: Sequence[str] | None = None) -> str:
    """Markdown table, one row per run: each group's averages (the papers' Table 1 layout).

    runs: name -> metrics dict (``EvaluationResult.to_dict()``). Metrics that no run has are left out; groups
    that no run has (e.g. zero-shot when nothing was held out) are left out.
    """
    if not runs:
        raise ValueError("summary_table needs at least one run")
    wanted = [m for m in TABLE_METRICS if metrics is None or m[0] in metrics]
    present = [(key, label) for key, label in wanted
               if any(g.get(key) is not None for r in runs.values() for g in r["groups"].values())]
    groups = [(key, label) for key, label in TABLE_GROUPS
              if any(r["groups"].get(key, {}).get("n_directions", 0) for r in runs.values())]
    header = ["run"] + [f"{glabel} {mlabel}" for _, glabel in groups for _, mlabel in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs.items():
        cells = [name]
        for gkey, _ in groups:
            group = run["groups"].get(gkey, {})
            cells += [_fmt(group.get(mkey), mkey) for mkey, _ in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def direction_table(runs: Mapping[str, Mapping], metric: str = "bleu") -> str:
    """Markdown table, one column per direction (``src→tgt``, ``*`` = zero-shot), one row per run."""
    if not runs:
        raise ValueError("direction_table needs at least one run")
    keys: dict[str, bool] = {}
    for run in runs.values():
        for d in run["directions"]:
            keys.setdefault(f"{d['src_lang']}→{d['tgt_lang']}", bool(d.get("zero_shot")))
    header = ["run"] + [k + ("*" if zs else "") for k, zs in keys.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs.items():
        by_key = {f"{d['src_lang']}→{d['tgt_lang']}": d for d in run["directions"]}
        lines.append("| " + " | ".join([name] + [_fmt(by_key.get(k, {}).get(metric), metric) for k in keys]) + " |")
    return "\n".join(lines)
