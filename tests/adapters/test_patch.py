"""apply_routed_lora / route on tiny models of the real architectures."""
import pytest
import torch
from tiny_models import ARCHITECTURES, randomize_adapters, tiny_causal_lm

import lora_route.adapters.patch as patch_module
from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.layer import RoutedLoRALinear
from lora_route.adapters.patch import apply_routed_lora, init_from, load_balancing_loss, route, routed_modules

LANGS = ["en", "de", "zh", "cs"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_batch_rows_equal_each_direction_alone(arch):
    model = tiny_causal_lm(arch)
    ids = torch.randint(3, 128, (3, 6), generator=torch.Generator().manual_seed(0))
    base_logits = model(ids).logits
    apply_routed_lora(model, RoutedLoRAConfig("unilora", LANGS, r=4, r_uni=8))
    modules = routed_modules(model)
    assert len(modules) == 3 * model.config.num_hidden_layers
    assert all(name.endswith(("gate_proj", "up_proj", "down_proj")) for name in modules)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name or ".uni_" in name for name in trainable)
    src, tgt = ["de", "en", "zh"], ["en", "cs", "de"]
    with route(model, src, tgt):
        torch.testing.assert_close(model(ids).logits, base_logits)  # B starts at zero
    randomize_adapters(model)
    with route(model, src, tgt):
        mixed = model(ids).logits
    assert not torch.allclose(mixed, base_logits, atol=1e-3)
    for i in range(3):
        with route(model, [src[i]], [tgt[i]]):
            alone = model(ids[i : i + 1]).logits
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_target_modules_by_regex_and_layer_filter():
    model = tiny_causal_lm("qwen2")
    config = RoutedLoRAConfig("crosslora", LANGS, target_modules=r".*self_attn\.(q|v)_proj", layers=[1])
    apply_routed_lora(model, config)
    assert list(routed_modules(model)) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert model.routed_lora_config is config


def test_patch_errors():
    with pytest.raises(ValueError, match="no nn.Linear module"):
        apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("lora", LANGS, target_modules=("nothing_here",)))
    with pytest.raises(ValueError, match="is a LlamaMLP"):
        apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("lora", LANGS, target_modules=("mlp",)))
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\]"):
        apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("lora", LANGS, layers=[0, 7]))
    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("lora", LANGS))
    with pytest.raises(ValueError, match="already patched"):
        apply_routed_lora(model, RoutedLoRAConfig("lora", LANGS))
    with pytest.raises(ValueError, match="no routed LoRA adapters"):
        with route(tiny_causal_lm(), ["en"], ["de"]):
            pass


def test_bad_routes_raise():
    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("crosslora", LANGS, r=4))
    ids = torch.randint(3, 128, (2, 4))
    with pytest.raises(ValueError, match="'fr'"):
        with route(model, ["fr", "en"], ["en", "de"]):
            pass
    with pytest.raises(ValueError, match="2 languages but tgt has 1"):
        with route(model, ["de", "en"], ["en"]):
            pass
    with pytest.raises(ValueError, match="2 sequences but route\\(\\) was given 3"):
        with route(model, ["de", "en", "zh"], ["en", "de", "en"]):
            model(ids)
    with pytest.raises(ValueError, match="no languages set"):
        model(ids)


def test_language_free_method_runs_without_route_and_single_codes_broadcast():
    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("lora", LANGS, r=4))
    randomize_adapters(model)
    ids = torch.randint(3, 128, (2, 4))
    free = model(ids).logits
    with route(model, "de", "en"):
        torch.testing.assert_close(model(ids).logits, free)
    cross = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("crosslora", LANGS, r=4))
    randomize_adapters(cross)
    with route(cross, "de", "zh"):
        broadcast = cross(ids).logits
    with route(cross, ["de", "de"], ["zh", "zh"]):
        torch.testing.assert_close(cross(ids).logits, broadcast)


def test_sequences_repeated_k_times_reuse_their_route_and_plan_is_built_once(monkeypatch):
    model = apply_routed_lora(tiny_causal_lm("mistral"), RoutedLoRAConfig("crosslora", LANGS, r=4))
    randomize_adapters(model)
    ids = torch.randint(3, 128, (2, 5))
    calls = []
    real_plan = patch_module.plan_routes
    monkeypatch.setattr(patch_module, "plan_routes", lambda *a: calls.append(1) or real_plan(*a))
    with route(model, ["de", "zh"], ["en", "cs"]):
        expanded = model(ids.repeat_interleave(3, dim=0)).logits
        assert len(calls) == 1  # one plan for the 6 routed layers of this forward
        model(ids.repeat_interleave(3, dim=0))
        assert len(calls) == 1  # same shape inside the same route block: reused
        base = model(ids).logits
    torch.testing.assert_close(expanded, base.repeat_interleave(3, dim=0), rtol=1e-5, atol=1e-5)


def test_route_blocks_nest_and_restore():
    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("crosslora", LANGS, r=4))
    randomize_adapters(model)
    ids = torch.randint(3, 128, (1, 4))
    with route(model, ["de"], ["en"]):
        outer = model(ids).logits
        with route(model, ["zh"], ["cs"]):
            inner = model(ids).logits
        torch.testing.assert_close(model(ids).logits, outer)
    assert not torch.allclose(inner, outer)


def test_mlas_general_route_everywhere_specific_route_on_chosen_layers():
    model = tiny_causal_lm()
    config = RoutedLoRAConfig("mlas", LANGS, r=4, directions=[("de", "en"), ("en", "de")], specific_layers=[1])
    apply_routed_lora(model, config)
    modules = routed_modules(model)
    assert modules["model.layers.0.mlp.up_proj"].lora_A.shape[0] == 1
    assert modules["model.layers.1.mlp.up_proj"].lora_A.shape[0] == 3
    ids = torch.randint(3, 128, (2, 4))
    general = {name: (torch.randn(4, m.in_features) * 0.3, torch.randn(m.out_features, 4) * 0.3)
               for name, m in modules.items()}
    init_from(model, {name: {"general": pair} for name, pair in general.items()})
    with route(model, ["de", "en"], ["en", "de"]):
        only_general = model(ids).logits
    init_from(model, {"model.layers.1.mlp.up_proj": {"de-en": general["model.layers.1.mlp.up_proj"]}})
    with route(model, ["de", "en"], ["en", "de"]):
        both = model(ids).logits
    torch.testing.assert_close(both[1], only_general[1])  # en→de's specific LoRA is still zero
    assert not torch.allclose(both[0], only_general[0])
    with pytest.raises(ValueError, match="en-zh has no expert"):
        with route(model, ["en"], ["zh"]):
            pass
    with pytest.raises(ValueError, match="no routed module named"):
        init_from(model, {"lm_head": {"general": general["model.layers.1.mlp.up_proj"]}})


def test_dat_routes_by_table():
    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("dat", ["en", "de", "cs", "is"], r=4))
    randomize_adapters(model)
    ids = torch.randint(3, 128, (2, 4))
    with route(model, ["en", "en"], ["de", "is"]):  # same En→XX group adapter (germanic)
        logits = model(ids[:1].repeat(2, 1)).logits
    torch.testing.assert_close(logits[0], logits[1])
    with pytest.raises(ValueError, match="de-cs"):
        with route(model, ["de"], ["cs"]):
            pass


def test_molora_topk_loss_is_exposed():
    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("molora_topk", LANGS, r=4, top_k=2))
    with pytest.raises(ValueError, match="no forward"):
        load_balancing_loss(model)
    logits = model(torch.randint(3, 128, (2, 4))).logits
    loss = load_balancing_loss(model)
    assert loss.ndim == 0 and loss > 0
    (logits.sum() + loss).backward()
    router = next(iter(routed_modules(model).values())).router
    assert router.weight.grad is not None
    with pytest.raises(ValueError, match="no learned router"):
        load_balancing_loss(apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("lora", LANGS)))
    assert isinstance(next(iter(routed_modules(model).values())), RoutedLoRALinear)


def test_patched_layers_follow_the_models_train_eval_mode():
    model = tiny_causal_lm()  # eval mode
    apply_routed_lora(model, RoutedLoRAConfig("lora", LANGS))
    assert not any(m.training for m in routed_modules(model).values())
    model.train()
    assert all(m.training for m in routed_modules(model).values())


class _Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: the patched model as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_route_and_routed_modules_see_through_wrappers():
    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("crosslora", LANGS, r=4))
    randomize_adapters(model)
    wrapped = _Wrapper(model)
    ids = torch.randint(3, 128, (1, 4))
    assert list(routed_modules(wrapped)) == list(routed_modules(model))
    with route(wrapped, ["de"], ["zh"]):
        through_wrapper = wrapped(ids).logits
    with route(model, ["de"], ["zh"]):
        torch.testing.assert_close(model(ids).logits, through_wrapper)


def test_route_blocks_in_concurrent_threads_are_isolated():
    """Two threads, each in its own route() block on one model, used to get each other's adapters (no error)."""
    import threading

    model = tiny_causal_lm("llama")
    apply_routed_lora(model, RoutedLoRAConfig("crosslora", LANGS, r=4))
    randomize_adapters(model)
    ids = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    directions = {"a": (["de", "zh"], ["en", "cs"]), "b": (["en", "cs"], ["zh", "de"])}
    expected = {}
    for name, (src, tgt) in directions.items():
        with route(model, src, tgt):
            expected[name] = model(ids).logits
    assert not torch.allclose(expected["a"], expected["b"], atol=1e-3)
    barrier = threading.Barrier(2)
    wrong: dict[str, int] = {}
    errors: list[BaseException] = []

    def serve(name):
        src, tgt = directions[name]
        try:
            with route(model, src, tgt):
                barrier.wait()  # both blocks are open before either thread runs a forward
                wrong[name] = sum(not torch.allclose(model(ids).logits, expected[name], atol=1e-5) for _ in range(20))
        except BaseException as error:  # surfaced in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(name,)) for name in directions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert wrong == {"a": 0, "b": 0}


def test_a_copied_or_pickled_model_has_its_own_routing_state():
    import copy
    import pickle

    model = apply_routed_lora(tiny_causal_lm(), RoutedLoRAConfig("crosslora", LANGS, r=4))
    ids = torch.randint(3, 128, (1, 4), generator=torch.Generator().manual_seed(2))
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with route(twin, ["de"], ["en"]):
            with route(model, ["zh"], ["cs"]):
                assert twin(ids).logits.shape == (1, 4, 128)
