"""ScreenedArgmax / screened_output_layer: the float32 output layer's greedy tokens from a bfloat16 screen."""
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_causal_lm
from torch import Tensor, nn

from lora_route.eval.generation import left_pad
from lora_route.eval.greedy import greedy_decode
from lora_route.eval.output_argmax import ScreenedArgmax, cpu_has_bf16_products, screen_for, screened_output_layer

PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 50, 51], [1, 60, 61, 62, 63], [1, 70], [1, 80, 81, 82, 83, 84]]
needs_bf16_products = pytest.mark.skipif(not cpu_has_bf16_products(),
                                         reason="this CPU has no bfloat16 dot-product instructions: nothing is screened")


def _near_duplicate_pairs(pairs: int = 2048, features: int = 48, seed: int = 0) -> Tensor:
    """A float32 weight whose rows come in pairs that differ by less than bfloat16 can tell apart, so that rounding
    can reorder the two rows of a pair."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(pairs, features, generator=generator)
    return torch.stack([rows, rows + 2e-3 * torch.randn(pairs, features, generator=generator)], 1).flatten(0, 1)


def test_the_screen_gives_the_float32_argmax_where_bfloat16_ranks_another_token_first():
    weight = _near_duplicate_pairs()
    screen = ScreenedArgmax(weight)
    hidden = torch.randn(400, weight.shape[1], generator=torch.Generator().manual_seed(1))
    expected = F.linear(hidden, weight)
    bf16_first = F.linear(hidden.bfloat16(), weight.bfloat16()).float().argmax(-1)
    assert int((bf16_first != expected.argmax(-1)).sum()) > 50, "the test needs rows that bfloat16 ranks wrongly"
    logits = torch.cat([screen.logits(chunk) for chunk in hidden.split(10)])
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    winners = expected.argmax(-1)
    torch.testing.assert_close(logits.gather(1, winners[:, None]), expected.gather(1, winners[:, None]),
                               rtol=1e-6, atol=1e-6)
    assert int(torch.isinf(logits).sum()) == logits.numel() - logits.shape[0], "the screen fell back"


@pytest.mark.parametrize("features", [16, 640, 4096])
def test_the_bound_covers_the_distance_to_the_float32_logits(features):
    generator = torch.Generator().manual_seed(features)
    weight = torch.randn(512, features, generator=generator) / features ** 0.5
    rows = torch.cat([torch.randn(8, features, generator=generator) * scale for scale in (1e-3, 1.0, 1e3)])
    approx, highest, bound = ScreenedArgmax(weight).approximate(rows)
    assert torch.equal(highest, approx.max(dim=1).values)
    distance = (approx - F.linear(rows, weight)).abs().amax(dim=1)
    assert bool((distance <= bound / 2).all()), (distance / bound).max()


def test_positions_keep_their_shape_and_a_bfloat16_exact_weight_needs_no_weight_term():
    weight = torch.randn(300, 24, generator=torch.Generator().manual_seed(3)).bfloat16().float()
    screen = ScreenedArgmax(weight)
    assert screen.rounding_norm == 0.0
    hidden = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(4))
    logits = screen.logits(hidden)
    assert logits.shape == (3, 5, 300)
    assert torch.equal(logits.argmax(-1), F.linear(hidden, weight).argmax(-1))


def test_positions_are_screened_in_passes(monkeypatch):
    from lora_route.eval import output_argmax

    monkeypatch.setattr(output_argmax, "_ROWS_PER_PASS", 7)
    generator = torch.Generator().manual_seed(8)
    weight = torch.randn(2048, 32, generator=generator)
    hidden = torch.randn(4, 5, 32, generator=generator)
    logits = ScreenedArgmax(weight).logits(hidden)
    expected = F.linear(hidden, weight)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    assert int(torch.isfinite(logits).sum()) == 20, "every pass screened its positions"


def test_non_finite_states_and_too_many_candidates_get_the_full_layer():
    weight = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    hidden = torch.randn(2, 8)
    hidden[1, 3] = float("nan")
    torch.testing.assert_close(ScreenedArgmax(weight).logits(hidden), F.linear(hidden, weight), equal_nan=True)
    tied = torch.ones(64, 8)
    torch.testing.assert_close(ScreenedArgmax(tied).logits(torch.ones(2, 8)), F.linear(torch.ones(2, 8), tied))
    assert ScreenedArgmax(weight).logits(torch.zeros(0, 8)).shape == (0, 64)


def test_validation():
    with pytest.raises(ValueError, match="weight tensor"):
        ScreenedArgmax([[1.0]])
    with pytest.raises(ValueError, match="2-D float32 weight"):
        ScreenedArgmax(torch.ones(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="2-D float32 weight"):
        ScreenedArgmax(torch.ones(4))
    screen = ScreenedArgmax(torch.ones(4, 3))
    for hidden in (torch.ones(2, 4), torch.ones(2, 3, dtype=torch.float64), "h"):
        with pytest.raises(ValueError, match=r"hidden states must be float32 \(\.\.\., 3\)"):
            screen.logits(hidden)


@needs_bf16_products
def test_which_layers_are_screened_and_when_a_screen_is_rebuilt():
    layer = nn.Linear(8, 64, bias=False)
    screen = screen_for(layer)
    assert isinstance(screen, ScreenedArgmax) and screen_for(layer) is screen
    with torch.no_grad():
        layer.weight.mul_(2)
    rebuilt = screen_for(layer)
    assert rebuilt is not screen and torch.equal(rebuilt.weight_bf16, layer.weight.detach().bfloat16())
    assert screen_for(nn.Linear(8, 64)) is None  # a bias
    assert screen_for(nn.Linear(8, 64, bias=False).bfloat16()) is None
    hooked = nn.Linear(8, 64, bias=False)
    hooked.forward = lambda x: x
    assert screen_for(hooked) is None


@needs_bf16_products
def test_the_output_layer_is_screened_inside_the_context_only_and_without_grad():
    model = tiny_causal_lm("gemma2", seed=2, vocab_size=2048)  # gemma2 softcaps the logits after the layer
    layer = model.get_output_embeddings()
    ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with screened_output_layer(model) as screened:
            screened_logits = model(input_ids=ids).logits
        assert screened and "forward" not in layer.__dict__
        assert torch.equal(screened_logits.argmax(-1), expected.argmax(-1))
        assert torch.equal(model(input_ids=ids).logits, expected)
        with pytest.raises(RuntimeError, match="inside"), screened_output_layer(model):
            raise RuntimeError("inside")
        assert "forward" not in layer.__dict__
    with screened_output_layer(model) as screened:
        assert not screened and "forward" not in layer.__dict__


@needs_bf16_products
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_greedy_decoding_gives_the_same_tokens_with_and_without_the_screen(arch, monkeypatch):
    model = tiny_causal_lm(arch, seed=6, vocab_size=4096)
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    screened_rows = []
    logits = ScreenedArgmax.logits

    def counting(self, hidden):
        result = logits(self, hidden)
        screened_rows.append(int(torch.isinf(result).any(dim=-1).sum()))
        return result

    monkeypatch.setattr(ScreenedArgmax, "logits", counting)
    plain = greedy_decode(model, ids, mask, max_new_tokens=10, eos_id=2, routing=lambda rows: torch.no_grad(),
                          screen_output=False)
    assert not screened_rows
    screened = greedy_decode(model, ids, mask, max_new_tokens=10, eos_id=2, routing=lambda rows: torch.no_grad())
    assert screened == plain
    assert sum(screened_rows) > len(PROMPTS), "the screen fell back to the full layer at every step"


def test_nothing_is_screened_on_a_cpu_without_bfloat16_products(monkeypatch):
    from lora_route.eval import output_argmax

    monkeypatch.setattr(output_argmax, "cpu_has_bf16_products", lambda: False)
    assert screen_for(nn.Linear(8, 64, bias=False)) is None
