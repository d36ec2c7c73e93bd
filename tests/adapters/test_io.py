"""Checkpoints: exact save → load round trip, refusal of other bases / configs / corrupt files, merging."""
import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import randomize_adapters, tiny_causal_lm

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFileError,
    adapter_state_dict,
    load_adapters,
    save_adapters,
)
from lora_route.adapters.merging import merge_direction, unmerge_direction
from lora_route.adapters.patch import apply_routed_lora, route, routed_modules

LANGS = ["en", "de", "zh"]


def _trained(method="unilora", arch="llama", **kwargs):
    model = apply_routed_lora(tiny_causal_lm(arch), RoutedLoRAConfig(method, LANGS, r=4, r_uni=8, **kwargs))
    randomize_adapters(model, seed=1)
    with torch.no_grad():
        for module in routed_modules(model).values():
            if module.uni_A is not None:
                module.uni_A.add_(0.1 * torch.randn_like(module.uni_A))
    return model


def _logits(model, ids, src=("de", "en"), tgt=("en", "zh")):
    with route(model, list(src), list(tgt)):
        return model(ids).logits


@pytest.mark.parametrize("method", ["unilora", "mlas", "molora_topk"])
def test_save_load_round_trip_is_exact(tmp_path, method):
    model = _trained(method)
    ids = torch.randint(3, 128, (2, 5))
    expected = _logits(model, ids)
    save_adapters(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files
    fresh = load_adapters(tiny_causal_lm("llama"), tmp_path / "ckpt")
    assert fresh.routed_lora_config == model.routed_lora_config
    for key, value in adapter_state_dict(model).items():
        assert torch.equal(adapter_state_dict(fresh)[key], value), key
    assert torch.equal(_logits(fresh, ids), expected)
    again = load_adapters(apply_routed_lora(tiny_causal_lm("llama"), model.routed_lora_config), tmp_path / "ckpt")
    assert torch.equal(_logits(again, ids), expected)


def test_load_refuses_mismatches(tmp_path):
    model = _trained()
    folder = save_adapters(model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="another base model.*model_type"):
        load_adapters(tiny_causal_lm("qwen2"), folder)
    with pytest.raises(ValueError, match="another base model.*vocab_size"):
        load_adapters(tiny_causal_lm("llama", vocab_size=256), folder)
    other_config = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("crosslora", LANGS, r=4))
    with pytest.raises(ValueError, match="another adapter config.*method"):
        load_adapters(other_config, folder)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_adapters(tiny_causal_lm(), tmp_path / "nowhere")


def test_load_refuses_corrupt_or_reshaped_weights(tmp_path):
    folder = save_adapters(_trained(), tmp_path / "ckpt")
    weights = folder / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="sha256 differs"):
        load_adapters(tiny_causal_lm(), folder)
    # a well-formed file whose shapes disagree (sha256 updated so only the shape check can catch it)
    tensors = {k: v.detach().clone() for k, v in adapter_state_dict(_trained()).items()}
    key = next(iter(tensors))
    tensors[key] = tensors[key][:1].clone()
    save_file(tensors, str(weights))
    import hashlib
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterFileError, match=r"has shape \(1, 4, 32\) but the model needs \(3, 4, 32\)"):
        load_adapters(tiny_causal_lm(), folder)
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapters(tiny_causal_lm(), folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="PEFT adapter"):
        load_adapters(tiny_causal_lm(), folder)


def test_merge_direction_serves_that_direction_without_adapters():
    model = _trained()
    ids = torch.randint(3, 128, (2, 5))
    routed = _logits(model, ids, ("de", "de"), ("zh", "zh"))
    weights = {name: m.base_layer.weight.detach().clone() for name, m in routed_modules(model).items()}
    merge_direction(model, "de", "zh")
    torch.testing.assert_close(model(ids).logits, routed, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(model, ids, ("de", "de"), ("zh", "zh")), routed, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="de-zh merged.*en-de"):
        with route(model, ["en"], ["de"]):
            pass
    with pytest.raises(ValueError, match="already merged"):
        merge_direction(model, "en", "de")
    unmerge_direction(model)
    for name, module in routed_modules(model).items():
        torch.testing.assert_close(module.base_layer.weight, weights[name], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no direction is merged"):
        unmerge_direction(model)
    with pytest.raises(ValueError, match="learned router"):
        merge_direction(_trained("molora_topk"), "de", "en")


def test_save_from_a_wrapped_model_uses_unwrapped_names(tmp_path):
    model = _trained("crosslora")
    wrapper = torch.nn.Module()
    wrapper.module = model
    folder = save_adapters(wrapper, tmp_path / "ckpt")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert all(key.startswith("model.layers.") for key in config["tensors"])
    ids = torch.randint(3, 128, (2, 5))
    assert torch.equal(_logits(load_adapters(tiny_causal_lm(), folder), ids), _logits(model, ids))


def _model_state(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_an_interrupted_save_keeps_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """Saving over a checkpoint used to replace its files one by one: a crash between them left new weights under the
    old config (and the old checkpoint gone)."""
    import lora_route.adapters.io as io_module

    old_model, new_model = _trained(), _trained()
    randomize_adapters(new_model, seed=7)
    folder = save_adapters(old_model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def crash(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(io_module, "write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        save_adapters(new_model, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]       # no half-built folder left beside it
    monkeypatch.undo()
    ids = torch.randint(3, 128, (2, 5))
    assert torch.equal(_logits(load_adapters(tiny_causal_lm(), folder), ids), _logits(old_model, ids))


def test_a_crash_between_the_fallback_renames_is_recovered_on_the_next_load(tmp_path, monkeypatch):
    import os

    import lora_route.common.files as files

    old_model = _trained()
    folder = save_adapters(old_model, tmp_path / "ckpt")
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)   # a file system without atomic exchange
    real_rename, renames = os.rename, []

    def crash_on_second_rename(src, dst):
        renames.append((src, dst))
        if len(renames) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", crash_on_second_rename)
    new_model = _trained()
    randomize_adapters(new_model, seed=9)
    with pytest.raises(KeyboardInterrupt):
        save_adapters(new_model, folder)
    monkeypatch.undo()
    assert not folder.exists()                                          # the old folder is set aside, complete
    ids = torch.randint(3, 128, (2, 5))
    assert torch.equal(_logits(load_adapters(tiny_causal_lm(), folder), ids), _logits(old_model, ids))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_refuses_a_folder_of_other_files_and_non_finite_adapters(tmp_path):
    model = _trained()
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    with pytest.raises(AdapterFileError, match="refusing to replace it"):
        save_adapters(model, tmp_path / "project")
    assert (tmp_path / "project" / "notes.txt").read_text() == "mine"
    with torch.no_grad():
        next(iter(routed_modules(model).values())).lora_B[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_adapters(model, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


@pytest.mark.parametrize("edit", ["alpha", "languages", "src_expert"])
def test_a_hand_edited_config_is_refused(tmp_path, edit):
    """Edits that keep every shape (alpha, language order, expert maps) used to load silently with other outputs."""
    folder = save_adapters(_trained(), tmp_path / "ckpt")
    data = json.loads((folder / CONFIG_NAME).read_text())
    config = data["config"]
    if edit == "alpha":
        config["alpha"] = 64.0
    elif edit == "languages":
        config["languages"] = list(reversed(config["languages"]))
    else:
        config["src_expert"] = {"en": 1, "de": 0, "zh": 2}
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(AdapterFileError, match="was edited after it was saved"):
        load_adapters(tiny_causal_lm(), folder)


@pytest.mark.parametrize("damage", ["base_model_not_object", "pickle_as_safetensors", "folder_is_a_file",
                                    "missing_field", "non_finite_weights"])
def test_damaged_checkpoints_raise_adapter_errors_and_leave_the_model_as_it_was(tmp_path, damage):
    import hashlib
    import pickle

    folder = save_adapters(_trained(), tmp_path / "ckpt")
    data = json.loads((folder / CONFIG_NAME).read_text())
    target = folder
    if damage == "base_model_not_object":
        data["base_model"] = "llama"
        (folder / CONFIG_NAME).write_text(json.dumps(data))
        expected = "'base_model' must be a JSON object"
    elif damage == "missing_field":
        del data["tensors"]
        (folder / CONFIG_NAME).write_text(json.dumps(data))
        expected = "'tensors' must be a JSON object"
    elif damage == "pickle_as_safetensors":
        (folder / WEIGHTS_NAME).write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
        data["weights_sha256"] = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
        (folder / CONFIG_NAME).write_text(json.dumps(data))
        expected = "not a readable safetensors file"
    elif damage == "folder_is_a_file":
        target = folder / WEIGHTS_NAME
        expected = "is a file; pass the adapter folder"
    else:
        tensors = {k: v.detach().clone() for k, v in adapter_state_dict(_trained()).items()}
        next(iter(tensors.values()))[0, 0, 0] = float("inf")
        save_file(tensors, str(folder / WEIGHTS_NAME))
        data["weights_sha256"] = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
        (folder / CONFIG_NAME).write_text(json.dumps(data))
        expected = "non-finite"
    model = tiny_causal_lm()
    before = _model_state(model)
    with pytest.raises(AdapterFileError, match=expected):
        load_adapters(model, target)
    assert not hasattr(model, "routed_lora_config")
    after = _model_state(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_loading_into_a_merged_model_is_refused_and_unmerge_restores_the_base_exactly(tmp_path):
    """merge → load_adapters → unmerge used to subtract the newly loaded ΔW and leave the base weights drifted."""
    model = _trained()
    other = save_adapters(_trained("unilora"), tmp_path / "other")
    randomize_adapters(model, seed=5)
    weights = {name: m.base_layer.weight.detach().clone() for name, m in routed_modules(model).items()}
    merge_direction(model, "de", "zh")
    with pytest.raises(ValueError, match="unmerge_direction"):
        load_adapters(model, other)
    randomize_adapters(model, seed=11)      # the adapters change while merged (as a load used to change them)
    unmerge_direction(model)
    for name, module in routed_modules(model).items():
        torch.testing.assert_close(module.base_layer.weight, weights[name], rtol=0, atol=1e-6)
