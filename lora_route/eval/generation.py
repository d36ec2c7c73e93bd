"""Mixed-direction translation: one decoding per batch, whatever directions the batch mixes.

Each batch is prompted with the papers' template, left-padded (so every prompt ends in the same column and the new
tokens start right after it), routed with :func:`lora_route.adapters.patch.route` (each beam / returned sequence inherits its
sentence's route) and decoded greedily or with beam search until EOS or ``max_new_tokens``. The prompt is cut off
by position, special tokens are skipped, and — since the template puts the source on its own line and a translation
is one line — the output is the first non-empty line of the continuation (``first_line=False`` keeps it all).
Greedy decoding (:func:`lora_route.eval.greedy.greedy_decode`) takes each row out of the batch once it has finished:
at EOS or, with ``first_line``, as soon as that line is complete (a newline after non-whitespace output) — the same
first line as decoding on to EOS, for a fraction of the work. Beam search, greedy decoding with
``stop_early=False``, and greedy decoding of a model whose generation config asks for a logits processor (a
repetition penalty, say: :func:`lora_route.eval.greedy.reproduces_generate`) run transformers' ``generate``, where
every row stays in the batch to the end (with first-line stopping where it applies).
Works on unpatched models too (plain prompting, e.g. the base-model row of a results table).
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from lora_route.adapters.patch import route
from lora_route.data.prompts import DEFAULT_TEMPLATE, check_template, format_prompt
from lora_route.eval.greedy import FirstLineComplete, greedy_decode, reproduces_generate


def _per_sentence(name: str, langs: Sequence[str] | str, count: int) -> list[str]:
    if isinstance(langs, str):
        return [langs] * count
    if not isinstance(langs, Sequence) or len(langs) != count:
        size = len(langs) if isinstance(langs, Sequence) else type(langs).__name__
        raise ValueError(f"{name} must be one language code or one per sentence ({count}), got {size}")
    return list(langs)


def _prompt_ids(tokenizer, prompts: list[str], chat_template: bool) -> list[list[int]]:
    if not chat_template:
        return [list(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template; use the plain prompt template")
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)) for p in prompts]


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` (batch, longest) with padding on the left."""
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


class _FirstLineCriterion(StoppingCriteria):
    """:class:`FirstLineComplete` as a stopping criterion of ``generate`` (whose rows stay in the batch)."""

    def __init__(self, finished: FirstLineComplete):
        self.finished = finished

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.finished(input_ids[:, -1])


def _routing(model, src: list[str], tgt: list[str], patched: bool, rows: Sequence[int]):
    """The routes of ``rows`` of a batch (a no-op on an unpatched model)."""
    if not patched:
        return contextlib.nullcontext()
    return route(model, [src[row] for row in rows], [tgt[row] for row in rows])


def _clean(text: str, first_line: bool) -> str:
    text = text.strip()
    if first_line:
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return text


@torch.no_grad()
def translate(model, tokenizer, sentences: Sequence[str], src: Sequence[str] | str, tgt: Sequence[str] | str, *,
              num_beams: int = 1, max_new_tokens: int | None = None, batch_size: int = 16,
              template: str | None = None, chat_template: bool = False, first_line: bool = True,
              stop_early: bool = True, screen_output: bool = True) -> list[str]:
    """Translate ``sentences[i]`` from ``src[i]`` into ``tgt[i]`` (codes, or one code for all); returns strings in
    input order. ``max_new_tokens`` defaults to twice the longest source (in tokens) plus 16, per batch.
    ``stop_early=False`` decodes with ``generate``, every row on to EOS or ``max_new_tokens`` even when only its first
    line is kept (the same output, more work; for measuring what stopping saves). ``screen_output=False`` has greedy
    decoding compute the whole float32 output layer at every step rather than screen it
    (:mod:`lora_route.eval.output_argmax`; the same tokens, more work)."""
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise ValueError("sentences must be a list of strings")
    if not all(isinstance(s, str) for s in sentences):
        raise ValueError("every sentence must be a string")
    src_langs = _per_sentence("src", src, len(sentences))
    tgt_langs = _per_sentence("tgt", tgt, len(sentences))
    for name, value in (("num_beams", num_beams), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in (("first_line", first_line), ("stop_early", stop_early), ("screen_output", screen_output)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be None or a positive int, got {max_new_tokens!r}")
    template = DEFAULT_TEMPLATE if template is None else template
    check_template(template)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token to stop generation at")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    patched = getattr(model, "routed_lora_config", None) is not None
    rows_leave = num_beams == 1 and stop_early and reproduces_generate(model)
    device = next(model.parameters()).device
    outputs: list[str] = []
    for start in range(0, len(sentences), batch_size):
        chunk = slice(start, start + batch_size)
        batch_src, batch_tgt = src_langs[chunk], tgt_langs[chunk]
        prompts = [format_prompt(s, a, b, template) for s, a, b in zip(sentences[chunk], batch_src, batch_tgt)]
        prompt_ids = _prompt_ids(tokenizer, prompts, chat_template)
        input_ids, attention_mask = left_pad(prompt_ids, pad_id, device)
        if max_new_tokens is None:
            source_lengths = [len(ids) for ids in tokenizer(list(sentences[chunk]), add_special_tokens=False)["input_ids"]]
            budget = 2 * max(source_lengths) + 16
        else:
            budget = max_new_tokens
        finished = None
        if num_beams == 1 and stop_early and first_line:
            finished = FirstLineComplete(tokenizer, model.get_output_embeddings().weight.shape[0], device)
        if rows_leave:
            new_tokens = greedy_decode(model, input_ids, attention_mask, max_new_tokens=budget, eos_id=eos_id,
                                       routing=partial(_routing, model, batch_src, batch_tgt, patched),
                                       finished=finished, screen_output=screen_output)
        else:
            stop = None if finished is None else StoppingCriteriaList([_FirstLineCriterion(finished)])
            with _routing(model, batch_src, batch_tgt, patched, range(len(prompt_ids))):
                generated = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                           max_new_tokens=budget, num_beams=num_beams, num_return_sequences=1,
                                           do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id,
                                           stopping_criteria=stop)
            new_tokens = generated[:, input_ids.shape[1]:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        outputs.extend(_clean(text, first_line) for text in texts)
    return outputs
