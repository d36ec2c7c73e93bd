"""Against the real PEFT: the same weights give the same logits, and exported directions load in PEFT."""
import copy

import pytest
import torch
from tiny_models import randomize_adapters, tiny_causal_lm

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.io import export_all, export_peft
from lora_route.adapters.patch import apply_routed_lora, route, routed_modules

peft = pytest.importorskip("peft")

LANGS = ["en", "de", "zh"]
TARGETS = ["gate_proj", "up_proj", "down_proj"]


def _peft_modules(peft_model):
    return {name.removeprefix("base_model.model."): module for name, module in peft_model.named_modules()
            if isinstance(module, peft.tuners.lora.Linear)}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lora_method_equals_peft_lora(arch):
    base = tiny_causal_lm(arch)
    ours = apply_routed_lora(copy.deepcopy(base), RoutedLoRAConfig("lora", LANGS, r=4, alpha=8.0, dropout=0.0))
    randomize_adapters(ours)
    theirs = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))
    peft_modules = _peft_modules(theirs)
    assert set(peft_modules) == set(routed_modules(ours))
    with torch.no_grad():
        for name, module in routed_modules(ours).items():
            peft_modules[name].lora_A["default"].weight.copy_(module.lora_A[0])
            peft_modules[name].lora_B["default"].weight.copy_(module.lora_B[0])
    ids = torch.randint(3, 128, (3, 7))
    torch.testing.assert_close(ours(ids).logits, theirs(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_molora_static_mixed_batch_equals_peft_per_adapter_rows():
    base = tiny_causal_lm("qwen2")
    config = RoutedLoRAConfig("molora_static", LANGS, r=4, alpha=8.0, dropout=0.0)
    ours = apply_routed_lora(copy.deepcopy(base), config)
    randomize_adapters(ours)
    names = [f"{s}-{t}" for s, t in config.directions]
    lora_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    theirs = peft.get_peft_model(base, lora_config, adapter_name=names[0])
    for name in names[1:]:
        theirs.add_adapter(name, lora_config)
    peft_modules = _peft_modules(theirs)
    with torch.no_grad():
        for module_name, module in routed_modules(ours).items():
            for index, name in enumerate(names):
                peft_modules[module_name].lora_A[name].weight.copy_(module.lora_A[index])
                peft_modules[module_name].lora_B[name].weight.copy_(module.lora_B[index])
    src, tgt = ["de", "zh", "en", "de"], ["en", "de", "zh", "zh"]
    ids = torch.randint(3, 128, (4, 6))
    with route(ours, src, tgt):
        mixed = ours(ids).logits
    for row, (s, t) in enumerate(zip(src, tgt)):
        theirs.set_adapter(f"{s}-{t}")
        expected = theirs(input_ids=ids[row : row + 1]).logits
        torch.testing.assert_close(mixed[row : row + 1], expected, rtol=1e-5, atol=1e-5)
    theirs.eval()
    peft_mixed = theirs(input_ids=ids, adapter_names=[f"{s}-{t}" for s, t in zip(src, tgt)]).logits
    torch.testing.assert_close(mixed, peft_mixed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,kwargs", [
    ("unilora", {"r_uni": 8}),
    ("crosslora", {"target_modules": r".*\.(q_proj|down_proj)", "layers": [1]}),
    ("mlas", {"specific_layers": [0]}),
    ("dat", {}),
])
def test_exported_direction_reproduces_our_logits_in_peft(tmp_path, method, kwargs):
    base = tiny_causal_lm("llama")
    ours = apply_routed_lora(copy.deepcopy(base), RoutedLoRAConfig(method, LANGS, r=4, alpha=12.0, **kwargs))
    randomize_adapters(ours, seed=2)
    with torch.no_grad():
        for module in routed_modules(ours).values():
            if module.uni_A is not None:
                module.uni_A.add_(0.2 * torch.randn_like(module.uni_A))
    src, tgt = ("de", "en") if method == "dat" else ("zh", "de")
    ids = torch.randint(3, 128, (2, 6))
    with route(ours, src, tgt):
        expected = ours(ids).logits
    folder = export_peft(ours, tmp_path / f"{src}-{tgt}", src, tgt)
    loaded = peft.PeftModel.from_pretrained(base, str(folder))
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_export_all_writes_every_direction(tmp_path):
    ours = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("crosslora", LANGS, r=4))
    folders = export_all(ours, tmp_path)
    assert sorted(folders) == sorted(f"{s}-{t}" for s in LANGS for t in LANGS if s != t)
    assert all((folder / "adapter_config.json").is_file() for folder in folders.values())
    assert (tmp_path / "directions.json").is_file()
    with pytest.raises(ValueError, match="'fr'"):
        export_peft(ours, tmp_path / "x", "fr", "en")
