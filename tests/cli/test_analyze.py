"""The analyze / merge commands end to end on a tiny model saved to disk and a local pairs file."""
import json

import pytest
import torch
from tiny_models import tiny_causal_lm
from train_helpers import tiny_tokenizer, toy_pairs

from lora_route.cli import build_parser


def run(argv):
    args = build_parser(argv[0]).parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from lora_route.data.corpus import write_pairs_jsonl

    root = tmp_path_factory.mktemp("cli")
    tiny_causal_lm("gemma3", layers=3).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    directions = [("de", "en"), ("en", "de"), ("zh", "en"), ("en", "zh")]
    write_pairs_jsonl(toy_pairs(directions, count=8), root / "pairs.jsonl")
    return root


def common(assets, out):
    return ["--model", str(assets / "model"), "--pairs-file", str(assets / "pairs.jsonl"), "--per-direction", "4",
            "--batch-size", "4", "--out", str(out)]


def test_analyze_layers(assets, tmp_path, capsys):
    assert run(["analyze", "layers", *common(assets, tmp_path), "--student-layers", "2"]) == 0
    data = json.loads((tmp_path / "layers.json").read_text())
    assert data["num_layers"] == 3 and len(data["relevance"]) == 4 and len(data["projected_relevance"]) == 2
    assert sorted(data["ranking"]) == [0, 1, 2] and len(data["teacher_to_student"]) == 2
    assert "ranking" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_analyze_neurons_report_and_mlas_init(assets, tmp_path):
    assert run(["analyze", "neurons", *common(assets, tmp_path), "--r", "2", "--threshold", "0.4"]) == 0
    report = json.loads((tmp_path / "neurons.json").read_text())
    module = report["modules"]["model.layers.0.mlp.gate_proj"]
    assert module["general"] + sum(module["specific"].values()) == module["neurons"] == 64
    out = tmp_path / "init"
    assert run(["analyze", "neurons", *common(assets, out), "--r", "2", "--layers", "1,2", "--ablation", "Mr-spe",
                "--threshold", "0.4", "--init-out", str(out / "adapters")]) == 0
    init = json.loads((out / "mlas_init.json").read_text())
    assert init["method"] == "molora_static" and init["ablation"] == "-Mr-spe" and len(init["teacher_layers"]) == 2
    assert (out / "adapters" / "adapter_model.safetensors").is_file()


def test_analyze_conflicts_with_training(assets, tmp_path):
    assert run(["analyze", "conflicts", *common(assets, tmp_path), "--directions", "de-en,en-de", "--r", "2",
                "--train-steps", "1", "--train-per-direction", "4", "--eval-per-direction", "2"]) == 0
    grads = json.loads((tmp_path / "gradient_cosine.json").read_text())
    assert grads["layers"] == [0, 1, 2] and len(grads["overall"]) == 2
    result = json.loads((tmp_path / "conflicts.json").read_text())
    assert set(result["delta"]) == {"together", "grouped"}
    assert (tmp_path / "conflicts_delta.png").is_file() and (tmp_path / "gradient_cosine.png").is_file()


def test_merge_command_on_a_dat_checkpoint(assets, tmp_path):
    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.io import load_adapters, save_adapters
    from lora_route.adapters.patch import apply_routed_lora, routed_modules
    from lora_route.models.loading import load_model

    model, _ = load_model(str(assets / "model"))
    config = RoutedLoRAConfig(method="dat", languages=["en", "de", "is", "zh"], r=2, alpha=4.0,
                              language_groups={"de": "g1", "is": "g1", "zh": "g6"})
    apply_routed_lora(model, config)
    with torch.no_grad():
        for module in routed_modules(model).values():
            module.lora_B.normal_(0, 0.1)
    save_adapters(model, tmp_path / "dat")
    assert run(["merge", str(tmp_path / "dat"), "--out", str(tmp_path / "datm"), "--model", str(assets / "model"),
                "--method", "ties", "--density", "0.5", "--weights", "de=2,is=1"]) == 0
    report = json.loads((tmp_path / "datm" / "datm_report.json").read_text())
    assert report["adapters_before"] == 5 and report["adapters_after"] == 4
    merged, _ = load_model(str(assets / "model"))
    load_adapters(merged, tmp_path / "datm")
    assert merged.routed_lora_config.routing_table["is-en"] == "xx_en.g1"
    lora = tmp_path / "lora"
    plain, _ = load_model(str(assets / "model"))
    save_adapters(apply_routed_lora(plain, RoutedLoRAConfig(method="lora", languages=["en", "de"], r=2)), lora)
    with pytest.raises(ValueError, match="method='dat'"):
        run(["merge", str(lora), "--out", str(tmp_path / "x"), "--model", str(assets / "model")])
