"""The machinery behind ``lora-route study``: the sizes of the studies, the variants they train, and a runner that
trains and evaluates a variant once per seed, reusing every finished stage, pseudo-corpus and evaluation.

A variant is a recipe (adapter + stages) on the demo's data and multi-way test set
(:mod:`lora_route.experiments.demo`). Variants of one *family* share the folder
``<root>/runs/<size>/<family>/seed<seed>/`` and with it their first stages: ``run_recipe(resume=True)`` reloads a
finished stage whose fingerprint matches instead of training it again, so UniLoRA's stage 1 is trained once for
every stage-2 data size, and the ablations reuse the data study's runs. A variant's evaluation is stored beside its
last stage (``study_eval/``) under a key over every stage's fingerprint, the test set and the decoding settings,
and is reused while that key holds.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from lora_route.adapters.params import count_parameters
from lora_route.adapters.patch import apply_routed_lora
from lora_route.common.files import read_json, read_jsonl, write_json, write_jsonl
from lora_route.common.languages import direction_key
from lora_route.data.corpus import TranslationPair, write_pairs_jsonl
from lora_route.data.gettext_corpus import load_gettext_corpus
from lora_route.eval.evaluate import evaluate_model
from lora_route.eval.langid import LanguageIdentifier
from lora_route.eval.outputs import TranslationOutput, load_outputs
from lora_route.experiments.demo import (
    PIVOT,
    SIZES,
    DemoSize,
    budget_stage,
    demo_directions,
    load_for_device,
    multiway_test_set,
    recipe_common,
)
from lora_route.train.config import RecipeConfig, parse_recipe
from lora_route.train.distributed import setup_distributed
from lora_route.train.pseudo import PseudoCandidate, filter_candidates, generate_candidates, recipe_pivot_sources
from lora_route.train.recipe import STAGE_SUMMARY, recipe_trained_directions, run_recipe

Direction = tuple[str, str]
# Stage-2 data is a third replay of stage-1 pairs, as in UniLoRA (5 % of 10 × 20k English-centric pairs beside
# ~20k any-to-any pairs).
DEFAULT_REPLAY_SHARE = 1 / 3
TEST_SET_SEED = 0
CONFIRMATION_SET_SEED = 1
# The studies' test sets, each with the folder beside a variant's last stage where its evaluation on that set is
# stored: ``exploratory`` (the demo's multi-way test set, on which the studies compare everything and the attempts
# are chosen) and ``confirmation`` (fresh messages drawn apart from it, evaluated once for the chosen attempt).
EVAL_FOLDERS = {"exploratory": "study_eval", "confirmation": "study_eval_confirmation"}
TEST_SETS = tuple(EVAL_FOLDERS)


class VariantSkipped(ValueError):
    """A variant that cannot be trained as specified (e.g. its pseudo-corpus kept no pair); the study reports it."""


@dataclass(frozen=True)
class StudySize:
    """Everything that scales the studies.

    base: the demo size they build on (languages, supervised non-English directions, stage-1 steps, batch, learning
    rate, ranks, exploratory test set, decoding). seeds: one run of every variant per seed. stage2_pairs: the
    amounts k of stage-2 data (pairs per supervised non-English direction; 0 = stage 1 alone). reference_pairs: the
    k of the ablations and attempts. stage2_epochs: passes over the stage-2 data (k pairs per direction + the
    replay), so stage 2 trains longer on more data. pseudo_per_language: pivot sources per non-English language for
    the pseudo-corpus. confirmation_per_direction: messages per direction of the confirmation test set.
    """

    name: str
    base: DemoSize
    seeds: tuple[int, ...]
    stage2_pairs: tuple[int, ...]
    reference_pairs: int
    stage2_epochs: float
    pseudo_per_language: int
    confirmation_per_direction: int

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"StudySize.seeds must be distinct ints >= 0, got {self.seeds!r}")
        if not self.stage2_pairs or len(set(self.stage2_pairs)) != len(self.stage2_pairs) or any(
                not isinstance(k, int) or k < 0 for k in self.stage2_pairs):
            raise ValueError(f"StudySize.stage2_pairs must be distinct ints >= 0, got {self.stage2_pairs!r}")
        for name in ("reference_pairs", "pseudo_per_language", "confirmation_per_direction"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StudySize.{name} must be a positive int, got {value!r}")
        if not self.stage2_epochs > 0:
            raise ValueError(f"StudySize.stage2_epochs must be > 0, got {self.stage2_epochs!r}")


# cpu: the CPU demo's sizes with stage 1 twice as long (96 steps: at the demo's 48 the routed experts have not yet
# learnt the English-centric directions, see docs/results.md) and one stage-2 epoch as in UniLoRA; about 6.2 h for
# the four exploratory studies on two cores with the seeds as separate processes (``--seeds 0`` / ``--seeds 1``,
# one thread each), then once more for the report. The confirmation set is four (gpu: two) times the exploratory
# one, drawn from the messages of the gettext test split that the exploratory set leaves.
# cpu5: the cpu size on the gpu size's five languages (de→zh, zh→ru, ru→cs and cs→de supervised in stage 2, the other
# eight non-English directions zero-shot), stage 1 twice as many steps for twice the English-centric directions (the
# same pairs per direction), 30 test messages per direction (360 non-English outputs per run); for
# ``many-languages``, about 1.8 h per seed on one core.
STUDY_SIZES = {
    "tiny": StudySize("tiny", SIZES["tiny"], seeds=(0,), stage2_pairs=(0, 2), reference_pairs=2, stage2_epochs=1.0,
                      pseudo_per_language=2, confirmation_per_direction=2),
    "cpu": StudySize("cpu", replace(SIZES["cpu"], stage1_steps=96), seeds=(0, 1), stage2_pairs=(0, 32, 128, 512),
                     reference_pairs=128, stage2_epochs=1.0, pseudo_per_language=128, confirmation_per_direction=200),
    "cpu5": StudySize("cpu5", replace(SIZES["cpu"], languages=SIZES["gpu"].languages,
                                      stage2_directions=SIZES["gpu"].stage2_directions, stage1_steps=192,
                                      test_per_direction=30),
                      seeds=(0, 1), stage2_pairs=(0, 128), reference_pairs=128, stage2_epochs=1.0,
                      pseudo_per_language=128, confirmation_per_direction=100),
    "gpu": StudySize("gpu", SIZES["gpu"], seeds=(0, 1, 2), stage2_pairs=(0, 32, 128, 512), reference_pairs=512,
                     stage2_epochs=1.0, pseudo_per_language=1000, confirmation_per_direction=400),
}


@dataclass(frozen=True)
class PseudoSpec:
    """A pivot pseudo-corpus trained on in a variant's last stage: the adapters of the stages before it translate
    ``pseudo_per_language`` English-centric training sources per non-English language that those stages did not
    see through English into every other non-English language (:mod:`lora_route.train.pseudo`); the candidates pass
    every filter (``language_id=False``: all but the three language-ID filters); the last stage trains
    ``stage2_epochs`` over the kept pairs plus a third of replayed stage-1 pairs, continuing from the adapters
    (``init="continue"``, CrossLoRA's "pseudo-corpora + stage 1") or from fresh ones (``"reinit"``, CrossLoRA's
    stage 2)."""

    language_id: bool = True
    init: str = "continue"

    def __post_init__(self) -> None:
        if self.init not in ("continue", "reinit"):
            raise ValueError(f"PseudoSpec.init must be 'continue' or 'reinit', got {self.init!r}")

    @property
    def stage_name(self) -> str:
        return f"pseudo-{'langid' if self.language_id else 'no-langid'}-{self.init}"


@dataclass(frozen=True)
class Variant:
    """One trained configuration. ``family`` names the folder it shares with variants that begin with the same
    stages; ``adapter``: the recipe's adapter section; ``stages``: raw stage dicts (with ``pseudo``, the stages
    before the pseudo-corpus stage, which the runner appends once the corpus exists)."""

    name: str
    family: str
    adapter: Mapping[str, Any]
    stages: tuple[Mapping[str, Any], ...]
    pseudo: PseudoSpec | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"variant {self.name!r} has no stage")


@dataclass
class RunResult:
    """A variant's evaluation for one seed: per-direction scores (``"src-tgt"`` → bleu, chrf on 0-100 and
    off_target_rate in %, None when language ID determined no output), the evaluated stage, the stages' training
    summaries (steps, seconds, pairs), the evaluation's seconds, the trainable parameters and, for pseudo-corpus
    variants, the filter report."""

    variant: str
    seed: int
    stage: str
    key: str
    directions: dict[str, dict[str, float]]
    training: dict[str, dict[str, Any]]
    eval_seconds: float
    parameters: dict[str, Any]
    pseudo: dict[str, Any] | None = None
    outputs_path: str = ""
    _outputs: list[TranslationOutput] | None = field(default=None, repr=False, compare=False)

    def outputs(self) -> list[TranslationOutput]:
        if self._outputs is None:
            self._outputs = load_outputs(self.outputs_path)
        return self._outputs

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


class Schedule:
    """The raw stages of the studies for one size: stage 1 as in the demo (English-centric, the demo's step budget,
    or ``stage1_steps``), stage 2 on k pairs per supervised non-English direction plus replay, one-stage training,
    and the pseudo stage. A stage 1 of other than the demo's steps is named ``stage1-s<steps>``, and the stage 2
    after it carries that name too, so that both live beside the default ones in a run folder."""

    def __init__(self, size: StudySize, stage1_steps: int | None = None):
        self.size = size
        self.en_centric, self.supervised, self.held_out = demo_directions(size.base)
        self.non_english = self.supervised + self.held_out
        self.stage1_steps = size.base.stage1_steps if stage1_steps is None else stage1_steps
        if isinstance(self.stage1_steps, bool) or not isinstance(self.stage1_steps, int) or self.stage1_steps < 1:
            raise ValueError(f"stage1_steps must be an int >= 1, got {stage1_steps!r}")
        self.stage1_name = "stage1" if self.stage1_steps == size.base.stage1_steps else f"stage1-s{self.stage1_steps}"
        self.stage1_cap = max(1, math.ceil(self.stage1_steps * size.base.batch_size / len(self.en_centric)))

    @property
    def stage1_pairs(self) -> int:
        return self.stage1_cap * len(self.en_centric)

    def stage1(self) -> dict:
        base = self.size.base
        return budget_stage(self.stage1_name, "en_centric", self.stage1_steps, len(self.en_centric), base.batch_size)

    def _steps(self, pairs: float) -> int:
        return max(1, math.ceil(self.size.stage2_epochs * pairs / self.size.base.batch_size))

    def stage2(self, pairs: int, *, replay_share: float = DEFAULT_REPLAY_SHARE, lr: float | None = None,
               any_to_any: bool = False) -> dict:
        """Stage 2 on ``pairs`` pairs per supervised non-English direction (``any_to_any``: per non-English
        direction, the zero-shot ones included, as UniLoRA's any-to-any stage) + replayed stage-1 pairs making up
        ``replay_share`` of the stage's data, for ``stage2_epochs`` passes; the name records every setting that
        differs from the default."""
        if pairs < 1:
            raise ValueError(f"stage 2 needs >= 1 pair per direction, got {pairs}")
        if not 0 <= replay_share < 1:
            raise ValueError(f"replay_share must be in [0, 1), got {replay_share}")
        directions = self.non_english if any_to_any else self.supervised
        keys = [direction_key(s, t) for s, t in directions]
        new_pairs = pairs * len(keys)
        fraction = min(1.0, new_pairs * replay_share / (1 - replay_share) / self.stage1_pairs)
        name = f"stage2any-k{pairs}" if any_to_any else f"stage2-k{pairs}"
        if self.stage1_name != "stage1":
            name += f"-{self.stage1_name}"
        if replay_share != DEFAULT_REPLAY_SHARE:
            name += f"-replay{round(100 * replay_share)}"
        stage = {"name": name, "directions": keys, "cap_per_direction": pairs,
                 "training": {"max_steps": self._steps(new_pairs + fraction * self.stage1_pairs)}}
        if fraction > 0:
            stage.update(replay_from=self.stage1_name, replay_fraction=fraction)
        if lr is not None:
            stage["name"] += f"-lr{lr:g}".replace(".", "p")
            stage["training"]["lr"] = lr
        return stage

    def two_stages(self, pairs: int, **stage2_options) -> tuple[dict, ...]:
        """Stage 1 alone for ``pairs == 0``, else stage 1 then :meth:`stage2`."""
        return (self.stage1(),) if pairs == 0 else (self.stage1(), self.stage2(pairs, **stage2_options))

    def one_stage(self, pairs: int) -> tuple[dict]:
        """UniLoRA without stage 1: one stage on ``pairs`` pairs of every trained direction (English-centric and
        supervised non-English, as UniLoRA's any-to-any corpus) for as many steps as stage 1 + stage 2."""
        keys = [direction_key(s, t) for s, t in self.en_centric + self.supervised]
        steps = self.size.base.stage1_steps + self.stage2(pairs)["training"]["max_steps"]
        return ({"name": f"all-k{pairs}", "directions": keys, "cap_per_direction": pairs,
                 "training": {"max_steps": steps}},)

    def pseudo_stage(self, spec: PseudoSpec, corpus: Path, pairs: int) -> dict:
        """The last stage of a pseudo-corpus variant: the ``pairs`` pairs of ``corpus`` + English-centric pairs
        (the first of stage 1's, drawn with the same seed) making up a third of the data, ``stage2_epochs``
        passes."""
        if pairs < 1:
            raise VariantSkipped(f"its pseudo-corpus kept no pair ({corpus}): nothing to train the pseudo stage on")
        replay_cap = max(1, math.ceil(pairs * DEFAULT_REPLAY_SHARE / (1 - DEFAULT_REPLAY_SHARE)
                                      / len(self.en_centric)))
        return {"name": spec.stage_name, "directions": "en_centric", "cap_per_direction": replay_cap,
                "extra_files": [str(corpus)], "init": spec.init,
                "training": {"max_steps": self._steps(pairs + replay_cap * len(self.en_centric))}}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StudyRunner:
    """Trains and evaluates study variants on one device; every result lands under ``root`` as it finishes.

    model_factory: () -> (fresh unpatched model, tokenizer); default loads ``model_name``. data: overrides of the
    recipes' data section (tests: local files). test_pairs: the exploratory test set, default the demo's multi-way
    test set (seed 0, the same for every seed and study); confirmation_pairs: the confirmation test set, default
    ``confirmation_per_direction`` multi-way messages drawn (seed 1) from those the exploratory set leaves; the two
    may share no message. log: receives one line per step.
    """

    def __init__(self, root: str | Path, size: StudySize, *, model_name: str = "embedded", device: str | None = None,
                 model_factory: Callable[[], tuple] | None = None, data: dict | None = None,
                 test_pairs: Sequence[TranslationPair] | None = None,
                 confirmation_pairs: Sequence[TranslationPair] | None = None, progress: bool = True,
                 log: Callable[[str], None] = print):
        # Absolute, so that a pseudo-corpus path written into a stage (and its fingerprint) does not depend on how
        # the folder was spelt on the command line.
        self.root, self.size, self.model_name = Path(root).resolve(), size, model_name
        self.schedule = Schedule(size)
        self.data = dict(data or {})
        self.ctx = setup_distributed(device)
        self.model_factory = model_factory or functools.partial(load_for_device, model_name, self.ctx.device)
        self.progress, self.log = progress, log
        self.identifier = LanguageIdentifier()
        given = {"exploratory": test_pairs, "confirmation": confirmation_pairs}
        for name, pairs in given.items():
            if pairs is not None and (isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs
                                      or not all(isinstance(pair, TranslationPair) for pair in pairs)):
                raise ValueError(f"the {name} test set must be a non-empty sequence of TranslationPair, "
                                 f"got {pairs!r:.80}")
        # Test sets as given, and as checked and written (what test_set returns).
        self._given = {name: list(pairs) for name, pairs in given.items() if pairs is not None}
        self._test_sets: dict[str, list[TranslationPair]] = {}
        self._english: list[TranslationPair] | None = None
        self._stage_names: dict[tuple[str, int, str], str] = {}

    # ------------------------------------------------------------------------------------------ inputs
    def test_set(self, name: str = "exploratory") -> list[TranslationPair]:
        """The multi-way test set ``name`` (one of :data:`TEST_SETS`), written to ``<root>/runs/<size>/test.jsonl``
        (exploratory) or ``<root>/runs/<size>/<name>_test.jsonl``, so that sizes with other languages sharing
        ``root`` each keep their own."""
        if name not in TEST_SETS:
            raise ValueError(f"unknown test set {name!r}; choose one of {', '.join(TEST_SETS)}")
        if name in self._test_sets:
            return self._test_sets[name]
        pairs = self._given.get(name)
        base = self.size.base
        if name == "exploratory" and pairs is None:
            pairs = multiway_test_set(self._english_test_pairs(), base.languages, base.test_per_direction,
                                      base.test_max_chars, TEST_SET_SEED)
        elif name == "confirmation":
            exploratory = _messages(self.test_set("exploratory"))
            if pairs is None:
                pairs = multiway_test_set(self._english_test_pairs(), base.languages,
                                          self.size.confirmation_per_direction, base.test_max_chars,
                                          CONFIRMATION_SET_SEED, exclude=exploratory)
            shared = _messages(pairs) & exploratory
            if shared:
                raise ValueError(f"the confirmation test set shares {len(shared)} messages with the exploratory one "
                                 f"(e.g. {sorted(shared)[0]!r}); it must hold fresh messages only")
        path = self.size_dir / ("test.jsonl" if name == "exploratory" else f"{name}_test.jsonl")
        write_jsonl(path, (asdict(p) for p in pairs))
        self._test_sets[name] = pairs
        return pairs

    def _english_test_pairs(self) -> list[TranslationPair]:
        """The gettext test split's en→X pairs of the size's languages, which both test sets are drawn from."""
        if self._english is None:
            languages = self.size.base.languages
            self._english = load_gettext_corpus(languages, "test", self.data.get("locale_dirs"),
                                                directions=[(PIVOT, lang) for lang in languages if lang != PIVOT])
        return self._english

    @property
    def size_dir(self) -> Path:
        """``<root>/runs/<size>``: the size's test sets and the run folders of its variants."""
        return self.root / "runs" / self.size.name

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.size_dir / variant.family / f"seed{seed}"

    def recipe(self, variant: Variant, seed: int, stages: Sequence[Mapping[str, Any]]) -> RecipeConfig:
        raw = {**recipe_common(self.size.base, self.data, self.model_name, seed),
               "name": f"study-{variant.family}", "output_dir": str(self.run_dir(variant, seed)),
               "adapter": dict(variant.adapter), "stages": [dict(stage) for stage in stages]}
        recipe = parse_recipe(json.loads(json.dumps(raw)), f"study variant {variant.name!r}")
        for stage in recipe.stages:
            self._claim(variant, seed, stage.name, recipe.fingerprint(stage))
        return recipe

    def _claim(self, variant: Variant, seed: int, stage: str, fingerprint: str) -> None:
        """Two variants of one family may share a stage folder only when the stage is the same."""
        key = (variant.family, seed, stage)
        if self._stage_names.setdefault(key, fingerprint) != fingerprint:
            raise ValueError(f"variant {variant.name!r}: stage {stage!r} of family {variant.family!r} is defined "
                             "twice with different settings; give the stages different names")

    def _eval_key(self, recipe: RecipeConfig, test_set: str) -> str:
        base = self.size.base
        return _sha({"stages": [recipe.fingerprint(s) for s in recipe.stages], "model": self.model_name,
                     "test": [asdict(p) for p in self.test_set(test_set)], "num_beams": base.num_beams,
                     "batch_size": base.eval_batch_size})

    # ------------------------------------------------------------------------------------------ running
    def result(self, variant: Variant, seed: int, test_set: str = "exploratory") -> RunResult:
        """The variant's evaluation for ``seed`` on test set ``test_set``: stored, or trained (missing stages only)
        and evaluated now."""
        recipe = self._final_recipe(variant, seed)
        stored = self._stored(variant, seed, recipe, test_set) if recipe is not None else None
        if stored is not None:
            return stored
        model, tokenizer = self._patched(self.recipe(variant, seed, variant.stages))
        parameters = asdict(count_parameters(model))
        pseudo_report = None
        if variant.pseudo is not None:
            generating = self.recipe(variant, seed, variant.stages)
            self.log(f"{variant.name} seed {seed}: training {', '.join(s.name for s in generating.stages)}")
            self._train(generating, model, tokenizer)
            corpus, pseudo_report = self._pseudo(variant, seed, generating, model, tokenizer)
            recipe = self.recipe(variant, seed, [*variant.stages, self.schedule.pseudo_stage(
                variant.pseudo, corpus, pseudo_report["kept"])])
        self.log(f"{variant.name} seed {seed}: training {', '.join(s.name for s in recipe.stages)}")
        summaries = self._train(recipe, model, tokenizer)
        result = self._evaluate(variant, seed, recipe, model, tokenizer, summaries, parameters, pseudo_report,
                                test_set)
        del model
        gc.collect()
        return result

    def _final_recipe(self, variant: Variant, seed: int) -> RecipeConfig | None:
        """The variant's whole recipe; None for a pseudo-corpus variant whose corpus does not exist yet."""
        if variant.pseudo is None:
            return self.recipe(variant, seed, variant.stages)
        corpus = self._pseudo_paths(variant, seed)[0]
        if not corpus.is_file():
            return None
        pseudo = self.schedule.pseudo_stage(variant.pseudo, corpus, len(read_jsonl(corpus)))
        return self.recipe(variant, seed, [*variant.stages, pseudo])

    def _patched(self, recipe: RecipeConfig):
        model, tokenizer = self.model_factory()
        torch.manual_seed(recipe.seed)
        apply_routed_lora(model, recipe.adapter_config())
        model.to(self.ctx.device)
        return model, tokenizer

    def _train(self, recipe: RecipeConfig, model, tokenizer) -> dict:
        summaries = run_recipe(recipe, self.ctx, resume=True, model=model, tokenizer=tokenizer, progress=self.progress)
        for name, summary in summaries.items():
            if not summary.get("completed", True):
                raise RuntimeError(f"{recipe.name}/{name} stopped before its last step")
        return summaries

    def _pseudo_paths(self, variant: Variant, seed: int) -> tuple[Path, Path]:
        """(corpus, candidates) files of a pseudo-corpus variant, named by the fingerprint of the stage that
        generates them (so that a retrained stage writes new files and the pseudo stage's fingerprint changes)."""
        generating = self.recipe(variant, seed, variant.stages)
        stage = generating.stages[-1]
        stem = f"{stage.name}-{generating.fingerprint(stage)}-{self.size.pseudo_per_language}"
        folder = self.run_dir(variant, seed) / "pseudo"
        return folder / f"{stem}-{variant.pseudo.stage_name}.jsonl", folder / f"{stem}-candidates.jsonl"

    def _pseudo(self, variant: Variant, seed: int, generating: RecipeConfig, model, tokenizer) -> tuple[Path, dict]:
        """Generate (or reuse) the candidates with the trained stages of ``generating``, filter them, write the
        corpus; returns its path and the filter report."""
        spec = variant.pseudo
        corpus, candidates_path = self._pseudo_paths(variant, seed)
        marker = candidates_path.with_suffix(".json")
        stage = generating.stages[-1]
        started = time.time()
        if marker.is_file():
            candidates = [PseudoCandidate(**row) for row in read_jsonl(candidates_path)]
            seconds = read_json(marker)["seconds"]
        else:
            self.log(f"{variant.name} seed {seed}: generating the pivot pseudo-corpus")
            languages = list(self.size.base.languages)
            sources = recipe_pivot_sources(generating, stage.name, languages, PIVOT, self.size.pseudo_per_language)
            model.eval()
            candidates = generate_candidates(model, tokenizer, sources, languages, pivot_lang=PIVOT,
                                             batch_size=self.size.base.eval_batch_size, progress=self.progress)
            seconds = round(time.time() - started, 1)
            write_jsonl(candidates_path, (asdict(c) for c in candidates))
            write_json(marker, {"candidates": len(candidates), "seconds": seconds})
        pairs, report = filter_candidates(candidates, self.identifier if spec.language_id else None, pivot_lang=PIVOT)
        write_pairs_jsonl(pairs, corpus)
        report_dict = {**report.to_dict(), "language_id_filters": spec.language_id, "generation_seconds": seconds}
        write_json(corpus.with_suffix(".report.json"), report_dict)
        return corpus, report_dict

    def _evaluate(self, variant, seed, recipe, model, tokenizer, summaries, parameters, pseudo_report,
                  test_set) -> RunResult:
        last = recipe.stages[-1].name
        out = Path(recipe.output_dir) / last / EVAL_FOLDERS[test_set]
        self.log(f"{variant.name} seed {seed}: evaluating {last} on the {test_set} test set")
        started = time.time()
        model.eval()
        base = self.size.base
        evaluation = evaluate_model(model, tokenizer, self.test_set(test_set), out,
                                    trained=recipe_trained_directions(recipe, last),
                                    name=variant.name, num_beams=base.num_beams, batch_size=base.eval_batch_size,
                                    identifier=self.identifier, languages=list(base.languages),
                                    progress=self.progress, heatmaps=False)
        directions = {direction_key(s, t): {"bleu": score.bleu, "chrf": score.chrf, "off_target_rate": None
                                            if score.off_target_rate is None else 100.0 * score.off_target_rate}
                      for (s, t), score in evaluation.directions.items()}
        training = {name: {k: summary.get(k) for k in ("steps", "seconds", "train_pairs", "first_loss", "last_loss")}
                    for name, summary in summaries.items()}
        result = RunResult(variant.name, seed, last, self._eval_key(recipe, test_set), directions, training,
                           round(time.time() - started, 1), parameters, pseudo_report, str(out / "outputs.jsonl"))
        write_json(out / "result.json", result.to_dict())
        return result

    def _stored(self, variant: Variant, seed: int, recipe: RecipeConfig, test_set: str) -> RunResult | None:
        path = Path(recipe.output_dir) / recipe.stages[-1].name / EVAL_FOLDERS[test_set] / "result.json"
        if not path.is_file():
            return None
        stored = read_json(path)
        if stored.get("key") != self._eval_key(recipe, test_set) or not Path(stored.get("outputs_path", "")).is_file():
            return None
        for stage in recipe.stages:   # a stage trained again since would have a newer summary than the evaluation
            summary = Path(recipe.output_dir) / stage.name / STAGE_SUMMARY
            if not summary.is_file() or read_json(summary).get("fingerprint") != recipe.fingerprint(stage):
                return None
        stored["variant"] = variant.name
        return RunResult(**stored)


def _messages(pairs: Sequence[TranslationPair]) -> set[str]:
    """The English messages of a multi-way test set (every pair with English on one side)."""
    return {p.src if p.src_lang == PIVOT else p.tgt for p in pairs if PIVOT in (p.src_lang, p.tgt_lang)}
