"""Demo: test-set construction, recipes, sizes, and the whole orchestration on a tiny random Gemma 3 model."""
import json
from dataclasses import replace

import pytest

from lora_route.data.corpus import TranslationPair, write_pairs_jsonl
from lora_route.experiments.demo import SIZES, DemoSize, demo_directions, multiway_test_set, recipe_dicts, run_demo

EN = ["Open the file", "Close the window now", "Save all documents", "Print the page please"]
DE = ["Datei öffnen", "Fenster jetzt schließen", "Alle Dokumente speichern", "Seite bitte drucken"]
ZH = ["打开文件", "现在关闭窗口", "保存所有文档", "请打印页面"]


def _english_pairs():
    pairs = [TranslationPair("en", "de", e, d) for e, d in zip(EN, DE)]
    pairs += [TranslationPair("en", "zh", e, z) for e, z in zip(EN[:3], ZH[:3])]   # last message lacks zh
    return pairs


def test_multiway_test_set_same_messages_in_every_direction():
    test = multiway_test_set(_english_pairs(), ["en", "de", "zh"], per_direction=2, max_chars=40, seed=1)
    assert len(test) == 6 * 2
    by_dir = {}
    for p in test:
        by_dir.setdefault((p.src_lang, p.tgt_lang), []).append(p)
    assert set(by_dir) == {("en", "de"), ("en", "zh"), ("de", "en"), ("zh", "en"), ("de", "zh"), ("zh", "de")}
    english = [p.src for p in by_dir[("en", "de")]]
    assert all(e in EN[:3] for e in english)                        # only messages present in all languages
    assert [DE[EN.index(e)] for e in english] == [p.src for p in by_dir[("de", "zh")]]
    assert [ZH[EN.index(e)] for e in english] == [p.tgt for p in by_dir[("de", "zh")]]
    assert multiway_test_set(_english_pairs(), ["en", "de", "zh"], 2, 40, seed=1) == test     # deterministic
    with pytest.raises(ValueError, match="only 1 test messages"):
        multiway_test_set(_english_pairs(), ["en", "de", "zh"], per_direction=2, max_chars=13)
    with pytest.raises(ValueError, match="en→X pairs"):
        multiway_test_set([TranslationPair("de", "en", DE[0], EN[0])], ["en", "de"], 1, 40)


def test_directions_and_size_validation():
    en_centric, supervised, zero_shot = demo_directions(SIZES["cpu"])
    assert len(en_centric) == 4 and supervised == [("de", "zh")] and zero_shot == [("zh", "de")]
    assert len(demo_directions(SIZES["gpu"])[2]) == 8
    with pytest.raises(ValueError, match="must be non-English"):
        replace(SIZES["cpu"], stage2_directions=("en-de",))
    with pytest.raises(ValueError, match="stage1_steps"):
        replace(SIZES["cpu"], stage1_steps=0)
    with pytest.raises(ValueError, match="stage2_directions must name"):
        replace(SIZES["cpu"], stage2_directions=())
    with pytest.raises(ValueError, match="unknown demo size"):
        run_demo("unused", "huge")


def test_recipes_parse_and_share_the_budget(tmp_path):
    from lora_route.train.config import parse_recipe

    size = SIZES["cpu"]
    raw = recipe_dicts(size, tmp_path, {}, "embedded", seed=0)
    lora, uni = parse_recipe(raw["lora"]), parse_recipe(raw["unilora"])
    assert lora.adapter_config().method == "lora" and uni.adapter_config().method == "unilora"
    steps = lambda recipe: sum(recipe.stage_training(s).max_steps for s in recipe.stages)  # noqa: E731
    assert steps(lora) == steps(uni) == size.stage1_steps + size.stage2_steps
    assert uni.stages[0].directions == "en_centric" and uni.stages[1].directions == ["de-zh"]
    assert uni.stages[1].replay_from == "stage1" and uni.stages[1].replay_fraction == size.replay_fraction
    stage1_pairs = 4 * uni.stages[0].cap_per_direction
    stage2_pairs = uni.stages[1].cap_per_direction
    assert size.replay_fraction * stage1_pairs == pytest.approx(stage2_pairs / 2)     # replay = 1/3 of stage 2
    assert sorted(lora.stages[0].directions) == ["de-en", "de-zh", "en-de", "en-zh", "zh-en"]


@pytest.fixture
def one_thread():
    """Tiny-model ops are microseconds; with 2 OpenMP threads on a busy machine each one waits for a time slice."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run_tiny_demo(tmp_path, out, **kwargs) -> dict:
    """run_demo on a random tiny Gemma 3 with toy every-direction training pairs and a 2-message multi-way test set."""
    from tiny_models import tiny_causal_lm
    from train_helpers import tiny_tokenizer

    train = [TranslationPair(s, t, texts[s], texts[t], "toy") for e, d, z in zip(EN, DE, ZH)
             for texts in [{"en": e, "de": d, "zh": z}] for s in texts for t in texts if s != t]
    write_pairs_jsonl(train, tmp_path / "train.jsonl")
    test = multiway_test_set(_english_pairs(), ["en", "de", "zh"], per_direction=2, max_chars=40)
    size = DemoSize("unit", ("en", "de", "zh"), ("de-zh",), stage1_steps=2, stage2_steps=1, batch_size=2, lr=1e-3,
                    r=2, r_uni=4, test_per_direction=2, test_max_chars=40, train_max_chars=60, num_beams=1,
                    eval_batch_size=4, dev_per_direction=0)
    return run_demo(out, size, device="cpu", progress=False, test_pairs=test,
                    model_factory=lambda: (tiny_causal_lm("gemma3"), tiny_tokenizer()),
                    data={"source": "local", "train_files": [str(tmp_path / "train.jsonl")], "max_length": 128},
                    **kwargs)


def test_demo_orchestration_on_tiny_model(tmp_path, one_thread):
    out = tmp_path / "report"
    summary = _run_tiny_demo(tmp_path, out)
    for run in ("base", "lora", "unilora_stage1", "unilora_stage2"):
        metrics = json.loads((out / run / "metrics.json").read_text())
        assert len(metrics["directions"]) == 6
        assert metrics["groups"]["zero_shot"]["directions"] == ["zh-de"]
        assert len((out / run / "outputs.jsonl").read_text().splitlines()) == 12
        assert (out / run / "heatmap_bleu.png").is_file()
    assert summary["training"]["unilora_stage2"]["stage2"]["steps"] == 1
    assert summary["training"]["unilora_stage1"]["stage1"]["steps"] == 2
    assert summary["training"]["lora"]["train"]["steps"] == 3
    assert summary["parameters"]["unilora"]["trainable"] > 0
    text = (out / "summary.md").read_text()
    assert "| unilora_stage2 |" in text and "zh→de*" in text and "Zero-shot" in text
    assert "## Change against the base model" in text and "COMET-22 was not requested" in text
    significance = summary["significance_vs_lora"]
    assert set(significance) == {"unilora_stage1", "unilora_stage2"}
    groups = {(row["group"], row["metric"]) for row in significance["unilora_stage2"]}
    assert groups == {(g, m) for g in ("en_centric", "non_english", "zero_shot") for m in ("bleu", "chrf")}
    assert all(0 < row["p_value"] <= 1 and row["delta_low"] <= row["delta_high"] for row in significance["unilora_stage1"])
    assert "## Differences to LoRA (paired bootstrap, 1000 resamples" in text and "- unilora_stage2: " in text
    assert "### zh→de (zero-shot)" in (out / "samples.md").read_text()
    assert len((out / "test.jsonl").read_text().splitlines()) == 12


def test_zero_shot_probe_trains_every_adapter_on_english_centric_pairs_only(tmp_path, one_thread):
    out = tmp_path / "probe"
    summary = _run_tiny_demo(tmp_path, out, zero_shot_probe=True)
    assert summary["mode"] == "zero_shot_probe"
    assert summary["directions"]["zero_shot"] == ["de-zh", "zh-de"]
    for run in ("base", "lora", "unilora_stage1", "target_routed"):
        metrics = json.loads((out / run / "metrics.json").read_text())
        assert metrics["groups"]["zero_shot"]["directions"] == ["de-zh", "zh-de"]
    for run in ("lora", "unilora_stage1", "target_routed"):
        stage = summary["training"][run]["stage1"]
        assert stage["steps"] == 2
        recipe = json.loads((out / "train" / f"probe_{run}" / "recipe.json").read_text())
        assert recipe["stages"][0]["directions"] == "en_centric" and len(recipe["stages"]) == 1
    adapter = json.loads((out / "train" / "probe_target_routed" / "recipe.json").read_text())["adapter"]
    assert adapter["method"] == "crosslora" and adapter["src_expert"] == {"en": 0, "de": 0, "zh": 0}
    assert summary["parameters"]["target_routed"]["trainable"] < summary["parameters"]["unilora_stage1"]["trainable"]
    assert "Zero-shot probe: every run trained 2 steps" in (out / "summary.md").read_text()


def test_evaluate_and_pseudo_commands_on_a_trained_tiny_recipe(tmp_path, one_thread):

    import yaml
    from tiny_models import tiny_causal_lm
    from train_helpers import tiny_tokenizer

    from lora_route.cli import build_parser
    from lora_route.train.config import load_recipe
    from lora_route.train.distributed import setup_distributed
    from lora_route.train.recipe import run_recipe, stage_train_pairs

    tiny_causal_lm("gemma3").save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    words = {"en": ["cat", "dog", "house", "tree", "book", "water"],
             "de": ["Katze", "Hund", "Haus", "Baum", "Buch", "Wasser"], "zh": ["猫", "狗", "房子", "树", "书", "水"]}
    train = [TranslationPair(s, t, f"{words[s][i]} {words[s][(i + 1) % 6]}", f"{words[t][i]} {words[t][(i + 1) % 6]}")
             for i in range(6) for s in words for t in words if s != t]
    write_pairs_jsonl(train, tmp_path / "train.jsonl")
    write_pairs_jsonl(train[:12], tmp_path / "test.jsonl")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tmp_path / "model")},
        "adapter": {"method": "unilora", "languages": ["en", "de", "zh"], "r": 2, "r_uni": 4},
        "data": {"source": "local", "train_files": [str(tmp_path / "train.jsonl")], "dev_per_direction": 0},
        "training": {"batch_size": 2},
        "stages": [{"name": "stage1", "directions": "en_centric", "cap_per_direction": 2,
                    "training": {"max_steps": 2}}]}))
    run_recipe(load_recipe(recipe_file), setup_distributed("cpu"), progress=False)

    args = build_parser("evaluate").parse_args(["evaluate", str(recipe_file), "--test", "local", "--test-path",
                              str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "eval"), "--no-progress",
                              "--device", "cpu"])
    assert args.func(args) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["settings"]["stage"] == "stage1" and metrics["settings"]["test"] == "local"
    assert sorted(metrics["groups"]["zero_shot"]["directions"]) == ["de-zh", "zh-de"]
    assert sum(d["n"] for d in metrics["directions"]) == 12
    with pytest.raises(FileNotFoundError, match="train the recipe first"):
        args = build_parser("evaluate").parse_args(["evaluate", str(recipe_file), "--set", f"output_dir={tmp_path / 'none'}",
                                  "--test", "local", "--test-path", str(tmp_path / "test.jsonl")])
        args.func(args)

    args = build_parser("pseudo").parse_args(["pseudo", str(recipe_file), "--per-language", "3", "--out",
                              str(tmp_path / "pseudo.jsonl"), "--no-progress", "--device", "cpu"])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "pseudo.report.json").read_text())
    assert report["kept"] + sum(report["removed"].values()) == report["total"] > 0
    assert len((tmp_path / "pseudo.jsonl").read_text().splitlines()) == report["kept"]
    candidates = [json.loads(line) for line in (tmp_path / "pseudo.candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == report["total"]
    assert {(c["src_lang"], c["tgt_lang"]) for c in candidates} <= {("de", "zh"), ("zh", "de")}
    recipe = load_recipe(recipe_file)
    used = {t for p in stage_train_pairs(recipe, recipe.stages[0]) for t in (p.src, p.tgt)}
    assert not used & {c["src"] for c in candidates}           # only sentences stage 1 did not train on
    assert all(sum(c["src_lang"] == lang for c in candidates) <= 3 for lang in ("de", "zh"))


@pytest.mark.integration
def test_demo_tiny_size_on_the_embedded_model(tmp_path):
    """`lora-route demo --size tiny` end to end on the real Gemma 3 270M and the machine's gettext catalogs."""
    from lora_route.cli import build_parser

    out = tmp_path / "demo"
    args = build_parser("demo").parse_args(["demo", "--size", "tiny", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["groups"]) == {"base", "lora", "unilora_stage1", "unilora_stage2"}
    assert summary["directions"]["zero_shot"] == ["zh-de"]
    for run in summary["groups"].values():
        assert run["all"]["n_directions"] == 6 and run["all"]["bleu"] is not None
        assert 0.0 <= run["all"]["off_target_rate"] <= 1.0
    assert summary["training"]["unilora_stage2"]["stage2"]["steps"] == SIZES["tiny"].stage2_steps
    for name in ("summary.md", "samples.md", "base/heatmap_bleu.png", "unilora_stage2/outputs.jsonl"):
        assert (out / name).is_file(), name


def test_demo_command_rejects_bad_threads():
    from lora_route.cli import build_parser

    args = build_parser("demo").parse_args(["demo", "--size", "tiny", "--threads", "0"])
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        args.func(args)
