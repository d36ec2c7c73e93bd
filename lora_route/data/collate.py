"""Prompts -> token ids with loss masks, and padding into batches that carry each row's direction.

An example is ``prompt + target + EOS`` where the prompt is :func:`lora_route.data.prompts.format_prompt` (or that
text wrapped in the tokenizer's chat template). ``labels`` equal ``input_ids`` on target tokens and EOS and are
``-100`` on the prompt and on padding, so the loss covers the translation only. Over-long examples are truncated
(target cut from the right, EOS lost) or dropped; both are counted and reported with a warning, never silently.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lora_route.data.corpus import TranslationPair
from lora_route.data.prompts import DEFAULT_TEMPLATE, format_prompt

IGNORE_INDEX = -100
OVERFLOW_POLICIES = ("truncate", "drop")


@dataclass(frozen=True)
class EncodedPair:
    """One tokenised example: ``input_ids`` and ``labels`` of equal length (labels -100 on the prompt)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    src_lang: str
    tgt_lang: str

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class EncodedSet:
    """Encoded examples plus what overflowed ``max_length``: ``truncated`` kept with a cut target, ``dropped``."""

    examples: list[EncodedPair]
    truncated: int
    dropped: int
    max_length: int


def prompt_text(pair: TranslationPair, template: str | None = None) -> str:
    """The prompt of a pair (source included, target excluded)."""
    return format_prompt(pair.src, pair.src_lang, pair.tgt_lang, template or DEFAULT_TEMPLATE)


def _prompt_ids(tokenizer, prompts: list[str], chat_template: bool) -> list[list[int]]:
    if not chat_template:
        return tokenizer(prompts, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template; use the plain prompt template")
    return [
        list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False))
        for p in prompts
    ]


def encode_pairs(pairs: Sequence[TranslationPair], tokenizer, *, max_length: int, template: str | None = None,
                 chat_template: bool = False, on_overflow: str = "truncate", what: str = "examples") -> EncodedSet:
    """Tokenise pairs into prompt + target + EOS with loss masks.

    ``max_length`` counts tokens (prompt, target and EOS). An example whose prompt alone leaves no room for one
    target token is always dropped; others over the limit are target-truncated (``on_overflow="truncate"``) or
    dropped (``"drop"``). A warning states the counts whenever anything overflowed.
    """
    if on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the target must end with one")
    if not pairs:
        return EncodedSet([], 0, 0, max_length)
    prompts = _prompt_ids(tokenizer, [prompt_text(p, template) for p in pairs], chat_template)
    targets = tokenizer([p.tgt for p in pairs], add_special_tokens=False)["input_ids"]
    examples, truncated, dropped = [], 0, 0
    for pair, prompt, target in zip(pairs, prompts, targets):
        target = list(target) + [tokenizer.eos_token_id]
        total = len(prompt) + len(target)
        if total > max_length:
            room = max_length - len(prompt)
            if room < 1 or on_overflow == "drop":
                dropped += 1
                continue
            target = target[:room]
            truncated += 1
        examples.append(EncodedPair(tuple(prompt) + tuple(target), (IGNORE_INDEX,) * len(prompt) + tuple(target),
                                    pair.src_lang, pair.tgt_lang))
    if truncated or dropped:
        warnings.warn(f"{truncated + dropped} of {len(pairs)} {what} exceed max_length={max_length} tokens: "
                      f"{truncated} target-truncated, {dropped} dropped", stacklevel=2)
    return EncodedSet(examples, truncated, dropped, max_length)


@dataclass
class Batch:
    """Padded tensors (B, L) plus each row's languages for ``route(model, src, tgt)``.

    ``position_ids`` is set for left padding (positions count real tokens only), None for right padding.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    position_ids: Tensor | None
    src: list[str]
    tgt: list[str]

    @property
    def num_target_tokens(self) -> int:
        """Tokens that carry loss (labels shifted by one: the first token never carries loss)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def model_inputs(self) -> dict[str, Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.labels), move(self.position_ids),
                     self.src, self.tgt)

    def repeat(self, times: int) -> "Batch":
        """The batch stacked ``times`` over along rows (R-Drop's two passes in one forward)."""
        rep = lambda t: None if t is None else t.repeat(times, 1)  # noqa: E731
        return Batch(rep(self.input_ids), rep(self.attention_mask), rep(self.labels), rep(self.position_ids),
                     self.src * times, self.tgt * times)


def collate(examples: Sequence[EncodedPair], pad_token_id: int, padding_side: str = "right",
            pad_to_multiple_of: int | None = None) -> Batch:
    """Pad encoded examples into a :class:`Batch` (labels -100 and attention 0 on padding)."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not isinstance(pad_token_id, int) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be a non-negative int, got {pad_token_id!r}")
    length = max(len(e.input_ids) for e in examples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    rows = len(examples)
    input_ids = torch.full((rows, length), pad_token_id, dtype=torch.long)
    labels = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((rows, length), dtype=torch.long)
    for i, example in enumerate(examples):
        n = len(example.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[i, span] = torch.tensor(example.input_ids)
        labels[i, span] = torch.tensor(example.labels)
        attention[i, span] = 1
    position_ids = None
    if padding_side == "left":
        position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(input_ids, attention, labels, position_ids, [e.src_lang for e in examples],
                 [e.tgt_lang for e in examples])
