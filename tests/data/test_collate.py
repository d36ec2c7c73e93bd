"""Prompt + target encoding, loss masks, padding sides and truncation reports."""
import pytest
import torch
from train_helpers import tiny_tokenizer

from lora_route.data.collate import IGNORE_INDEX, collate, encode_pairs, prompt_text
from lora_route.data.corpus import TranslationPair
from lora_route.data.prompts import DEFAULT_TEMPLATE, format_prompt

PAIRS = [TranslationPair("en", "de", "Good morning", "Guten Morgen"),
         TranslationPair("de", "zh", "Vielen herzlichen Dank", "谢谢谢谢谢谢")]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_labels_cover_target_and_eos_only(tokenizer):
    encoded = encode_pairs(PAIRS, tokenizer, max_length=200)
    assert encoded.truncated == encoded.dropped == 0
    first = encoded.examples[0]
    prompt = tokenizer(format_prompt("Good morning", "en", "de", DEFAULT_TEMPLATE)).input_ids
    target = tokenizer("Guten Morgen", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert list(first.input_ids) == prompt + target
    assert list(first.labels) == [IGNORE_INDEX] * len(prompt) + target
    assert first.num_target_tokens == len(target)
    assert prompt_text(PAIRS[1]).startswith("Translate the following German sentences into Chinese:")


def test_truncation_is_reported(tokenizer):
    prompt_len = len(tokenizer(prompt_text(PAIRS[0])).input_ids)
    with pytest.warns(UserWarning, match="1 target-truncated, 1 dropped"):
        encoded = encode_pairs(PAIRS, tokenizer, max_length=prompt_len + 3)
    assert encoded.truncated == 1 and encoded.dropped == 1 and len(encoded.examples) == 1
    example = encoded.examples[0]
    assert len(example.input_ids) == prompt_len + 3 and tokenizer.eos_token_id not in example.input_ids[prompt_len:]
    with pytest.warns(UserWarning, match="0 target-truncated, 2 dropped"):
        assert encode_pairs(PAIRS, tokenizer, max_length=prompt_len + 3, on_overflow="drop").examples == []
    with pytest.raises(ValueError, match="on_overflow"):
        encode_pairs(PAIRS, tokenizer, max_length=10, on_overflow="cut")


def test_chat_template_option(tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        encode_pairs(PAIRS, tokenizer, max_length=200, chat_template=True)
    tokenizer.chat_template = "{% for m in messages %}<bos>U:{{ m['content'] }}{% endfor %}A:"
    try:
        example = encode_pairs(PAIRS[:1], tokenizer, max_length=300, chat_template=True).examples[0]
    finally:
        tokenizer.chat_template = None
    text = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX],
                            skip_special_tokens=True)
    assert text.startswith("U:Translate the following English") and text.endswith("A:")


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_padding(tokenizer, side):
    examples = encode_pairs(PAIRS, tokenizer, max_length=200).examples
    batch = collate(examples, tokenizer.pad_token_id, side)
    lengths = [len(e.input_ids) for e in examples]
    assert batch.input_ids.shape == (2, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert batch.src == ["en", "de"] and batch.tgt == ["de", "zh"]
    short = 1 if lengths[1] < lengths[0] else 0
    pad = batch.attention_mask[short] == 0
    assert (batch.labels[short][pad] == IGNORE_INDEX).all() and (batch.input_ids[short][pad] == 0).all()
    assert pad[-1].item() == (side == "right") and pad[0].item() == (side == "left")
    if side == "left":
        real = batch.position_ids[short][~pad]
        assert real.tolist() == list(range(lengths[short]))
    else:
        assert batch.position_ids is None
    assert batch.num_target_tokens == sum(e.num_target_tokens for e in examples)
    doubled = batch.repeat(2)
    assert doubled.input_ids.shape[0] == 4 and doubled.src == ["en", "de", "en", "de"]
    assert torch.equal(doubled.labels[2:], batch.labels)
    with pytest.raises(ValueError):
        collate([], 0)
    with pytest.raises(ValueError, match="padding_side"):
        collate(examples, 0, "middle")
