"""greedy_decode(): the tokens of transformers' greedy generate, with each finished row taken out of the batch."""
import contextlib

import pytest
import torch
from tiny_models import randomize_adapters, tiny_causal_lm
from train_helpers import tiny_tokenizer

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.patch import apply_routed_lora, route
from lora_route.eval.generation import left_pad
from lora_route.eval.greedy import FirstLineComplete, greedy_decode, reproduces_generate

EOS = 2
PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 50, 51], [1, 60, 61, 62, 63], [1, 70], [1, 80, 81, 82, 83, 84]]


def _eos_prone(model, routing=contextlib.nullcontext):
    """EOS takes the place of a token that greedy decoding (inside ``routing()``) gives in some rows but not all,
    wherever that token would win, so that rows end at different steps."""
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    with torch.no_grad(), routing():
        rows = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                              pad_token_id=0, eos_token_id=EOS)[:, ids.shape[1]:].tolist()
        counts = {token: sum(token in row for row in rows) for row in rows for token in row}
        token = max((token for token, count in counts.items() if count < len(rows)), key=counts.get)
        model.get_output_embeddings().weight[EOS] = 1.05 * model.get_output_embeddings().weight[token]
    return model


def _until_eos(row: list[int]) -> list[int]:
    return row[:row.index(EOS) + 1] if EOS in row else row


def _batch_sizes(model) -> list[int]:
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)
    return sizes


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "gemma3"])
def test_greedy_decode_gives_generates_tokens_and_drops_finished_rows(arch):
    """generate kept every row in the batch until the last one had finished."""
    model = _eos_prone(tiny_causal_lm(arch, seed=4))
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                  pad_token_id=0, eos_token_id=EOS)[:, ids.shape[1]:].tolist()
    sizes = _batch_sizes(model)
    got = greedy_decode(model, ids, mask, max_new_tokens=12, eos_id=EOS, routing=lambda rows: torch.no_grad())
    assert got == [_until_eos(row) for row in expected]
    lengths = sorted(len(row) for row in got)
    assert lengths[0] < lengths[-1], "the test needs rows that end at different steps"
    assert sizes[0] == len(PROMPTS) and sizes == sorted(sizes, reverse=True) and sizes[-1] < len(PROMPTS)
    assert len(sizes) == lengths[-1]
    assert sum(sizes[1:]) == sum(length - 1 for length in lengths)


def test_routes_follow_the_rows_that_stay():
    model = apply_routed_lora(tiny_causal_lm("llama", seed=3),
                              RoutedLoRAConfig("unilora", ["en", "de", "zh"], r=4, r_uni=8))
    randomize_adapters(model, seed=5, std=0.5)
    src, tgt = ["en", "de", "zh", "en", "de"], ["de", "zh", "en", "zh", "en"]
    _eos_prone(model, lambda: route(model, src, tgt))
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    entered = []

    def routing(rows):
        entered.append(rows)
        return route(model, [src[i] for i in rows], [tgt[i] for i in rows])

    got = greedy_decode(model, ids, mask, max_new_tokens=10, eos_id=EOS, routing=routing)
    assert entered[0] == [0, 1, 2, 3, 4] and len(entered[-1]) < 5
    assert len({len(row) for row in got}) > 1
    for i, prompt in enumerate(PROMPTS):
        alone_ids, alone_mask = left_pad([prompt], 0, torch.device("cpu"))
        with route(model, [src[i]], [tgt[i]]), torch.no_grad():
            alone = model.generate(input_ids=alone_ids, attention_mask=alone_mask, max_new_tokens=10,
                                   do_sample=False, pad_token_id=0, eos_token_id=EOS)[0, len(prompt):].tolist()
        assert got[i] == _until_eos(alone)


def test_finished_rows_leave_at_their_first_line():
    tokenizer = tiny_tokenizer()
    newline = tokenizer.convert_tokens_to_ids("\n")
    model = tiny_causal_lm("llama", seed=3)
    with torch.no_grad():
        model.lm_head.weight[newline] = 1.05 * model.lm_head.weight[tokenizer.convert_tokens_to_ids("x")]
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    full = greedy_decode(model, ids, mask, max_new_tokens=20, eos_id=EOS, routing=lambda rows: torch.no_grad())
    finished = FirstLineComplete(tokenizer, 128, torch.device("cpu"))
    first = greedy_decode(model, ids, mask, max_new_tokens=20, eos_id=EOS, routing=lambda rows: torch.no_grad(),
                          finished=finished)

    def first_line(row: list[int]) -> list[int]:
        seen_text = False
        for step, token in enumerate(row):
            if token == EOS or (token == newline and seen_text):
                return row[:step + 1]
            seen_text = seen_text or bool(tokenizer.decode([token]).strip())
        return row

    assert sum(first_line(row) != row for row in full) >= 2
    assert first == [first_line(row) for row in full]


def test_the_first_line_criterion_follows_the_rows_it_keeps():
    tokenizer = tiny_tokenizer()
    ids = {char: tokenizer.convert_tokens_to_ids(char) for char in ("\n", " ", "a")}
    criterion = FirstLineComplete(tokenizer, 128, torch.device("cpu"))
    # row 0: newline before any text (not done), text, newline (done); row 1: text then newline at once;
    # row 2: text, then (alone after the others left) a newline
    done = [criterion(torch.tensor([ids["\n"], ids["a"], ids["a"]])).tolist(),
            criterion(torch.tensor([ids["a"], ids["\n"], ids[" "]])).tolist()]
    criterion.select(torch.tensor([0, 2]))
    done.append(criterion(torch.tensor([ids["\n"], ids[" "]])).tolist())
    criterion.select(torch.tensor([1]))
    done.append(criterion(torch.tensor([ids["\n"]])).tolist())
    assert done == [[False, False, False], [False, True, False], [True, False], [True]]


def test_validation():
    model = tiny_causal_lm("llama")
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        greedy_decode(model, ids, mask, max_new_tokens=0, eos_id=EOS, routing=lambda rows: torch.no_grad())
    with pytest.raises(ValueError, match="\\(batch, length\\) alike"):
        greedy_decode(model, ids, mask[:, 1:], max_new_tokens=3, eos_id=EOS, routing=lambda rows: torch.no_grad())
    with pytest.raises(ValueError, match="non-empty"):
        greedy_decode(model, ids[:0], mask[:0], max_new_tokens=3, eos_id=EOS, routing=lambda rows: torch.no_grad())
    with pytest.raises(ValueError, match="screen_output must be True or False"):
        greedy_decode(model, ids, mask, max_new_tokens=3, eos_id=EOS, routing=lambda rows: torch.no_grad(),
                      screen_output=1)


@pytest.mark.parametrize("setting, value, reproduces", [
    ("repetition_penalty", 1.0, True), ("repetition_penalty", 1.05, False), ("no_repeat_ngram_size", 0, True),
    ("no_repeat_ngram_size", 3, False), ("suppress_tokens", [5], False), ("forced_bos_token_id", 1, False),
    ("min_new_tokens", 2, False), ("temperature", 0.7, True), ("top_p", 0.8, True)])
def test_which_generation_settings_greedy_decode_reproduces(setting, value, reproduces):
    model = tiny_causal_lm("llama")
    assert reproduces_generate(model)
    setattr(model.generation_config, setting, value)
    assert reproduces_generate(model) is reproduces
