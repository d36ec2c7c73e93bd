"""A study's report: group scores per run (mean and spread over seeds), paired-bootstrap differences to the baseline
(outputs of every seed pooled, and per seed), En-centric retention after stage 2, the attempts and their measured
effect; written as ``study.json``, ``study.md`` and ``study.png`` into ``<out>/<study>/``.

Pooling: a comparison resamples the test sentences of each direction in every seed (the same draws for both
systems), so its interval covers test-set and, with two or more seeds, some training variance; a difference counts
as significant when the pooled test says so (p < 0.05) and the per-seed p-values are listed beside it.
"""
from __future__ import annotations

import statistics
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from lora_route.common.files import write_json, write_text_atomic
from lora_route.common.languages import direction_key
from lora_route.common.plotting import pyplot, save_png
from lora_route.eval.significance import DEFAULT_SAMPLES, paired_bootstrap
from lora_route.experiments.studies import PLANS, Adapters, StudyPlan, matched_lora_rank
from lora_route.experiments.study_runs import RunResult, StudyRunner, StudySize, VariantSkipped

METRICS = (("bleu", "BLEU"), ("chrf", "chrF++"), ("off_target_rate", "off-target %"))


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean, or None when a value is missing (a metric missing in one direction is missing for its group)."""
    return None if any(v is None for v in values) else statistics.fmean(values)


def _group_scores(result: RunResult, groups: dict[str, list]) -> dict[str, dict[str, float | None]]:
    scores = {}
    for group, members in groups.items():
        rows = [result.directions[direction_key(s, t)] for s, t in members]
        scores[group] = {metric: _mean([row[metric] for row in rows]) for metric, _ in METRICS}
    return scores


def _spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean, min, max and standard deviation over seeds (all None when a seed lacks the value)."""
    if any(v is None for v in values):
        return {"mean": None, "min": None, "max": None, "std": None}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def _pooled(results: Sequence[RunResult]) -> list:
    return [output for result in results for output in result.outputs()]


def _compare(plan: StudyPlan, runs: dict[str, list[RunResult]], system: str, baseline: str) -> dict[str, Any]:
    """Pooled and per-seed paired bootstrap of ``system`` against ``baseline`` on every group, BLEU and chrF++."""
    pooled = paired_bootstrap(_pooled(runs[system]), _pooled(runs[baseline]), plan.groups)
    per_seed = [paired_bootstrap(mine.outputs(), theirs.outputs(), plan.groups)
                for mine, theirs in zip(runs[system], runs[baseline])]
    rows = []
    for index, row in enumerate(pooled):
        seeds = [{"seed": result.seed, "delta": comparisons[index].delta, "p_value": comparisons[index].p_value}
                 for result, comparisons in zip(runs[system], per_seed)]
        rows.append({**row.to_dict(), "per_seed": seeds})
    return {"system": system, "baseline": baseline, "rows": rows}


def _retention(plan: StudyPlan, scores: dict[str, dict]) -> list[dict]:
    return [{"run": run, "stage1": stage1,
             "en_centric_bleu": scores[run]["en_centric"]["bleu"]["mean"],
             "stage1_en_centric_bleu": scores[stage1]["en_centric"]["bleu"]["mean"],
             "delta": scores[run]["en_centric"]["bleu"]["mean"] - scores[stage1]["en_centric"]["bleu"]["mean"]}
            for run, stage1 in plan.retention.items()]


def _attempts(plan: StudyPlan, scores: dict[str, dict], comparisons: list[dict]) -> list[dict]:
    out = []
    for attempt in plan.attempts:
        effect = {group: scores[attempt.variant][group]["bleu"]["mean"] - scores[attempt.reference][group]["bleu"]["mean"]
                  for group in plan.groups}
        versus = next((c for c in comparisons
                       if c["system"] == attempt.variant and c["baseline"] == attempt.baseline), None)
        out.append({**asdict(attempt), "bleu_delta_vs_reference": effect,
                    "vs_baseline": versus["rows"] if versus else []})
    return out


def run_study(plan: StudyPlan, runner: StudyRunner, seeds: Sequence[int]) -> dict[str, Any]:
    """Train / evaluate every variant of ``plan`` for every seed (reusing stored runs), then compare; returns the
    JSON-safe report."""
    if not seeds:
        raise ValueError("a study needs at least one seed")
    started = time.time()
    runs: dict[str, list[RunResult]] = {v.name: [] for v in plan.variants}
    skipped: dict[str, str] = {}
    for seed in seeds:
        for variant in plan.variants:
            if variant.name in skipped:
                continue
            try:
                runs[variant.name].append(runner.result(variant, seed, plan.test_set))
            except VariantSkipped as reason:
                skipped[variant.name] = f"seed {seed}: {reason}"
                runner.log(f"{variant.name} seed {seed}: skipped, {reason}")
    plan = plan.without(set(skipped))
    runs = {name: results for name, results in runs.items() if name not in skipped}
    per_seed_scores = {name: [_group_scores(r, plan.groups) for r in results] for name, results in runs.items()}
    scores = {name: {group: {metric: _spread([s[group][metric] for s in seeds_scores]) for metric, _ in METRICS}
                     for group in plan.groups}
              for name, seeds_scores in per_seed_scores.items()}
    comparisons = [_compare(plan, runs, system, baseline) for system, baseline in plan.comparisons]
    training_seconds = sum({(v.family, r.seed, name): stage["seconds"] or 0.0 for v in plan.variants
                            for r in runs[v.name] for name, stage in r.training.items()}.values())
    size = runner.size
    test_pairs = runner.test_set(plan.test_set)
    return {
        "study": plan.name, "title": plan.title, "question": plan.question,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size": {"name": size.name, **{k: v for k, v in asdict(size).items() if k not in ("name", "base")},
                 "base": asdict(size.base)},
        "model": runner.model_name, "seeds": list(seeds), "test_set": plan.test_set, "test_pairs": len(test_pairs),
        "test_per_direction": len(test_pairs) // max(1, len({(p.src_lang, p.tgt_lang) for p in test_pairs})),
        "groups": {group: [direction_key(s, t) for s, t in members] for group, members in plan.groups.items()},
        "variants": [{"name": v.name, "family": v.family, "adapter": dict(v.adapter),
                      "stages": list(runs[v.name][0].training), "evaluated_stage": runs[v.name][0].stage,
                      "parameters": runs[v.name][0].parameters,
                      "pseudo": [r.pseudo for r in runs[v.name]] if v.pseudo else None,
                      "runs": [r.to_dict() for r in runs[v.name]]} for v in plan.variants],
        "skipped": skipped,
        "scores": scores,
        "comparisons": comparisons,
        "retention": _retention(plan, scores),
        "attempts": _attempts(plan, scores, comparisons),
        "curves": {label: [[k, name] for k, name in points] for label, points in plan.curves.items()},
        "bootstrap": {"samples": DEFAULT_SAMPLES, "pooled_over_seeds": True},
        "time_s": {"this_invocation": round(time.time() - started, 1),
                   "training_recorded": round(training_seconds, 1),
                   "evaluation_recorded": round(sum(r.eval_seconds for rs in runs.values() for r in rs), 1)},
    }


# ---------------------------------------------------------------------------------------------------- markdown
def _cell(spread: dict) -> str:
    if spread["mean"] is None:
        return "–"
    if spread["min"] == spread["max"]:
        return f"{spread['mean']:.1f}"
    return f"{spread['mean']:.1f} ({spread['min']:.1f}–{spread['max']:.1f})"


def _delta_cell(row: dict) -> str:
    seeds = ", ".join(f"{s['delta']:+.1f} p={s['p_value']:.2f}" for s in row["per_seed"])
    star = " **\\***" if row["significant"] else ""
    return (f"{row['delta']:+.2f} [{row['delta_low']:+.2f}, {row['delta_high']:+.2f}] p={row['p_value']:.3f}{star}"
            + (f" (seeds: {seeds})" if len(row["per_seed"]) > 1 else ""))


def significance_lines(comparisons: list[dict]) -> list[str]:
    """One line per comparison: its significant and its non-significant differences (BLEU and chrF++)."""
    lines = []
    for comparison in comparisons:
        def describe(row: dict) -> str:
            metric = "BLEU" if row["metric"] == "bleu" else "chrF++"
            return f"{row['group']} {metric} {row['delta']:+.2f}"
        significant = [describe(r) for r in comparison["rows"] if r["significant"]]
        other = [describe(r) for r in comparison["rows"] if not r["significant"]]
        lines.append(f"- {comparison['system']} vs {comparison['baseline']}: significant (p < 0.05): "
                     f"{', '.join(significant) or 'none'}; not significant: {', '.join(other) or 'none'}.")
    return lines


def study_markdown(report: dict) -> str:
    size, base = report["size"], report["size"]["base"]
    groups = report["groups"]
    decoding = "greedy" if base["num_beams"] == 1 else f"beam {base['num_beams']}"
    lines = [f"# {report['title']}", "", report["question"], "",
             f"Command: `lora-route study {report['study']} --size {size['name']}`. Model `{report['model']}`; "
             f"languages {', '.join(base['languages'])}; {report['test_pairs']} test pairs "
             f"({report['test_per_direction']} multi-way messages per direction, gettext test split, "
             f"{report['test_set']} set), "
             f"{decoding} decoding; stage 1 "
             f"{base['stage1_steps']} steps of batch {base['batch_size']} at lr {base['lr']:g}; r = {base['r']}, "
             f"r_uni = {base['r_uni']}; seeds {', '.join(map(str, report['seeds']))}.",
             "Groups: " + "; ".join(f"{g} = {', '.join(d)}" for g, d in groups.items()) + ".",
             f"Time: {report['time_s']['this_invocation']:.0f} s this invocation; the runs it reports recorded "
             f"{report['time_s']['training_recorded']:.0f} s of training and "
             f"{report['time_s']['evaluation_recorded']:.0f} s of evaluation.", "",
             "## Scores (mean over seeds, min–max in brackets)", ""]
    header = ["run", "trainable"] + [f"{g} {label}" for g in groups for metric, label in METRICS
                                     if metric != "off_target_rate" or g != "en_centric"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in report["variants"]:
        cells = [variant["name"], f"{variant['parameters']['trainable']:,}"]
        cells += [_cell(report["scores"][variant["name"]][g][metric]) for g in groups for metric, _ in METRICS
                  if metric != "off_target_rate" or g != "en_centric"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## Differences (paired bootstrap, {report['bootstrap']['samples']} resamples, outputs of all seeds "
              "pooled; 95 % interval; * = p < 0.05)", "",
              "| run | vs | group | ΔBLEU | ΔchrF++ |", "|---|---|---|---|---|"]
    for comparison in report["comparisons"]:
        by_group: dict[str, dict[str, dict]] = {}
        for row in comparison["rows"]:
            by_group.setdefault(row["group"], {})[row["metric"]] = row
        for group, cells in by_group.items():
            lines.append(f"| {comparison['system']} | {comparison['baseline']} | {group} | "
                         f"{_delta_cell(cells['bleu'])} | {_delta_cell(cells['chrf'])} |")
    lines += ["", *significance_lines(report["comparisons"]), ""]
    if report["retention"]:
        lines += ["## En-centric BLEU kept after stage 2", "", "| run | stage 1 | En-centric BLEU | stage 1 | Δ |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['stage1']} | {r['en_centric_bleu']:.2f} | {r['stage1_en_centric_bleu']:.2f} | "
                  f"{r['delta']:+.2f} |" for r in report["retention"]]
        lines.append("")
    if report["attempts"]:
        lines += ["## Attempts", "", "| change | run | ΔBLEU per group vs the run it changes | significant "
                  "differences (paired bootstrap) |", "|---|---|---|---|"]
        for attempt in report["attempts"]:
            effect = ", ".join(f"{g} {d:+.2f}" for g, d in attempt["bleu_delta_vs_reference"].items())
            won = [f"{r['group']} {r['metric']} {r['delta']:+.2f}" for r in attempt["vs_baseline"] if r["significant"]]
            lines.append(f"| {attempt['change']} | {attempt['variant']} | vs {attempt['reference']}: {effect} | "
                         f"vs {attempt['baseline']}: {', '.join(won) or 'none'} |")
        lines.append("")
    if report["skipped"]:
        lines += ["## Runs not reported", ""]
        lines += [f"- {name}: {reason}" for name, reason in report["skipped"].items()]
        lines.append("")
    pseudo = [(v["name"], v["pseudo"]) for v in report["variants"] if v["pseudo"]]
    if pseudo:
        lines += ["## Pseudo-corpora (kept / generated, per seed)", ""]
        lines += [f"- {name}: " + "; ".join(
            f"{p['kept']}/{p['total']} kept, removed by " + (", ".join(f"{f} {n}" for f, n in p["removed"].items() if n)
                                                            or "no filter") for p in reports)
                  for name, reports in pseudo]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- plot
def write_study_plot(report: dict, path: Path) -> Path:
    """BLEU per group: lines against k when the study has curves, else horizontal bars per run (names wrapped);
    seed min–max as error bars."""
    plt = pyplot("study plots")
    groups = list(report["groups"])
    names = [v["name"] for v in report["variants"]]
    height = 4.2 if report["curves"] else 1.2 + 0.45 * sum(len(textwrap.wrap(name, 34)) for name in names)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), height), squeeze=False)
    scores = report["scores"]
    for ax, group in zip(axes[0], groups):
        if report["curves"]:
            for label, points in report["curves"].items():
                xs = list(range(len(points)))
                cells = [scores[name][group]["bleu"] for _, name in points]
                means = [c["mean"] for c in cells]
                errors = [[c["mean"] - c["min"] for c in cells], [c["max"] - c["mean"] for c in cells]]
                ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label)
                ax.set_xticks(xs, labels=[str(k) for k, _ in points])
            ax.set_xlabel("stage-2 pairs per supervised direction (k)")
            ax.set_ylabel("BLEU")
            ax.grid(axis="y", alpha=0.3)
        else:
            cells = [scores[name][group]["bleu"] for name in names]
            ax.barh(range(len(names)), [c["mean"] for c in cells],
                    xerr=[[c["mean"] - c["min"] for c in cells], [c["max"] - c["mean"] for c in cells]], capsize=3)
            labels = [textwrap.fill(name, 34) if ax is axes[0][0] else "" for name in names]
            ax.set_yticks(range(len(names)), labels=labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("BLEU")
            ax.grid(axis="x", alpha=0.3)
        ax.set_title(group.replace("_", " "))
    if report["curves"]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{report['title']} — seeds {', '.join(map(str, report['seeds']))}", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def write_study(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """``study.json``, ``study.md`` and ``study.png`` in ``<out_dir>/<study>/``; returns their paths."""
    folder = Path(out_dir) / report["study"]
    return {"json": write_json(folder / "study.json", report),
            "markdown": write_text_atomic(folder / "study.md", study_markdown(report)),
            "plot": write_study_plot(report, folder / "study.png")}



def run_studies(names: Sequence[str], size: StudySize, out_dir: str | Path, *, seeds: Sequence[int] | None = None,
                **runner_options) -> dict[str, dict[str, Path]]:
    """Run the studies ``names`` (of :data:`~lora_route.experiments.studies.PLANS`) at ``size`` for ``seeds``
    (default: the size's), sharing one runner and its stored runs under ``out_dir``; returns each study's written
    files. ``runner_options`` go to :class:`StudyRunner` (model_name, device, model_factory, data, test_pairs,
    confirmation_pairs, progress, log)."""
    unknown = [name for name in names if name not in PLANS]
    if unknown or not names:
        raise ValueError(f"unknown study {unknown or names}; choose from {', '.join(PLANS)}")
    seeds = tuple(seeds) if seeds is not None else size.seeds
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct ints >= 0, got {list(seeds)}")
    runner = StudyRunner(out_dir, size, **runner_options)
    lora_rank = matched_lora_rank(runner.model_factory, Adapters(size, 1).unilora)
    adapters = Adapters(size, lora_rank)
    plans = {name: PLANS[name](size, adapters) for name in names}
    for plan in plans.values():     # a test set the corpus cannot fill fails now, not after hours of training
        runner.test_set(plan.test_set)
    return {name: write_study(run_study(plan, runner, seeds), out_dir) for name, plan in plans.items()}
