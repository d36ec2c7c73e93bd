"""RoutedLoRALinear: row-by-row agreement with the formula, initialisation, gradients, dropout, merge, MoLoRA top-k."""
import math

import pytest
import torch
from torch import nn

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.layer import RoutedLoRALinear
from lora_route.kernels.plan import plan_routes

LANGS = ["en", "de", "zh"]


class FixedRoutes:
    """A route source returning given per-row indices (stands in for the model's RoutingState)."""

    def __init__(self, *routes):
        self.routes = routes

    def rows(self, x, route_ids):
        return [(a, u, b, 1.0, plan_routes(a, b, u)) for a, b, u in (self.routes[i] for i in route_ids)]


def _layer(method="crosslora", d_in=12, d_out=10, seed=0, **kwargs):
    torch.manual_seed(seed)
    config = RoutedLoRAConfig(method, LANGS, r=4, alpha=8.0, dropout=0.0, **kwargs)
    layer = RoutedLoRALinear(nn.Linear(d_in, d_out), config, layer_index=0)
    with torch.no_grad():  # distinct experts on both sides, so that the tests tell the routes apart
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    return layer


def test_crosslora_unilora_rows_follow_the_formula():
    for method in ("crosslora", "unilora"):
        layer = _layer(method, r_uni=6)
        a = torch.tensor([0, 1, 2, 1, 0])
        b = torch.tensor([1, 0, 2, 2, 0])
        u = torch.zeros(5, dtype=torch.int64) if method == "unilora" else None
        layer.route_source = FixedRoutes((a, b, u))
        x = torch.randn(5, 12)
        out = layer(x)
        core = layer.uni_B @ layer.uni_A if method == "unilora" else torch.eye(4)
        for t in range(5):
            expected = layer.base_layer(x[t]) + layer.scaling * layer.lora_B[b[t]] @ core @ layer.lora_A[a[t]] @ x[t]
            torch.testing.assert_close(out[t], expected, rtol=1e-5, atol=1e-5)


def test_initialisation_starts_at_the_base_layer_and_core_is_identity():
    torch.manual_seed(0)
    config = RoutedLoRAConfig("unilora", LANGS, r=4, r_uni=16, dropout=0.0)
    base = nn.Linear(64, 8)
    layer = RoutedLoRALinear(base, config, 0)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(64)
    assert layer.lora_A.std() > 0.5 / math.sqrt(64) / math.sqrt(3)
    torch.testing.assert_close(layer.core()[0], torch.eye(4), atol=1e-6, rtol=0)
    small = RoutedLoRALinear(nn.Linear(64, 8), RoutedLoRAConfig("unilora", LANGS, r=4, r_uni=2), 0)
    core = small.core()[0]
    torch.testing.assert_close(core @ core, core, atol=1e-6, rtol=0)  # projection of rank r_uni
    layer.route_source = FixedRoutes((torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([0, 0])))
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer(x), base(x))


@pytest.mark.parametrize("method", ["crosslora", "unilora", "molora_static", "dat"])
def test_cross_connected_methods_start_every_source_expert_from_one_draw(method):
    torch.manual_seed(0)
    layer = RoutedLoRALinear(nn.Linear(64, 8), RoutedLoRAConfig(method, LANGS, r=4, r_uni=8), 0)
    assert layer.lora_A.shape[0] >= 3
    tied = all(torch.equal(layer.lora_A[0], expert) for expert in layer.lora_A[1:])
    assert tied == (method in ("crosslora", "unilora"))
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(64) and layer.lora_A[0].std() > 0.5 / math.sqrt(64 * 3)


def test_independent_source_init_draws_every_source_expert_on_its_own():
    torch.manual_seed(0)
    config = RoutedLoRAConfig("unilora", LANGS, r=4, r_uni=8, independent_source_init=True)
    layer = RoutedLoRALinear(nn.Linear(64, 8), config, 0)
    assert not any(torch.equal(layer.lora_A[0], expert) for expert in layer.lora_A[1:])
    assert RoutedLoRAConfig.from_dict(config.to_dict()).independent_source_init is True
    with pytest.raises(ValueError, match="independent_source_init applies to crosslora and unilora"):
        RoutedLoRAConfig("lora", LANGS, independent_source_init=True)
    with pytest.raises(ValueError, match="must be true or false"):
        RoutedLoRAConfig("crosslora", LANGS, independent_source_init="yes")


def test_gradients_reach_every_adapter_factor_and_not_the_base():
    layer = _layer("unilora", r_uni=6)
    layer.base_layer.requires_grad_(False)
    layer.route_source = FixedRoutes((torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]), torch.zeros(3, dtype=torch.long)))
    x = torch.randn(3, 12, requires_grad=True)
    layer(x).pow(2).sum().backward()
    for param in (layer.lora_A, layer.lora_B, layer.uni_A, layer.uni_B):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is None
    assert x.grad.abs().sum() > 0


def test_dropout_applies_to_the_adapter_input_only():
    torch.manual_seed(0)
    config = RoutedLoRAConfig("lora", LANGS, r=4, dropout=0.5)
    layer = RoutedLoRALinear(nn.Linear(12, 10), config, 0)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.route_source = FixedRoutes((torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), None))
    x = torch.randn(6, 12)
    layer.train()
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    expected = layer.base_layer(x) + layer.scaling * dropped @ layer.lora_A[0].t() @ layer.lora_B[0].t()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    layer.eval()
    eval_expected = layer.base_layer(x) + layer.scaling * x @ layer.lora_A[0].t() @ layer.lora_B[0].t()
    torch.testing.assert_close(layer(x), eval_expected, rtol=1e-5, atol=1e-5)


def test_merge_folds_one_direction_and_unmerge_restores():
    layer = _layer("unilora", r_uni=6)
    original = layer.base_layer.weight.detach().clone()
    route = (torch.full((4,), 2), torch.full((4,), 1), torch.zeros(4, dtype=torch.long))
    layer.route_source = FixedRoutes(route)
    x = torch.randn(4, 12)
    routed = layer(x)
    layer.merge([(2, 0, 1)])  # (a, u, b)
    torch.testing.assert_close(layer(x), routed, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already merged"):
        layer.merge([(0, 0, 0)])
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, original, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="outside this layer's banks"):
        layer.delta_weight([(5, 0, 0)])


def test_init_from_sets_factors_and_checks_shapes():
    config = RoutedLoRAConfig("mlas", LANGS, r=4)
    layer = RoutedLoRALinear(nn.Linear(12, 10), config, 0)
    a, b = torch.randn(4, 12), torch.randn(10, 4)
    layer.init_from({"general": (a, b), "de-en": (2 * a, b)})
    torch.testing.assert_close(layer.lora_A[0], a)
    torch.testing.assert_close(layer.lora_A[config.adapter_index("de-en")], 2 * a)
    with pytest.raises(ValueError, match="needs A \\(4, 12\\)"):
        layer.init_from({"general": (torch.randn(3, 12), b)})
    with pytest.raises(ValueError, match="no adapter named"):
        layer.init_from({"fr-en": (a, b)})


def test_molora_topk_mixes_the_top_experts_by_gate():
    torch.manual_seed(0)
    config = RoutedLoRAConfig("molora_topk", LANGS, r=4, alpha=8.0, dropout=0.0, num_experts=4, top_k=2)
    layer = RoutedLoRALinear(nn.Linear(12, 10), config, 0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 12)
    out = layer(x)
    flat = x.reshape(-1, 12)
    probs = layer.router(flat).softmax(-1)
    gates, experts = probs.topk(2, dim=-1)
    for t in range(flat.shape[0]):
        expected = layer.base_layer(flat[t])
        for j in range(2):
            e = experts[t, j]
            expected = expected + gates[t, j] * layer.scaling * layer.lora_B[e] @ layer.lora_A[e] @ flat[t]
        torch.testing.assert_close(out.reshape(-1, 10)[t], expected, rtol=1e-5, atol=1e-5)
    counts = torch.bincount(experts.reshape(-1), minlength=4).float() / experts.numel()
    torch.testing.assert_close(layer.load_balancing_loss, 4 * (counts * probs.mean(0)).sum())
    (out.sum() + layer.load_balancing_loss).backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_wraps_only_linear_layers_and_half_precision_bases_keep_fp32_adapters():
    config = RoutedLoRAConfig("lora", LANGS)
    with pytest.raises(TypeError, match="nn.Linear"):
        RoutedLoRALinear(nn.Conv1d(3, 3, 1), config)
    layer = RoutedLoRALinear(nn.Linear(8, 8).to(torch.bfloat16), config)
    assert layer.lora_A.dtype == torch.float32
    layer.route_source = FixedRoutes((torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), None))
    out = layer(torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_calls_without_grad_fold_the_unicore_into_the_source_experts_and_follow_factor_changes():
    """Decoding applies U·A[a] from banks kept between calls; they must give the grad-mode result and be rebuilt when
    any factor changes (an optimizer step, a load)."""
    layer = _layer("unilora", r_uni=6)
    a = torch.tensor([0, 1, 2, -1, 1])
    u = torch.zeros(5, dtype=torch.int64).where(a >= 0, -1)
    layer.route_source = FixedRoutes((a, torch.tensor([1, 0, 2, -1, 2]), u))
    x = torch.randn(5, 12)
    for factor in ("uni_A", "uni_B", "lora_A", "lora_B"):
        with torch.no_grad():
            folded = layer(x)
        torch.testing.assert_close(folded, layer(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(folded[3], layer.base_layer(x)[3])
        banks = layer.inference_banks(torch.float32)
        assert all(kept is new for kept, new in zip(banks, layer.inference_banks(torch.float32)))
        with torch.no_grad():
            getattr(layer, factor).mul_(-0.5)
        assert layer.inference_banks(torch.float32)[2] is not banks[2]
    half = layer.inference_banks(torch.bfloat16)
    assert [bank.dtype for bank in half] == [torch.bfloat16] * 3
    assert layer.inference_banks(torch.bfloat16)[1] is half[1]
    assert layer.inference_banks(torch.float32)[2] is not half[2]
    with pytest.raises(TypeError, match="floating-point torch.dtype, got torch.int64"):
        layer.inference_banks(torch.int64)
