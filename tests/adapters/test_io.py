"""Checkpoints: exact save → load round trip, refusal of other bases / configs / corrupt files, merging."""
import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import randomize_adapters, tiny_causal_lm

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.io import CONFIG_NAME, WEIGHTS_NAME, adapter_state_dict, load_adapters, save_adapters
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
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
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
    with pytest.raises(ValueError, match="checkpoint shape"):
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
