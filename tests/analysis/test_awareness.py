"""Neuron awareness Φ = |∂L/∂h · h| (MLAS-LoRA paper, eq. 2), normalisation and the λ split, sub-matrix extraction."""
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lora_route.analysis.awareness import causal_lm_loss_sum, neuron_awareness, normalise_awareness, split_neurons
from lora_route.analysis.extraction import extract_submatrix, top_indices


class TwoLinear(nn.Module):
    def __init__(self, w1, w2):
        super().__init__()
        self.first = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.second = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        with torch.no_grad():
            self.first.weight.copy_(w1)
            self.second.weight.copy_(w2)

    def forward(self, x):
        return self.second(self.first(x))


def squared_error(model, batch):
    """0.5 Σ ||y - t||² over the batch, and the number of samples."""
    y = model(batch["x"])
    return 0.5 * ((y - batch["t"]) ** 2).sum(), batch["x"].shape[0]


def test_phi_of_scalar_linear_model_by_hand():
    # h = 2·x, y = 3·h, L = ½ (y − 0)², x = 1  →  h = 2, y = 6, ∂L/∂h = 3·6 = 18, Φ = |18·2| = 36.
    model = TwoLinear(torch.tensor([[2.0]]), torch.tensor([[3.0]]))
    scores = neuron_awareness(model, [{"x": torch.tensor([[1.0]]), "t": torch.tensor([[0.0]])}],
                              {"first": model.first}, loss_fn=squared_error)
    assert scores["first"].output.tolist() == [36.0]
    assert scores["first"].input.tolist() == [36.0]  # ∂L/∂x = 2·18 = 36, times x = 1


def test_phi_of_linear_model_matches_closed_form_and_accumulates_signed_over_batches():
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(4, 3, generator=gen), torch.randn(2, 4, generator=gen)
    x, t = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)
    model = TwoLinear(w1, w2)
    batches = [{"x": x[:2], "t": t[:2]}, {"x": x[2:], "t": t[2:]}]
    scores = neuron_awareness(model, batches, {"first": model.first, "second": model.second}, loss_fn=squared_error)
    x, t, w1, w2 = (v.double() for v in (x, t, w1, w2))
    h = x @ w1.T
    y = h @ w2.T
    dy = y - t
    dh = dy @ w2
    dx = dh @ w1
    assert torch.allclose(scores["first"].output, (dh * h).sum(0).abs() / 6)
    assert torch.allclose(scores["first"].input, (dx * x).sum(0).abs() / 6)
    assert torch.allclose(scores["second"].output, (dy * y).sum(0).abs() / 6)
    assert torch.allclose(scores["second"].input, scores["first"].output)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_awareness_on_a_causal_lm():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :3] = -100
    mlp = model.model.layers[1].mlp
    modules = {"gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}
    scores = neuron_awareness(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}],
                              modules)
    assert scores["gate"].output.shape == (24,) and scores["down"].output.shape == (16,)
    assert torch.allclose(scores["gate"].input, scores["up"].input)  # same input tensor, full gradient
    assert bool((scores["down"].output > 0).all())
    # Φ of the down_proj output units is the first-order loss change of zeroing them: check one by a direct
    # gradient computation.
    captured = {}
    handle = mlp.down_proj.register_forward_hook(lambda _m, _a, out: captured.setdefault("h", out))
    model.get_input_embeddings().register_forward_hook(lambda _m, _a, out: out.requires_grad_(True))
    loss, count = causal_lm_loss_sum(model, {"input_ids": ids, "labels": labels})
    (grad,) = torch.autograd.grad(loss, captured["h"])
    handle.remove()
    expected = (grad.double() * captured["h"].double()).sum((0, 1)).abs() / count
    assert torch.allclose(scores["down"].output, expected, rtol=1e-4, atol=1e-9)


def test_normalise_and_split_by_threshold():
    phi = torch.tensor([[1.0, 8.0, 1.0, 0.0, 3.0],
                        [1.0, 1.0, 1.0, 0.0, 3.0],
                        [1.0, 1.0, 1.0, 0.0, 4.0],
                        [1.0, 0.0, 1.0, 0.0, 0.0],
                        [1.0, 0.0, 6.0, 0.0, 0.0]])
    lam = normalise_awareness(phi)
    assert torch.allclose(lam[:, 0], torch.full((5,), 0.2, dtype=torch.float64))
    assert lam[:, 3].tolist() == [0.0] * 5
    split = split_neurons(phi, 0.3)
    # neuron 0: max 0.2 < 0.3 → general; 1: 0.8 → pair 0; 2: 0.6 → pair 4; 3: zero → general; 4: 0.4 → pair 2
    assert split.owner.tolist() == [-1, 0, 4, -1, 2]
    assert split.general.tolist() == [0, 3]
    assert [s.tolist() for s in split.specific] == [[1], [], [4], [], [2]]


def test_split_warns_when_no_neuron_can_be_general():
    with pytest.warns(UserWarning, match="no neuron can be language-general"):
        split_neurons(torch.rand(4, 3), 0.2)
    with pytest.raises(ValueError, match="threshold"):
        split_neurons(torch.rand(4, 3), 1.5)
    with pytest.raises(ValueError, match=">= 0"):
        normalise_awareness(torch.tensor([[-1.0]]))


def test_extract_submatrix_by_awareness():
    weight = torch.arange(30, dtype=torch.float32).reshape(6, 5)
    rows = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.7])
    cols = torch.tensor([0.5, 0.1, 0.4, 0.9, 0.2])
    got = extract_submatrix(weight, rows, cols, (3, 2), members=torch.tensor([1, 2, 4]))
    assert got.rows.tolist() == [1, 2, 4] and got.columns.tolist() == [0, 3]
    assert torch.equal(got.matrix, weight[[1, 2, 4]][:, [0, 3]])
    assert got.score == pytest.approx(0.9 + 0.3 + 0.2)
    # fewer members than rows: best non-members fill up, zeroed
    got = extract_submatrix(weight, rows, cols, (3, 2), members=torch.tensor([2]))
    assert got.rows.tolist() == [1, 2, 3]
    assert torch.equal(got.matrix, torch.stack([torch.zeros(2), weight[2, [0, 3]], torch.zeros(2)]))
    # same size, all members: the matrix itself
    assert torch.equal(extract_submatrix(weight, rows, cols, (6, 5)).matrix, weight)
    assert top_indices(torch.tensor([1.0, 1.0, 2.0]), 2).tolist() == [0, 2]


def test_extract_rejects_a_smaller_teacher():
    with pytest.raises(ValueError, match="at least as large"):
        extract_submatrix(torch.zeros(3, 3), torch.zeros(3), torch.zeros(3), (4, 2))
    with pytest.raises(ValueError, match="member indices"):
        extract_submatrix(torch.zeros(3, 3), torch.zeros(3), torch.zeros(3), (2, 2), members=torch.tensor([5]))


def test_awareness_through_a_patched_model_equals_the_base_model():
    """Regression: hooks on RoutedLoRALinear.base_layer never fired (the fused op bypasses it), so Φ was 0."""
    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.patch import apply_routed_lora, route, routed_modules

    def build():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2)
        return LlamaForCausalLM(config).eval()

    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :3] = -100
    batch = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]
    plain = build()
    expected = neuron_awareness(plain, batch, {"m": plain.model.layers[1].mlp.up_proj})["m"]
    patched = apply_routed_lora(build(), RoutedLoRAConfig(method="mlas", languages=["en", "de"], r=2, dropout=0.0))
    module = routed_modules(patched)["model.layers.1.mlp.up_proj"]
    with route(patched, "en", "de"):
        got = neuron_awareness(patched, batch, {"m": module})["m"]
    assert bool((expected.output > 0).all())
    assert torch.allclose(got.output, expected.output, rtol=1e-4) and torch.allclose(got.input, expected.input, rtol=1e-4)
