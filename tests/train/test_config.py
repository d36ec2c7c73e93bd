"""Recipe validation, --set overrides and the shipped configs."""
from pathlib import Path

import pytest
import yaml

from lora_route.train.config import ConfigError, apply_overrides, load_recipe, parse_recipe

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


def minimal():
    return {"name": "t", "output_dir": "runs/t", "adapter": {"method": "crosslora", "languages": ["en", "de"]},
            "stages": [{"name": "stage1", "directions": "en_centric"},
                       {"name": "stage2", "directions": "all", "replay_from": "stage1", "replay_fraction": 0.05}]}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    recipe = load_recipe(path)
    assert recipe.stages and recipe.adapter_config().method
    for stage in recipe.stages:
        assert len(recipe.fingerprint(stage)) == 16


def test_expected_recipes_exist():
    names = {p.stem for p in CONFIGS}
    for recipe in ("unilora", "crosslora", "lora", "molora_top1", "molora_static", "unilora-no-unicore",
                   "unilora-no-stage1", "unilora-shared-expert", "unilora-group-experts"):
        assert recipe in names and f"{recipe}-demo" in names


def test_overrides_and_stage_merging():
    raw = apply_overrides(minimal(), ["training.lr=1e-4", "stages.1.training.epochs=2", "data.max_length=64",
                                      "adapter.r=8", "stages.0.cap_per_direction=100"])
    recipe = parse_recipe(raw)
    assert recipe.training.lr == 1e-4 and recipe.adapter_config().r == 8
    stage2 = recipe.stage("stage2")
    assert recipe.stage_training(stage2).epochs == 2 and recipe.stage_training(recipe.stage("stage1")).epochs == 1
    assert recipe.stage_data(stage2).languages == ["en", "de"] and recipe.stage_data(stage2).max_length == 64
    assert recipe.stages[0].cap_per_direction == 100
    assert recipe.fingerprint(recipe.stages[0]) != parse_recipe(minimal()).fingerprint(parse_recipe(minimal()).stages[0])
    same = parse_recipe(apply_overrides(minimal(), ["training.eval_every=7"]))
    assert same.fingerprint(same.stages[0]) == parse_recipe(minimal()).fingerprint(parse_recipe(minimal()).stages[0])


@pytest.mark.parametrize("edit, message", [
    (["training.lrr=1"], r"training.lrr: unknown key; allowed: \['batch_size'"),
    (["training.scheduler=cyclic"], "training.scheduler"),
    (["training.batch_size=0"], "batch_size"),
    (["stages.1.replay_from=stage9"], "replay_from"),
    (["stages.0.directions=sideways"], "directions"),
    (["stages.1.init=warm"], "init"),
    (["stages.0.training.epochs=-1"], "epochs"),
    (["data.source=web"], "data.source"),
    (["data.template=no source field"], "template"),
    (["adapter.method=magic"], "adapter"),
    (["stages.1.name=stage1"], "used twice"),
    (["stages.5.name=x"], "not an index"),
    (["bogus"], "key.path=value"),
])
def test_invalid_recipes_name_the_field(edit, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(apply_overrides(minimal(), edit))


@pytest.mark.parametrize("edit, message", [
    (["training.lr=fast"], r"training.lr: Input should be a valid number \(got 'fast'\)"),
    (["training.lr=null"], r"training.lr: Input should be a valid number \(got None\)"),
    (["training.lr=.inf"], r"training.lr: Input should be a finite number \(got inf\)"),
    (["adapter.alpha=.nan"], "adapter: alpha must be a finite positive number"),
    (["adapter.dropout=.nan"], "adapter: dropout"),
    (["training.epochs=.inf"], r"training.epochs: Input should be a finite number"),
    (["stages.1.training.epochs=.inf"], r"stages\[stage2\].training.epochs: Input should be a finite number"),
    (["training.deterministic=yes please"], r"training.deterministic: Input should be a valid boolean"),
    (["data.chat_template=1"], r"data.chat_template: Input should be a valid boolean \(got 1\)"),
    (["output_dir=null"], r"output_dir: Input should be a valid string \(got None\)"),
    (["training.batch_size=true"], r"training.batch_size: Input should be a valid integer \(got True\)"),
    (["name.first=1"], r"--set name.first: cannot descend into a str"),
    (["training.lr=0.001", "training.lr.value=1"], r"--set training.lr.value: cannot descend into a float"),
    (["training.lr=[unclosed"], r"--set 'training.lr=\[unclosed': the value is not valid YAML"),
])
def test_mistyped_and_non_finite_fields_are_refused_before_any_model_loads(edit, message):
    """Each of these used to pass validation (and train to NaN, or fail later with a TypeError deep inside)."""
    with pytest.raises(ConfigError, match=message):
        parse_recipe(apply_overrides(minimal(), edit))


def test_missing_keys_and_files(tmp_path):
    raw = minimal()
    del raw["stages"]
    with pytest.raises(ConfigError, match="stages: missing key"):
        parse_recipe(raw)
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    assert load_recipe(good, ["seed=5"]).seed == 5
