"""Greedy decoding that takes each finished row out of the batch.

transformers' ``generate`` keeps every row in the batch until the last one has finished: a row that has emitted EOS
(or completed the only line that is kept) still costs its share of every forward until then, and one row that never
stops keeps the whole batch going to the token budget. :func:`greedy_decode` takes the same greedy steps as
``generate`` — the prompt's forward with a KV cache and ``logits_to_keep=1``, then one token per row and step, position
ids counted from the attention mask and the 2-D mask grown by one column per step, argmax over float32 logits — and
after each step drops the finished rows from the batch: from the cache (``batch_select_indices``), the mask, the
position ids, the stopping state and the routes. A float32 CPU output layer gives its greedy tokens through
:func:`lora_route.eval.output_argmax.screened_output_layer` (tokens ranked with a bfloat16 copy of its weight, the
best candidates checked in float32), at a third to a half of the full layer's cost. It applies no logits
processor: :func:`reproduces_generate` tells whether a model's generation config asks ``generate`` for one that
changes the greedy token.
"""
from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn

from lora_route.eval.output_argmax import screened_output_layer


class _LineTokens:
    """Per token id of a tokenizer: whether its text holds non-whitespace, a newline, and non-whitespace before its
    first newline (bool tensors over the vocabulary, built once per tokenizer by decoding every token)."""

    def __init__(self, tokenizer, vocab_size: int):
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        texts += [""] * (vocab_size - len(texts))
        self.content = torch.tensor([bool(t.strip()) for t in texts])
        self.newline = torch.tensor(["\n" in t for t in texts])
        self.ends_line = torch.tensor(["\n" in t and bool(t.split("\n", 1)[0].strip()) for t in texts])


_LINE_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _line_tokens(tokenizer, vocab_size: int) -> _LineTokens:
    tables = _LINE_TOKENS.get(tokenizer)
    if tables is None or tables.content.shape[0] < vocab_size:
        tables = _LINE_TOKENS[tokenizer] = _LineTokens(tokenizer, max(vocab_size, len(tokenizer)))
    return tables


class FirstLineComplete:
    """Which rows have completed their first non-empty line: a newline token after non-whitespace output, or a token
    holding both. Called with each step's new token per active row (``(rows,)`` long); :meth:`select` keeps the state
    of the rows that stay in the batch. One instance per batch."""

    def __init__(self, tokenizer, vocab_size: int, device: torch.device):
        tables = _line_tokens(tokenizer, vocab_size)
        self.content = tables.content.to(device)
        self.newline = tables.newline.to(device)
        self.ends_line = tables.ends_line.to(device)
        self.seen_content: Tensor | None = None

    def __call__(self, new_tokens: Tensor) -> Tensor:
        if self.seen_content is None:
            self.seen_content = torch.zeros_like(new_tokens, dtype=torch.bool)
        done = self.ends_line[new_tokens] | (self.newline[new_tokens] & self.seen_content)
        self.seen_content = self.seen_content | self.content[new_tokens]
        return done

    def select(self, keep: Tensor) -> None:
        if self.seen_content is not None:
            self.seen_content = self.seen_content[keep]


def reproduces_generate(model: nn.Module) -> bool:
    """Whether :func:`greedy_decode` takes the steps greedy ``generate`` takes for ``model``: false when the model's
    generation config asks ``generate`` for a logits processor that changes which token is greedy (a repetition
    penalty, as in several instruction-tuned models' configs, token bias, banned, forced or suppressed tokens, a
    minimum length, guidance, a watermark), which greedy_decode does not apply."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True

    def setting(name: str):
        return getattr(config, name, None)

    changes_logits = (
        setting("repetition_penalty") not in (None, 1.0), setting("guidance_scale") not in (None, 1, 1.0),
        (setting("no_repeat_ngram_size") or 0) > 0, (setting("min_length") or 0) > 0,
        (setting("min_new_tokens") or 0) > 0, setting("remove_invalid_values") is True,
        *(setting(name) is not None for name in ("sequence_bias", "bad_words_ids", "forced_bos_token_id",
                                                 "forced_eos_token_id", "exponential_decay_length_penalty",
                                                 "suppress_tokens", "begin_suppress_tokens", "watermarking_config")))
    return not any(changes_logits)


def _forward_parameters(model: nn.Module) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int, eos_id: int,
                  routing: Callable[[list[int]], ContextManager], finished: FirstLineComplete | None = None,
                  screen_output: bool = True) -> list[list[int]]:
    """New token ids per row of the left-padded ``input_ids`` / ``attention_mask`` (batch, prompt length), greedy,
    up to ``max_new_tokens`` each. A row leaves the batch after the step that gave it EOS (kept in its ids) or that
    ``finished`` reports done. ``routing(rows)`` is entered around each forward with the indices of the rows in it.
    ``screen_output=False`` computes the whole float32 output layer at every step (the same tokens, more work)."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape or input_ids.numel() == 0:
        raise ValueError(f"input_ids and attention_mask must be non-empty (batch, length) alike, got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(screen_output, bool):
        raise ValueError(f"screen_output must be True or False, got {screen_output!r}")
    parameters = _forward_parameters(model)
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    batch, device = input_ids.shape[0], input_ids.device
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    mask = None if bool(attention_mask.all()) else attention_mask
    rows = torch.arange(batch, device=device)
    generated = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)

    def forward(ids: Tensor, positions: Tensor, mask: Tensor | None, rows: Tensor, cache) -> tuple[Tensor, object]:
        inputs = {"input_ids": ids, "attention_mask": mask, "use_cache": True, **extra}
        if "position_ids" in parameters:
            inputs["position_ids"] = positions
        if cache is not None:
            inputs[cache_name] = cache
        with routing(rows.tolist()):
            outputs = model(**inputs)
        return outputs.logits[:, -1].float().argmax(-1), getattr(outputs, cache_name)

    # The output layer is screened for the whole decode, from the prompt's forward to the last step.
    with screened_output_layer(model) if screen_output else contextlib.nullcontext():
        next_tokens, cache = forward(input_ids, position_ids, mask, rows, None)
        next_positions = position_ids[:, -1:] + 1
        for step in range(max_new_tokens):
            generated[rows, step] = next_tokens
            lengths[rows] += 1
            done = next_tokens == eos_id
            if finished is not None:
                done |= finished(next_tokens)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                rows, next_tokens, next_positions = rows[keep], next_tokens[keep], next_positions[keep]
                mask = mask[keep] if mask is not None else None
                cache.batch_select_indices(keep)
                if finished is not None:
                    finished.select(keep)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            next_tokens, cache = forward(next_tokens[:, None], next_positions, mask, rows, cache)
            next_positions = next_positions + 1
    return [generated[row, :length].tolist() for row, length in enumerate(lengths.tolist())]
