"""Studies: schedules and sizes, and the five studies end to end on a tiny random Gemma 3 with two seeds — every
stage trained once and shared, every evaluation reused on a second invocation, reports with pooled and per-seed
paired bootstrap, the confirmation on test messages the other studies never saw."""
import json
from collections import Counter
from dataclasses import replace

import pytest

from lora_route.data.corpus import TranslationPair, write_pairs_jsonl
from lora_route.experiments import study_runs
from lora_route.experiments.demo import DemoSize, multiway_test_set
from lora_route.experiments.studies import PLANS, Adapters, matched_lora_rank
from lora_route.experiments.study_report import run_studies
from lora_route.experiments.study_runs import STUDY_SIZES, PseudoSpec, Schedule, StudyRunner, StudySize, Variant
from lora_route.train import recipe as recipe_module
from lora_route.train.pseudo import PseudoCandidate

MESSAGES = [
    {"en": "Open the file", "de": "Datei öffnen", "zh": "打开文件"},
    {"en": "Close the window now", "de": "Fenster jetzt schließen", "zh": "现在关闭窗口"},
    {"en": "Save all documents", "de": "Alle Dokumente speichern", "zh": "保存所有文档"},
    {"en": "Print the page please", "de": "Seite bitte drucken", "zh": "请打印页面"},
    {"en": "Delete the selected folder", "de": "Den ausgewählten Ordner löschen", "zh": "删除所选文件夹"},
    {"en": "Show hidden files", "de": "Versteckte Dateien anzeigen", "zh": "显示隐藏文件"},
]
UNIT = DemoSize("unit", ("en", "de", "zh"), ("de-zh",), stage1_steps=2, stage2_steps=1, batch_size=2, lr=1e-3, r=2,
                r_uni=4, test_per_direction=2, test_max_chars=40, train_max_chars=60, num_beams=1,
                eval_batch_size=4, dev_per_direction=0)
SIZE = StudySize("unit", UNIT, seeds=(0, 1), stage2_pairs=(0, 2), reference_pairs=2, stage2_epochs=1.0,
                 pseudo_per_language=3, confirmation_per_direction=2)


def _translations(candidate_sources, languages, **_):
    """A stand-in for the stage-1 model's pivot translations: the toy corpus's own translations."""
    by_text = {m[lang]: m for m in MESSAGES for lang in m}
    return [PseudoCandidate(lang, tgt, text, by_text[text]["en"], by_text[text][tgt], origin)
            for lang, text, origin in candidate_sources for tgt in languages if tgt not in (lang, "en")]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from tiny_models import tiny_causal_lm
    from train_helpers import tiny_tokenizer

    folder = tmp_path_factory.mktemp("toy")
    train = [TranslationPair(s, t, m[s], m[t], "toy") for m in MESSAGES for s in m for t in m if s != t]
    write_pairs_jsonl(train, folder / "train.jsonl")
    english = [TranslationPair("en", t, m["en"], m[t]) for m in MESSAGES for t in ("de", "zh")]
    exploratory = multiway_test_set(english[:6], UNIT.languages, 2, 40)
    options = {"model_factory": lambda: (tiny_causal_lm("gemma3"), tiny_tokenizer()),
               "data": {"source": "local", "train_files": [str(folder / "train.jsonl")], "max_length": 128},
               "test_pairs": exploratory, "device": "cpu", "progress": False,
               "confirmation_pairs": multiway_test_set(english, UNIT.languages, 2, 40, seed=1,
                                                       exclude={p.src for p in exploratory if p.src_lang == "en"})}
    return folder, options


@pytest.fixture(scope="module")
def studies(toy, tmp_path_factory):
    """All five studies, two seeds, then all five again: the counters record what each invocation did."""
    import torch

    _, options = toy
    out = tmp_path_factory.mktemp("studies")
    patch = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trained, evaluated = Counter(), Counter()
    train_once = recipe_module.Trainer.train
    evaluate_once = study_runs.evaluate_model

    def counting_train(self, *args, **kwargs):
        trained[str(self.output_dir)] += 1
        return train_once(self, *args, **kwargs)

    def counting_evaluate(*args, **kwargs):
        evaluated[str(args[3])] += 1
        return evaluate_once(*args, **kwargs)

    patch.setattr(recipe_module.Trainer, "train", counting_train)
    patch.setattr(study_runs, "evaluate_model", counting_evaluate)
    patch.setattr(study_runs, "generate_candidates", lambda model, tokenizer, sources, languages, **kw:
                  _translations(sources, languages))
    try:
        written = run_studies(list(PLANS), SIZE, out, log=lambda _: None, **options)
        first = (Counter(trained), Counter(evaluated))
        run_studies(list(PLANS), SIZE, out, log=lambda _: None, **options)
        second = (trained - first[0], evaluated - first[1])
    finally:
        patch.undo()
        torch.set_num_threads(threads)
    reports = {name: json.loads(paths["json"].read_text()) for name, paths in written.items()}
    return out, written, reports, first, second


def test_every_stage_is_trained_once_and_every_evaluation_is_reused(studies):
    out, _, reports, (trained, evaluated), (trained_again, evaluated_again) = studies
    assert trained and all(count == 1 for count in trained.values()), trained
    assert all(count == 1 for count in evaluated.values()), evaluated
    assert not trained_again and not evaluated_again, "a second invocation must reuse every run"
    unilora = out / "runs" / "unit" / "unilora" / "seed0"
    stages = {p.name for p in unilora.iterdir() if (p / "stage.json").is_file()}
    assert {"stage1", "stage2-k2", "stage2-k2-replay0", "stage2-k2-replay50", "all-k2", "stage2any-k2",
            "stage2any-k2-replay0-lr0p0005", "stage1-s6", "stage2any-k2-stage1-s6"} <= stages
    assert sum(key.endswith("unilora/seed0/stage1") for key in trained) == 1      # one stage 1 for all of them
    ablation = {v["name"]: v["runs"][0] for v in reports["ablations"]["variants"]}
    data = {v["name"]: v["runs"][0] for v in reports["stage2-data"]["variants"]}
    assert ablation["UniLoRA"]["key"] == data["UniLoRA k=2"]["key"]                 # the same run, reused
    assert ablation["w/o UniCore"]["key"] == data["CrossLoRA k=2"]["key"]
    any_to_any = {v["name"]: v["runs"][0] for v in reports["any-to-any"]["variants"]}
    assert any_to_any["UniLoRA k=2"]["key"] == data["UniLoRA k=2"]["key"]
    many = {v["name"]: v["runs"][0] for v in reports["many-languages"]["variants"]}
    assert all(many[name]["key"] == (data.get(name) or any_to_any[name])["key"] for name in many)   # all reused


def test_reports_carry_groups_spread_and_pooled_significance(studies):
    _, written, reports, _, _ = studies
    for name, report in reports.items():
        assert report["seeds"] == [0, 1] and report["test_pairs"] == 12
        assert written[name]["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for variant in report["variants"]:
            assert [run["seed"] for run in variant["runs"]] == [0, 1]
            for group in report["groups"]:
                spread = report["scores"][variant["name"]][group]["bleu"]
                assert spread["min"] <= spread["mean"] <= spread["max"] and spread["std"] is not None
        for comparison in report["comparisons"]:
            assert {(r["group"], r["metric"]) for r in comparison["rows"]} == {
                (g, m) for g in report["groups"] for m in ("bleu", "chrf")}
            for row in comparison["rows"]:
                assert len(row["per_seed"]) == 2 and 0 < row["p_value"] <= 1
                assert row["delta_low"] <= row["delta_high"]
        text = written[name]["markdown"].read_text()
        assert "## Differences (paired bootstrap, 1000 resamples, outputs of all seeds pooled" in text
        assert "significant (p < 0.05):" in text and f"lora-route study {name} --size unit" in text
    assert set(reports["stage2-data"]["groups"]) == {"en_centric", "supervised_non_english", "zero_shot"}
    assert reports["zero-shot"]["groups"]["zero_shot"] == ["de-zh", "zh-de"]
    changes = ("stage-2 replay share 0 %", "stage-2 replay share 50 %", "stage-2 learning rate ¼ of stage 1's",
               "stage-2 replay share 0 % and learning rate ¼ of stage 1's",
               "stage-2 replay share 0 % and learning rate ½ of stage 1's")
    attempts = {a["variant"]: a for a in reports["stage2-data"]["attempts"]}
    assert set(attempts) == {f"{method} k=2, {change}" for method in ("UniLoRA", "LoRA") for change in changes} | {
        "UniLoRA k=2, independent source-expert initialisation"}
    for change in changes:      # a change of the schedule is tested against LoRA with the same change
        unilora, lora = attempts[f"UniLoRA k=2, {change}"], attempts[f"LoRA k=2, {change}"]
        assert (unilora["reference"], unilora["baseline"]) == ("UniLoRA k=2", f"LoRA k=2, {change}")
        assert (lora["reference"], lora["baseline"]) == ("LoRA k=2", "LoRA k=2")
        assert [r["group"] for r in unilora["vs_baseline"]][::2] == list(reports["stage2-data"]["groups"])
    pairs = {(c["system"], c["baseline"]) for c in reports["stage2-data"]["comparisons"]}
    assert {(f"UniLoRA k=2, {c}", f"LoRA k=2, {c}") for c in changes} <= pairs
    retention = {r["run"]: r["stage1"] for r in reports["stage2-data"]["retention"]}
    assert retention["UniLoRA k=2, stage-2 learning rate ¼ of stage 1's"] == "UniLoRA k=0"
    assert retention["LoRA k=2, stage-2 replay share 0 %"] == "LoRA k=0"
    assert [run for run in retention if "," not in run] == ["LoRA k=2", "UniLoRA k=2", "CrossLoRA k=2"]
    assert len(reports["zero-shot"]["attempts"]) == 2
    assert reports["any-to-any"]["groups"] == {"en_centric": ["en-de", "en-zh", "de-en", "zh-en"],
                                               "non_english": ["de-zh", "zh-de"]}
    attempts = {a["variant"]: a for a in reports["any-to-any"]["attempts"]}
    assert (attempts["UniLoRA any-to-any k=2"]["reference"], attempts["UniLoRA any-to-any k=2"]["baseline"]) == (
        "UniLoRA k=2", "LoRA any-to-any k=2")
    assert {(c["system"], c["baseline"]) for c in reports["any-to-any"]["comparisons"]} >= {
        ("UniLoRA any-to-any k=2", "LoRA any-to-any k=2"), ("CrossLoRA any-to-any k=2", "LoRA any-to-any k=2")}
    retention = {r["run"]: r["stage1"] for r in reports["any-to-any"]["retention"]}
    assert retention["CrossLoRA any-to-any k=2"] == "CrossLoRA k=0"
    stages = {v["name"]: v["runs"][0]["training"] for v in reports["any-to-any"]["variants"]}
    for factor, steps in ((3, 6), (6, 12)):        # UNIT's stage 1 has 2 steps
        assert retention[f"UniLoRA any-to-any k=2, stage 1 ×{factor}"] == f"UniLoRA k=0, stage 1 ×{factor}"
        longer = attempts[f"UniLoRA any-to-any k=2, stage 1 ×{factor}"]
        assert (longer["change"], longer["reference"], longer["baseline"]) == (
            f"stage 1 {factor} times as long ({steps} steps)", "UniLoRA any-to-any k=2",
            f"LoRA any-to-any k=2, stage 1 ×{factor}")
        assert list(stages[f"UniLoRA any-to-any k=2, stage 1 ×{factor}"]) == [
            f"stage1-s{steps}", f"stage2any-k2-stage1-s{steps}"]
    assert "## Attempts" in written["zero-shot"]["markdown"].read_text()


def _english_messages(rows) -> set[str]:
    """The English side of test pairs or of evaluation outputs (which name the target ``ref``), as dicts."""
    return {row["src"] if row["src_lang"] == "en" else row.get("tgt", row.get("ref")) for row in rows
            if "en" in (row["src_lang"], row["tgt_lang"])}


def test_the_confirmation_evaluates_the_chosen_attempt_on_fresh_messages_without_training_again(studies, toy):
    out, written, reports, (trained, evaluated), _ = studies
    _, options = toy
    report = reports["confirmation"]
    assert report["test_set"] == "confirmation" and reports["stage2-data"]["test_set"] == "exploratory"
    change = "stage-2 replay share 0 % and learning rate ½ of stage 1's"
    candidate, same_change = f"UniLoRA k=2, {change}", f"LoRA k=2, {change}"
    variants, comparisons = [candidate, same_change, "LoRA k=2", "UniLoRA k=0"], [(candidate, same_change),
                                                                                    (candidate, "LoRA k=2")]
    retention = [(candidate, "UniLoRA k=0")]
    for factor in (3, 6):
        longer = f"stage 1 ×{factor}"
        changed, any_to_any = f"UniLoRA any-to-any k=2, {longer}, {change}", f"UniLoRA any-to-any k=2, {longer}"
        loras = (f"LoRA any-to-any k=2, {longer}", f"LoRA any-to-any k=2, {longer}, {change}", f"LoRA k=0, {longer}")
        variants += [changed, *loras, f"UniLoRA k=0, {longer}", any_to_any]
        comparisons += [*((changed, lora) for lora in loras), (any_to_any, loras[0]), (any_to_any, loras[2])]
        retention += [(changed, f"UniLoRA k=0, {longer}"), (any_to_any, f"UniLoRA k=0, {longer}")]
    assert [v["name"] for v in report["variants"]] == variants
    assert [(c["system"], c["baseline"]) for c in report["comparisons"]] == comparisons
    assert [(r["run"], r["stage1"]) for r in report["retention"]] == retention
    assert report["groups"]["non_english"] == ["de-zh", "zh-de"]
    fresh = _english_messages([vars(p) for p in options["confirmation_pairs"]])
    seen = _english_messages([vars(p) for p in options["test_pairs"]])
    data_runs = {v["name"]: v["runs"] for study in ("stage2-data", "any-to-any") for v in reports[study]["variants"]}
    for variant in report["variants"]:
        for run, data_run in zip(variant["runs"], data_runs[variant["name"]]):
            assert "study_eval_confirmation" in run["outputs_path"] and run["key"] != data_run["key"]
            assert run["training"] == data_run["training"]          # the exploratory runs, not trained again
            outputs = [json.loads(line) for line in open(run["outputs_path"], encoding="utf-8")]
            assert _english_messages(outputs) == fresh and not fresh & seen
    assert sum("study_eval_confirmation" in folder for folder in evaluated) == 32       # 16 variants × 2 seeds
    assert (out / "runs" / "unit" / "confirmation_test.jsonl").is_file() and (out / "runs" / "unit" / "test.jsonl").is_file()
    assert "2 multi-way messages per direction, gettext test split, confirmation set" in (
        written["confirmation"]["markdown"].read_text())


def test_a_confirmation_set_that_shares_a_message_with_the_exploratory_set_is_refused(toy, tmp_path):
    _, options = toy
    overlapping = {**options, "confirmation_pairs": options["test_pairs"]}
    runner = StudyRunner(tmp_path, SIZE, **{k: v for k, v in overlapping.items() if k != "progress"})
    with pytest.raises(ValueError, match="shares 2 messages with the exploratory one"):
        runner.test_set("confirmation")
    with pytest.raises(ValueError, match="unknown test set 'dev'"):
        runner.test_set("dev")
    for wrong in ([], "test.jsonl", [("en", "de", "a", "b")]):
        with pytest.raises(ValueError, match="the confirmation test set must be a non-empty sequence of TranslationPair"):
            StudyRunner(tmp_path, SIZE, **{**{k: v for k, v in options.items() if k != "progress"},
                                           "confirmation_pairs": wrong})
    assert not (tmp_path / "runs" / "unit" / "confirmation_test.jsonl").exists()


def test_a_confirmation_set_the_corpus_cannot_fill_fails_before_any_training(toy, tmp_path, monkeypatch):
    _, options = toy
    without_confirmation = {k: v for k, v in options.items() if k != "confirmation_pairs"}
    english = [TranslationPair("en", t, m["en"], m[t]) for m in MESSAGES for t in ("de", "zh")]
    monkeypatch.setattr(study_runs, "load_gettext_corpus", lambda *args, **kwargs: english)
    monkeypatch.setattr(recipe_module.Trainer, "train", lambda *args, **kwargs: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"only 4 test messages \(besides 2 excluded\)"):
        run_studies(["stage2-data", "confirmation"], replace(SIZE, confirmation_per_direction=5), tmp_path,
                    log=lambda _: None, **without_confirmation)


def test_multiway_test_set_leaves_out_excluded_messages():
    english = [TranslationPair("en", t, m["en"], m[t]) for m in MESSAGES for t in ("de", "zh")]
    excluded = {m["en"] for m in MESSAGES[:4]}
    drawn = multiway_test_set(english, ("en", "de", "zh"), 2, 40, seed=3, exclude=excluded)
    assert _english_messages([vars(p) for p in drawn]) == {m["en"] for m in MESSAGES[4:]}
    with pytest.raises(ValueError, match=r"only 2 test messages \(besides 4 excluded\)"):
        multiway_test_set(english, ("en", "de", "zh"), 3, 40, exclude=excluded)
    for wrong in ("Open the file", 5, [1, 2]):
        with pytest.raises(ValueError, match="exclude must be a collection of English messages"):
            multiway_test_set(english, ("en", "de", "zh"), 2, 40, exclude=wrong)


def test_pseudo_corpus_variants_train_on_their_own_pseudo_pairs(studies):
    out, _, reports, _, _ = studies
    pseudo = {v["name"]: v for v in reports["zero-shot"]["variants"] if v["pseudo"]}
    assert set(pseudo) == {"LoRA + pseudo-corpus", "CrossLoRA + pseudo-corpus", "UniLoRA + pseudo-corpus",
                           "CrossLoRA + pseudo-corpus, no language-ID filters", "CrossLoRA + pseudo-corpus, re-initialised"}
    for variant in pseudo.values():
        report = variant["pseudo"][0]
        assert report["kept"] > 0 and report["kept"] + sum(report["removed"].values()) == report["total"]
        assert variant["evaluated_stage"].startswith("pseudo-")
        assert set(variant["runs"][0]["training"][variant["evaluated_stage"]]["train_pairs"]) >= {"de-zh", "zh-de"}
    assert pseudo["CrossLoRA + pseudo-corpus, no language-ID filters"]["pseudo"][0]["language_id_filters"] is False
    recipe = json.loads((out / "runs" / "unit" / "crosslora" / "seed0" / "recipe.json").read_text())
    assert recipe["adapter"]["method"] == "crosslora"


def test_matched_lora_rank_and_schedule(toy):
    _, options = toy
    adapters = Adapters(SIZE, 1)
    rank = matched_lora_rank(options["model_factory"], adapters.unilora)
    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.params import count_parameters
    from lora_route.adapters.patch import apply_routed_lora

    counts = {}
    for r in (rank - 1, rank, rank + 1):
        model, _ = options["model_factory"]()
        apply_routed_lora(model, RoutedLoRAConfig("lora", ["en", "de", "zh"], r=r, alpha=2.0 * r))
        counts[r] = count_parameters(model).trainable
    model, _ = options["model_factory"]()
    apply_routed_lora(model, RoutedLoRAConfig.from_dict(adapters.unilora))
    target = count_parameters(model).trainable
    assert abs(counts[rank] - target) <= min(abs(counts[rank - 1] - target), abs(counts[rank + 1] - target))

    schedule = Schedule(replace(SIZE, stage2_epochs=2.0))
    small, large = schedule.stage2(2), schedule.stage2(8)
    assert small["name"] == "stage2-k2" and small["cap_per_direction"] == 2
    assert large["training"]["max_steps"] > small["training"]["max_steps"]            # more data, more steps
    replay_pairs = small["replay_fraction"] * schedule.stage1_pairs
    assert replay_pairs == pytest.approx((2 * 1) / 2)                                    # a third of stage 2
    assert "replay_from" not in schedule.stage2(2, replay_share=0.0)
    any_to_any = schedule.stage2(2, any_to_any=True)
    assert (small["directions"], any_to_any["directions"]) == (["de-zh"], ["de-zh", "zh-de"])
    assert any_to_any["name"] == "stage2any-k2" and any_to_any["cap_per_direction"] == 2
    assert any_to_any["replay_fraction"] == pytest.approx(2 * small["replay_fraction"])  # still a third of stage 2
    assert any_to_any["training"]["max_steps"] > small["training"]["max_steps"]
    longer = Schedule(SIZE, stage1_steps=4)
    assert (longer.stage1()["name"], longer.stage1()["training"]["max_steps"]) == ("stage1-s4", 4)
    after = longer.stage2(2)        # the stage 2 after a longer stage 1 replays it and is named after it
    assert (after["name"], after["replay_from"]) == ("stage2-k2-stage1-s4", "stage1-s4")
    assert Schedule(SIZE, stage1_steps=UNIT.stage1_steps).stage1() == Schedule(SIZE).stage1()
    for wrong in (0, 2.0, True):
        with pytest.raises(ValueError, match="stage1_steps must be an int >= 1"):
            Schedule(SIZE, stage1_steps=wrong)
    assert schedule.stage2(2, lr=2.5e-4)["name"] == "stage2-k2-lr0p00025"
    (one,) = schedule.one_stage(2)
    assert one["training"]["max_steps"] == UNIT.stage1_steps + small["training"]["max_steps"]
    assert schedule.two_stages(0) == (schedule.stage1(),)
    with pytest.raises(ValueError, match="kept no pair"):
        schedule.pseudo_stage(PseudoSpec(), study_runs.Path("x.jsonl"), 0)


def test_sizes_and_conflicting_stage_definitions_are_refused(toy, tmp_path):
    _, options = toy
    with pytest.raises(ValueError, match="seeds"):
        replace(SIZE, seeds=(0, 0))
    with pytest.raises(ValueError, match="stage2_pairs"):
        replace(SIZE, stage2_pairs=(-1,))
    with pytest.raises(ValueError, match="stage2_epochs"):
        replace(SIZE, stage2_epochs=0.0)
    with pytest.raises(ValueError, match="confirmation_per_direction"):
        replace(SIZE, confirmation_per_direction=0)
    with pytest.raises(ValueError, match="init"):
        PseudoSpec(init="fresh")
    assert set(STUDY_SIZES) == {"tiny", "cpu", "cpu5", "gpu"} and STUDY_SIZES["cpu"].base.test_per_direction >= 50
    assert STUDY_SIZES["cpu5"].base.languages == STUDY_SIZES["gpu"].base.languages
    with pytest.raises(ValueError, match="unknown study"):
        run_studies(["everything"], SIZE, tmp_path)
    runner = StudyRunner(tmp_path, SIZE, **{k: v for k, v in options.items() if k != "progress"})
    adapter = Adapters(SIZE, 2).unilora
    stage = Schedule(SIZE).stage1()
    runner.recipe(Variant("a", "fam", adapter, (stage,)), 0, [stage])
    changed = {**stage, "training": {"max_steps": 3}}
    with pytest.raises(ValueError, match="defined twice with different settings"):
        runner.recipe(Variant("b", "fam", adapter, (changed,)), 0, [changed])


def test_many_languages_compares_unilora_and_lora_on_every_non_english_direction_of_five_languages():
    size = STUDY_SIZES["cpu5"]
    plan = PLANS["many-languages"](size, Adapters(size, 80))
    change = "stage-2 replay share 0 % and learning rate ½ of stage 1's"
    stage2 = {v.name: v.stages[-1] for v in plan.variants if len(v.stages) == 2}
    any_to_any = {label: f"{label} any-to-any k=128, {change}" for label in ("LoRA", "UniLoRA")}
    assert [v.name for v in plan.variants] == [f"{label} {k}" for label in ("LoRA", "UniLoRA") for k in (
        "k=0", "k=128", f"k=128, {change}", f"any-to-any k=128, {change}")]
    assert plan.comparisons == (("UniLoRA k=128", "LoRA k=128"), (f"UniLoRA k=128, {change}", f"LoRA k=128, {change}"),
                                (f"UniLoRA k=128, {change}", "LoRA k=128"), ("UniLoRA k=0", "LoRA k=0"),
                                (any_to_any["UniLoRA"], any_to_any["LoRA"]), (any_to_any["UniLoRA"], "LoRA k=128"))
    assert plan.retention[f"UniLoRA k=128, {change}"] == plan.retention[any_to_any["UniLoRA"]] == "UniLoRA k=0"
    assert len(stage2[any_to_any["UniLoRA"]]["directions"]) == 12
    assert {name: len(directions) for name, directions in plan.groups.items()} == {
        "en_centric": 8, "supervised_non_english": 4, "zero_shot": 8, "non_english": 12}
    assert stage2["UniLoRA k=128"]["directions"] == ["de-zh", "zh-ru", "ru-cs", "cs-de"]
    assert "replay_from" not in stage2[f"LoRA k=128, {change}"] and stage2["LoRA k=128"]["replay_fraction"] > 0
    assert "fixed before any of these runs was trained" in plan.question


def test_sizes_sharing_a_folder_keep_their_own_test_sets(toy, tmp_path):
    _, options = toy
    given = {k: v for k, v in options.items() if k not in ("progress", "test_pairs")}
    pairs = options["test_pairs"]
    for size, test_pairs in ((SIZE, pairs[:6]), (replace(SIZE, name="other"), pairs[6:]), (SIZE, pairs[3:9])):
        StudyRunner(tmp_path, size, test_pairs=test_pairs, **given).test_set()
        written = [json.loads(line) for line in (tmp_path / "runs" / size.name / "test.jsonl").open(encoding="utf-8")]
        assert written == [vars(p) for p in test_pairs]


def test_study_command_errors_are_one_line(capsys):
    from lora_route.cli import main

    assert main(["study", "ablations", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "lora-route study: error: --threads must be >= 1"
    with pytest.raises(SystemExit):
        main(["study", "everything"])


def test_a_variant_that_cannot_train_is_reported_as_skipped_and_left_out_of_comparisons(toy, tmp_path, monkeypatch):
    _, options = toy
    empty = lambda model, tokenizer, sources, languages, **kw: [  # noqa: E731 - every output fails the filters
        PseudoCandidate(c.src_lang, c.tgt_lang, c.src, c.pivot, "", c.origin) for c in _translations(sources, languages)]
    monkeypatch.setattr(study_runs, "generate_candidates", empty)
    written = run_studies(["zero-shot"], replace(SIZE, seeds=(0,)), tmp_path, log=lambda _: None, **options)
    report = json.loads(written["zero-shot"]["json"].read_text())
    assert set(report["skipped"]) == {v for v in report["skipped"] if "pseudo-corpus" in v} and len(report["skipped"]) == 5
    assert all("kept no pair" in reason for reason in report["skipped"].values())
    assert {v["name"] for v in report["variants"]} == {"LoRA", "UniLoRA", "CrossLoRA", "target-routed CrossLoRA"}
    assert all("pseudo" not in c["system"] + c["baseline"] for c in report["comparisons"]) and not report["attempts"]
    assert "## Runs not reported" in written["zero-shot"]["markdown"].read_text()


def test_the_runs_do_not_depend_on_how_the_output_folder_is_spelt(toy, tmp_path, monkeypatch):
    _, options = toy
    monkeypatch.chdir(tmp_path)
    runner = StudyRunner("studies", SIZE, **{k: v for k, v in options.items() if k != "progress"})
    variant = next(v for v in PLANS["zero-shot"](SIZE, Adapters(SIZE, 2)).variants if v.pseudo)
    corpus, _ = runner._pseudo_paths(variant, 0)
    assert runner.root == tmp_path / "studies" and corpus.is_relative_to(tmp_path / "studies")


def test_a_bar_plot_keeps_long_run_names_inside_the_figure(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from lora_route.experiments import study_report

    names = ["UniLoRA k=128, stage-2 replay share 0 % and learning rate ½ of stage 1's", "LoRA k=128", "UniLoRA k=0"]
    cell = {"mean": 20.0, "min": 19.0, "max": 21.0, "std": 1.0}
    report = {"title": "t", "seeds": [0, 1], "curves": {}, "groups": {"en_centric": [], "zero_shot": []},
              "variants": [{"name": name} for name in names],
              "scores": {name: {group: {"bleu": cell} for group in ("en_centric", "zero_shot")} for name in names}}
    figures = []
    monkeypatch.setattr(study_report, "save_png", lambda fig, path: figures.append(fig) or path)
    study_report.write_study_plot(report, tmp_path / "study.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    labels = [label for ax in fig.axes for label in ax.get_yticklabels() + ax.get_xticklabels()
              if label.get_text().replace("\n", " ") in names]
    assert {label.get_text().replace("\n", " ") for label in labels} == set(names)
    for label in labels:
        extent = label.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, label
    for ax in fig.axes:         # the names leave the bars room
        assert ax.bbox.height >= 0.5 * box.height and ax.bbox.width >= 0.2 * box.width
