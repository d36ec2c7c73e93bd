"""MLAS initialisation end to end on tiny random models: teacher larger than student, self-teacher, ablations."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.patch import apply_routed_lora, route, routed_modules
from lora_route.analysis.mlas import ABLATIONS, MLASInit, ablation_method, initialise_mlas, teacher_module_name

DIRECTIONS = [("en", "de"), ("de", "en"), ("en", "zh")]


def llama(hidden, inter, layers, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def seed_batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, d in enumerate(DIRECTIONS):
        ids = torch.randint(3, 96, (2, 9), generator=gen)
        labels = ids.clone()
        labels[:, :5] = -100
        out[d] = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]
    return out


def mlas_student(method="mlas", seed=1):
    student = llama(16, 24, 2, seed)
    kwargs = {"directions": DIRECTIONS} if method != "lora" else {}
    config = RoutedLoRAConfig(method=method, languages=["en", "de", "zh"], r=4, alpha=8.0, dropout=0.0, **kwargs)
    return apply_routed_lora(student, config)


def test_mlas_from_a_larger_teacher():
    teacher = llama(32, 48, 4, 0)
    student = mlas_student()
    report = initialise_mlas(student, teacher, seed_batches(), MLASInit(threshold=0.4))
    assert len(report["teacher_layers"]) == 2
    mean = torch.tensor(report["mean_relevance"])
    assert sorted(report["teacher_layers"]) == sorted(mean.argsort(descending=True)[:2].tolist())
    name = "model.layers.1.mlp.down_proj"
    info = report["modules"][name]
    assert info["teacher_module"] == teacher_module_name(name, report["layer_map"]["1"])
    assert info["general_neurons"] + sum(info["specific_neurons"].values()) == 32  # teacher down_proj rows
    module = routed_modules(student)[name]
    # the general adapter adds the rank-r truncation of the extracted sub-matrix (eq. 7 and 9)
    delta = module.scaling * module.lora_B[0] @ module.lora_A[0]
    assert delta.shape == (16, 24)
    assert torch.count_nonzero(module.lora_B) > 0
    assert 0 <= info["adapters"]["general"]["relative_error"] < 1
    # the translation still runs through the routed kernels, per direction
    ids = torch.randint(3, 96, (3, 6))
    with torch.no_grad(), route(student, ["en", "de", "en"], ["de", "en", "zh"]):
        logits = student(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_self_teacher_general_adapter_is_svd_of_general_rows():
    student = mlas_student()
    report = initialise_mlas(student, student, seed_batches(), MLASInit(threshold=0.5))
    name = "model.layers.0.mlp.gate_proj"
    module = routed_modules(student)[name]
    assert report["layer_map"] == {"0": 0, "1": 1}
    assert report["modules"][name]["max_normalised_awareness"] > 0  # Φ measured through the patched model
    weight = module.base_layer.weight.detach().double()
    general = report["modules"][name]["general_neurons"]
    assert 0 < general < module.out_features  # both kinds of neurons exist: the check below is not vacuous
    rows_zero = module.lora_B[0].abs().sum(1) < 1e-6
    assert int((~rows_zero).sum()) <= general  # only general rows are written by the general LoRA
    full = module.scaling * (module.lora_B[0].double() @ module.lora_A[0].double())
    kept = ~rows_zero
    u, s, vh = torch.linalg.svd(torch.where(kept[:, None], weight, 0 * weight))
    best = (u[:, :4] * s[:4]) @ vh[:4]
    assert torch.allclose(full, best, atol=1e-5)


@pytest.mark.parametrize("name", ["-R-a", "-Mr-spe", "-Ms-gen"])
def test_ablations_initialise_their_method(name):
    method = ablation_method(name)
    student = mlas_student(method)
    teacher = llama(32, 48, 4, 0)
    report = initialise_mlas(student, teacher, seed_batches(), MLASInit.from_ablation(name, threshold=0.4))
    assert report["method"] == method
    module = routed_modules(student)["model.layers.0.mlp.up_proj"]
    assert torch.count_nonzero(module.lora_B) > 0
    if name == "-Ms-gen":  # every pair starts from the same general sub-matrix
        assert torch.allclose(module.lora_B[0], module.lora_B[1]) and torch.allclose(module.lora_A[0], module.lora_A[2])


def test_random_init_ablation_keeps_default_init_and_bad_configs_raise():
    student = mlas_student("molora_static")
    report = initialise_mlas(student, student, seed_batches(), MLASInit.from_ablation("-M-i"))
    assert "random" in report["note"]
    assert all(torch.count_nonzero(m.lora_B) == 0 for m in routed_modules(student).values())
    with pytest.raises(ValueError, match="does not fit method"):
        initialise_mlas(mlas_student("mlas"), student, seed_batches(), MLASInit(neurons="all"))
    with pytest.raises(ValueError, match="no seed batches"):
        initialise_mlas(mlas_student(), llama(32, 48, 4, 0), {DIRECTIONS[0]: seed_batches()[DIRECTIONS[0]]})
    with pytest.raises(ValueError, match="unknown MLAS ablation"):
        MLASInit.from_ablation("-X")
    with pytest.raises(ValueError, match="layer_selection"):
        MLASInit(layer_selection="best")
    assert set(ABLATIONS) >= {"-R-i", "-R-a", "-R-s", "-M-i", "-Ms-a", "-Ms-spe", "-Ms-gen", "-Mr-a", "-Mr-spe",
                              "-Mr-gen"}
    assert MLASInit.from_dict(MLASInit(seed=3).to_dict()) == MLASInit(seed=3)


def test_adapter_without_neurons_keeps_default_init():
    """Regression: λ ≤ 1/P leaves no general neuron; the general LoRA must not become A = B = 0 (untrainable)."""
    import warnings

    student = mlas_student()
    before = routed_modules(student)["model.layers.0.mlp.down_proj"].lora_A[0].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = initialise_mlas(student, llama(32, 48, 4, 0), seed_batches(), MLASInit(threshold=0.3))
    info = report["modules"]["model.layers.0.mlp.down_proj"]
    assert info["general_neurons"] == 0
    assert info["adapters"]["general"]["members"] == 0
    module = routed_modules(student)["model.layers.0.mlp.down_proj"]
    assert torch.equal(module.lora_A[0], before) and torch.count_nonzero(module.lora_A[0]) > 0
