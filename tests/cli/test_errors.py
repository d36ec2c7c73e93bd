"""Bad input to every ``lora-route`` subcommand ends in one line naming the problem and exit code 2, with nothing
half-written; ``--debug`` (or LORA_ROUTE_DEBUG=1) shows the traceback instead."""
import json
import re

import pytest
import yaml

from lora_route.cli import main


def recipe(tmp_path, **training):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "output_dir": str(tmp_path / "run"),
        "adapter": {"method": "crosslora", "languages": ["en", "de"]},
        "training": training, "stages": [{"name": "stage1", "directions": "en_centric"}]}))
    return path


def run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def outputs_file(tmp_path, tgt_lang="xx"):
    path = tmp_path / "outputs.jsonl"
    path.write_text(json.dumps({"src_lang": "en", "tgt_lang": tgt_lang, "src": "Hello", "ref": "Hallo",
                                "hyp": "Hallo"}) + "\n")
    return path


CASES = {
    "train_missing_recipe": (lambda t: ["train", str(t / "none.yaml")], "recipe .*none.yaml does not exist"),
    "train_infinite_lr": (lambda t: ["train", str(recipe(t)), "--set", "training.lr=.inf"],
                          r"training.lr: Input should be a finite number \(got inf\)"),
    "train_nan_alpha": (lambda t: ["train", str(recipe(t)), "--set", "adapter.alpha=.nan"],
                        "adapter: alpha must be a finite positive number"),
    "train_string_for_float": (lambda t: ["train", str(recipe(t)), "--set", "training.warmup_ratio=some"],
                               "training.warmup_ratio: Input should be a valid number"),
    "train_bad_yaml_value": (lambda t: ["train", str(recipe(t)), "--set", "training.lr={"],
                             "the value is not valid YAML"),
    "train_stop_after_zero": (lambda t: ["train", str(recipe(t)), "--stop-after-steps", "0"],
                              "--stop-after-steps must be >= 1"),
    "evaluate_missing_outputs": (lambda t: ["evaluate", "--outputs", str(t / "none.jsonl"), "--out", str(t / "eval")],
                                 "no such JSONL file"),
    "evaluate_unknown_language": (lambda t: ["evaluate", "--outputs", str(outputs_file(t)), "--out",
                                             str(t / "eval"), "--no-langid"], "tgt_lang 'xx' is not a language"),
    "evaluate_base_without_languages": (lambda t: ["evaluate", "--base", "--model", str(t / "no-model"),
                                                   "--out", str(t / "eval")], "--languages is required"),
    "compare_missing_run": (lambda t: ["compare", str(t / "no-run")], "no metrics.json for run"),
    "params_bad_base_config": (lambda t: ["params", "--base-config", str(t / "none.json")], "none.json does not exist"),
    "merge_not_an_adapter": (lambda t: ["merge", str(t), "--out", str(t / "merged")], "does not exist|is not a"),
    "demo_zero_threads": (lambda t: ["demo", "--threads", "0", "--out", str(t / "demo")], "--threads must be >= 1"),
    "analyze_one_language": (lambda t: ["analyze", "layers", "--languages", "en", "--out", str(t / "a")],
                             "--languages needs at least two languages"),
    "bench_unknown_shape": (lambda t: ["bench", "--preset", "minimal", "--shapes", "nope", "--out-dir", str(t / "b")],
                            r"preset 'minimal' has no shape \['nope'\]"),
    "pseudo_untrained_stage": (lambda t: ["pseudo", str(recipe(t)), "--stage", "stage1", "--device", "cpu"],
                               "does not exist: train the recipe first"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys, case):
    argv, message = CASES[case]
    args = argv(tmp_path)
    inputs = sorted(tmp_path.rglob("*"))  # what the case wrote as its input
    code, err = run(capsys, args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lora-route {args[0]}: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert sorted(tmp_path.rglob("*")) == inputs, "the failed command wrote something"


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", "train", str(tmp_path / "none.yaml")])
    with pytest.raises(FileNotFoundError):
        main(["train", str(tmp_path / "none.yaml"), "--debug"])
    monkeypatch.setenv("LORA_ROUTE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["train", str(tmp_path / "none.yaml")])


def test_an_unknown_option_is_argparse_usage_error_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "recipe.yaml", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
