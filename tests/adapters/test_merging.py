"""TIES / DARE / linear merging of ΔW, checked against a direct NumPy implementation on small hand-made arrays."""
import numpy as np
import pytest
import torch

from lora_route.adapters.merging import (
    dare_merge,
    disjoint_mean,
    elect_sign,
    linear_merge,
    merge_deltas,
    ties_merge,
    trim_to_density,
)


def numpy_ties(deltas, weights, density):
    """The three TIES steps written out entry by entry."""
    deltas = [np.asarray(d, dtype=np.float64) for d in deltas]
    trimmed = []
    for d in deltas:
        flat = d.ravel()
        k = max(1, int(round(density * flat.size)))
        order = np.argsort(-np.abs(flat), kind="stable")
        keep = np.zeros(flat.size, dtype=bool)
        keep[order[:k]] = True
        trimmed.append(np.where(keep, flat, 0.0))
    out = np.zeros(deltas[0].size)
    for p in range(out.size):
        total = sum(w * t[p] for w, t in zip(weights, trimmed))
        sign = 1.0 if total >= 0 else -1.0
        num = den = 0.0
        for w, t in zip(weights, trimmed):
            if np.sign(t[p]) == sign:
                num += w * t[p]
                den += w
        out[p] = num / den if den > 0 else 0.0
    return out.reshape(deltas[0].shape)


# Three hand-made task vectors, distinct magnitudes (no ties in the top-k choice).
D1 = np.array([[0.9, -0.1, 0.4], [-0.7, 0.05, 0.3]])
D2 = np.array([[-0.2, -0.8, 0.35], [0.6, 0.15, -0.45]])
D3 = np.array([[0.5, 0.25, -0.95], [-0.55, 0.65, 0.12]])


def test_trim_keeps_top_density_by_magnitude():
    trimmed = trim_to_density(torch.tensor(D1), 0.5).numpy()
    assert np.array_equal(trimmed, np.array([[0.9, 0.0, 0.4], [-0.7, 0.0, 0.0]]))


def test_elect_sign_by_summed_magnitude_not_by_count():
    stack = torch.tensor([[1.0], [1.0], [-3.0]])
    ones = torch.ones(3, 1)
    assert elect_sign(stack, ones, "total").item() == -1.0
    assert elect_sign(stack, ones, "frequency").item() == 1.0


def test_disjoint_mean_ignores_disagreeing_and_zero_entries():
    stack = torch.tensor([[2.0, 0.0], [4.0, -1.0], [-6.0, 0.0]])
    out = disjoint_mean(stack, torch.ones(3, 1), torch.tensor([1.0, -1.0]))
    assert torch.allclose(out, torch.tensor([3.0, -1.0]))


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 2.0, 1.0)])
def test_ties_matches_numpy(density, weights):
    got = ties_merge([torch.tensor(D1), torch.tensor(D2), torch.tensor(D3)], weights, density)
    assert np.allclose(got.numpy(), numpy_ties([D1, D2, D3], weights, density))


def test_ties_hand_computed_entry():
    # density 1: entry (0,0) values 0.9, -0.2, 0.5 -> sum 1.2 > 0 -> mean of 0.9 and 0.5.
    got = ties_merge(torch.tensor(np.stack([D1, D2, D3])), density=1.0)
    assert got[0, 0].item() == pytest.approx(0.7)


def test_ties_random_matrices_match_numpy_and_keep_dtype():
    gen = torch.Generator().manual_seed(3)
    deltas = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(4)]
    got = ties_merge(deltas, [1, 2, 3, 4], 0.3)
    assert got.dtype == torch.float64
    assert np.allclose(got.numpy(), numpy_ties([d.numpy() for d in deltas], [1, 2, 3, 4], 0.3))
    half = ties_merge([d.to(torch.bfloat16) for d in deltas], density=0.3)
    assert half.dtype == torch.bfloat16


def test_dare_is_seeded_and_rescaled():
    delta = torch.ones(200, 50)
    a = dare_merge([delta], drop_prob=0.75, seed=7, combine="linear", weights=[1.0])
    b = dare_merge([delta], drop_prob=0.75, seed=7, combine="linear", weights=[1.0])
    c = dare_merge([delta], drop_prob=0.75, seed=8, combine="linear", weights=[1.0])
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = a[a != 0]
    assert torch.allclose(kept, torch.full_like(kept, 4.0))  # 1 / (1 - 0.75)
    assert 0.2 < kept.numel() / a.numel() < 0.3
    assert abs(a.mean().item() - 1.0) < 0.1  # unbiased in expectation


def test_dare_ties_equals_ties_steps_on_dropped_vectors():
    deltas = [torch.tensor(D1), torch.tensor(D2), torch.tensor(D3)]
    gen = torch.Generator().manual_seed(11)
    dropped = [torch.where(torch.rand(d.shape, generator=gen, dtype=torch.float64) >= 0.5, d / 0.5, 0 * d)
               for d in deltas]
    got = dare_merge(deltas, drop_prob=0.5, seed=11, combine="ties")
    assert np.allclose(got.numpy(), numpy_ties([d.numpy() for d in dropped], [1, 1, 1], 1.0))


def test_linear_merge_default_mean_and_weights():
    deltas = [torch.tensor(D1), torch.tensor(D2)]
    assert torch.allclose(linear_merge(deltas), torch.tensor((D1 + D2) / 2))
    assert torch.allclose(linear_merge(deltas, [2.0, -1.0]), torch.tensor(2 * D1 - D2))
    assert torch.allclose(merge_deltas("linear", deltas, scale=2.0), torch.tensor(D1 + D2))


@pytest.mark.parametrize("call, match", [
    (lambda: ties_merge([]), "empty"),
    (lambda: ties_merge([torch.zeros(2, 2), torch.zeros(2, 3)]), "shape"),
    (lambda: ties_merge([torch.zeros(2, dtype=torch.int64)]), "floating"),
    (lambda: ties_merge([torch.zeros(2), torch.zeros(2, dtype=torch.float64)]), "dtype"),
    (lambda: ties_merge([torch.zeros(2)], density=0.0), "density"),
    (lambda: ties_merge([torch.zeros(2)], density=1.5), "density"),
    (lambda: ties_merge([torch.zeros(2), torch.zeros(2)], weights=[1.0]), "weights"),
    (lambda: ties_merge([torch.zeros(2), torch.zeros(2)], weights=[1.0, -1.0]), ">= 0"),
    (lambda: ties_merge([torch.zeros(2)], majority_sign="vote"), "sign election"),
    (lambda: dare_merge([torch.zeros(2)], drop_prob=1.0), "drop_prob"),
    (lambda: dare_merge([torch.zeros(2)], combine="mean"), "combine"),
    (lambda: merge_deltas("slerp", [torch.zeros(2)]), "unknown merge method"),
])
def test_invalid_input_raises(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ------------------------------------------------------------------------------------------------ DATM on a model
def _dat_model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.patch import apply_routed_lora

    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2)).eval()
    config = RoutedLoRAConfig(method="dat", languages=["en", "de", "is", "ru"], r=4, alpha=8.0, dropout=0.0,
                              language_groups={"de": "g1", "is": "g1", "ru": "g3"})
    return base, config, apply_routed_lora


def test_datm_merges_group_members_with_ties_and_serves_with_the_same_kernels():
    from lora_route.adapters.merging import apply_merged, datm_merge
    from lora_route.adapters.patch import route, routed_modules

    base, config, patch = _dat_model()
    model = patch(base, config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in routed_modules(model).values():
            module.lora_A.copy_(torch.randn(module.lora_A.shape, generator=gen))
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.1)
    merged = datm_merge(model, method="ties", density=0.5)
    assert merged.report["groups"] == {"xx_en.g1": ["xx_en.de", "xx_en.is"], "xx_en.g3": ["xx_en.ru"]}
    assert merged.report["adapters_before"] == 5 and merged.report["adapters_after"] == 4
    assert merged.config.routing_table["is-en"] == "xx_en.g1" and merged.config.routing_table["en-is"] == "en_xx.g1"

    fresh, _, _ = _dat_model()
    merged_model = apply_merged(fresh, merged)
    name = "model.layers.1.mlp.up_proj"
    old, new = routed_modules(model)[name], routed_modules(merged_model)[name]
    de, is_ = config.adapter_index("xx_en.de"), config.adapter_index("xx_en.is")
    expected = ties_merge([old.delta_weight([(de, -1, de)]), old.delta_weight([(is_, -1, is_)])], density=0.5)
    u, s, vh = torch.linalg.svd(expected.double())
    best = (u[:, :4] * s[:4]) @ vh[:4]
    g1 = merged.config.adapter_index("xx_en.g1")
    assert torch.allclose(new.delta_weight([(g1, -1, g1)]).double(), best, atol=1e-5)

    ids = torch.randint(3, 64, (4, 5), generator=gen)
    with torch.no_grad():
        with route(model, ["en", "en", "ru", "de"], ["de", "ru", "en", "en"]):
            before = model(input_ids=ids).logits
        with route(merged_model, ["en", "en", "ru", "de"], ["de", "ru", "en", "en"]):
            after = merged_model(input_ids=ids).logits
    # En→XX adapters and the one-member group are copied exactly; the merged de→en differs
    assert torch.allclose(before[:3], after[:3], atol=1e-5)
    assert not torch.allclose(before[3], after[3], atol=1e-4)


def test_datm_rejects_other_methods_and_unknown_weights():
    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.merging import datm_merge

    base, config, patch = _dat_model()
    model = patch(base, config)
    with pytest.raises(ValueError, match="weights name"):
        datm_merge(model, weights={"fr": 1.0})
    with pytest.raises(ValueError, match="unknown merge method"):
        datm_merge(model, method="slerp")
    base2, _, _ = _dat_model()
    lora = patch(base2, RoutedLoRAConfig(method="lora", languages=["en", "de"], r=2))
    with pytest.raises(ValueError, match="method='dat'"):
        datm_merge(lora)
