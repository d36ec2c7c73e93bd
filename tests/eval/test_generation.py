"""translate(): one generate call per mixed-direction batch gives what each direction gives alone."""
import pytest
import torch
from tiny_models import randomize_adapters, tiny_causal_lm
from train_helpers import tiny_tokenizer

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.patch import apply_routed_lora
from lora_route.eval.generation import left_pad, translate

SENTENCES = ["Hello world.", "Guten Morgen!", "A longer sentence here.", "Kurz."]
SRC = ["en", "de", "en", "de"]
TGT = ["de", "en", "zh", "zh"]


@pytest.fixture(scope="module")
def routed_model():
    model = apply_routed_lora(tiny_causal_lm("llama", seed=3), RoutedLoRAConfig("unilora", ["en", "de", "zh"], r=4,
                                                                                  r_uni=8))
    randomize_adapters(model, seed=5, std=0.5)
    return model


@pytest.mark.parametrize("num_beams", [1, 3])
def test_mixed_batch_equals_each_direction_alone(routed_model, num_beams):
    tokenizer = tiny_tokenizer()
    kwargs = dict(num_beams=num_beams, max_new_tokens=6, first_line=False)
    mixed = translate(routed_model, tokenizer, SENTENCES, SRC, TGT, **kwargs)
    assert len(mixed) == 4 and len(set(mixed)) > 1
    for i in range(4):
        alone = translate(routed_model, tokenizer, [SENTENCES[i]], [SRC[i]], [TGT[i]], **kwargs)
        assert alone == [mixed[i]]
    if num_beams == 1:
        assert translate(routed_model, tokenizer, SENTENCES, SRC, TGT, batch_size=3, **kwargs) == mixed


def test_routes_change_the_output_and_prompt_is_stripped(routed_model):
    tokenizer = tiny_tokenizer()
    a = translate(routed_model, tokenizer, ["Hello world."] * 2, ["en", "en"], ["de", "zh"], max_new_tokens=8,
                  first_line=False)
    assert a[0] != a[1]
    assert all("Translate the following" not in text for text in a)


def test_unpatched_model_and_input_validation():
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm("qwen2")
    out = translate(model, tokenizer, ["Hi."], "en", "de", max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)
    with pytest.raises(ValueError, match="one per sentence \\(2\\)"):
        translate(model, tokenizer, ["a", "b"], ["en"], "de")
    with pytest.raises(ValueError, match="num_beams"):
        translate(model, tokenizer, ["a"], "en", "de", num_beams=0)
    with pytest.raises(ValueError, match="unknown language code"):
        translate(model, tokenizer, ["a"], "en", "xx")
    with pytest.raises(ValueError, match="no \\{source\\}"):
        translate(model, tokenizer, ["a"], "en", "de", template="{tgt_name}:")


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one"):
        left_pad([], 0, torch.device("cpu"))


def test_num_return_sequences_inherit_their_sentences_route(routed_model):
    tokenizer = tiny_tokenizer()
    prompts = [[1, 40, 41, 42, 43], [1, 50, 51, 52, 53]]
    ids, mask = left_pad(prompts, 0, torch.device("cpu"))
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0,
                  eos_token_id=tokenizer.eos_token_id)
    from lora_route.adapters.patch import route

    with route(routed_model, ["en", "de"], ["zh", "en"]):
        both = routed_model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert both.shape[0] == 4
    for i, (s, t) in enumerate([("en", "zh"), ("de", "en")]):
        with route(routed_model, [s], [t]):
            alone = routed_model.generate(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], **kwargs)
        assert torch.equal(both[2 * i : 2 * i + 2], alone)


def test_greedy_decoding_stops_each_row_at_its_first_line_with_the_same_output():
    """Rows used to decode on to EOS or the token budget although only the first line is kept."""
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm("llama", seed=3)
    with torch.no_grad():  # the newline takes the place of 'x' wherever 'x' would win: lines end mid-output
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("\n")] = 1.05 * model.lm_head.weight[
            tokenizer.convert_tokens_to_ids("x")]
    sentences = ["Hello world.", "Guten Morgen!", "A longer sentence here.", "Kurz.", "abc", "xyz qq", "Haus", "猫"]
    steps = []
    model.register_forward_pre_hook(lambda module, args: steps.append(1))
    full = translate(model, tokenizer, sentences, "en", "de", max_new_tokens=30, first_line=False)
    full_steps, steps[:] = len(steps), []
    first = translate(model, tokenizer, sentences, "en", "de", max_new_tokens=30)
    assert sum("\n" in text for text in full) >= 4
    assert first == [next((line.strip() for line in text.splitlines() if line.strip()), "") for text in full]
    assert len(steps) < full_steps
    steps[:] = []
    assert translate(model, tokenizer, sentences, "en", "de", max_new_tokens=30, stop_early=False) == first
    assert len(steps) == full_steps
    with pytest.raises(ValueError, match="stop_early must be True or False"):
        translate(model, tokenizer, sentences, "en", "de", stop_early=None)
    with pytest.raises(ValueError, match="screen_output must be True or False"):
        translate(model, tokenizer, sentences, "en", "de", screen_output="no")
    assert translate(model, tokenizer, sentences, "en", "de", max_new_tokens=30, screen_output=False) == first


def test_a_generation_config_that_changes_greedy_tokens_keeps_generate():
    """translate used to drop a repetition penalty that the model's generation config asks generate for."""
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm("llama", seed=3)
    sentences = ["Hello world.", "Guten Morgen!", "A longer sentence here."]
    plain = translate(model, tokenizer, sentences, "en", "de", max_new_tokens=16)
    model.generation_config.repetition_penalty = 1.8
    penalised = translate(model, tokenizer, sentences, "en", "de", max_new_tokens=16)
    assert penalised != plain
    assert penalised == translate(model, tokenizer, sentences, "en", "de", max_new_tokens=16, stop_early=False)
