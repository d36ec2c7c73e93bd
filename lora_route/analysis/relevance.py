"""Teacher-guided layer relevance (MLAS-LoRA paper, eq. 1) and the mapping of a teacher's layer ranking onto a student.

``R_i(s, t) = 1/N Σ_n ‖A_{i+1}(x_n) − A_i(x_n)‖_1``: how much decoder layer ``i`` changes the residual stream on the
forward passes of a language pair's source prompts.

Choices where the paper is vague:

* ``A_0`` is the input of the first decoder layer (the scaled embeddings) and ``A_{i+1}`` the output of decoder
  layer ``i``, so every one of the L decoder layers gets a score (the final norm is not a layer).
* The activation of one forward pass is its (tokens × hidden) matrix; its L1 difference is divided by the pass's
  number of non-padding tokens, so long sentences do not dominate the mean. N counts sentences.
* The forward pass is the source sentence inside the pair's prompt (which names both languages). A batch that also
  carries ``labels`` (prompt + target, labels -100 on the prompt) is scored on its prompt positions only: in a
  causal LM those hidden states do not depend on the target tokens, so this equals a prompt-only pass.
* A teacher's top-L layers (L = number of student layers that get adapters) are paired with the student's layers in
  depth order (:func:`map_teacher_to_student`); :func:`project_layer_scores` spreads a ranking over a different
  number of layers by relative depth (for choosing which student layers to adapt).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "decoder_layers", "layer_relevance", "select_top_layers", "random_layers", "map_teacher_to_student",
    "project_layer_scores",
]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (``model.model.layers`` and the like), in depth order."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (looked for model.layers and the like)")


def _hidden(value) -> Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def layer_relevance(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> Tensor:
    """R (num_layers,) float64 of eq. 1 over ``batches`` of ``input_ids`` (B, T), optional ``attention_mask`` (B, T)
    and optional ``labels`` (B, T) (then only positions labelled -100, the prompt, count)."""
    layers = decoder_layers(model)
    count = len(layers)
    states: list[Tensor | None] = [None] * (count + 1)
    handles = []

    def keep_input(_module, args, kwargs):
        states[0] = _hidden(args[0] if args else kwargs["hidden_states"]).detach()

    def keep_output(index):
        def hook(_module, _args, output):
            states[index + 1] = _hidden(output).detach()
        return hook

    handles.append(layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
    handles.extend(layer.register_forward_hook(keep_output(i)) for i, layer in enumerate(layers))
    total = torch.zeros(count, dtype=torch.float64)
    sentences = 0
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                input_ids, mask = _check_batch(batch)
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
                weight = mask.to(device=device, dtype=torch.float64)
                if batch.get("labels") is not None:  # prompt + target batches: score the prompt positions only
                    weight = weight * (batch["labels"].to(device) == -100)
                tokens = weight.sum(1)
                if bool((tokens == 0).any()):
                    raise ValueError("a sequence in the batch has no non-padding (prompt) token")
                for i in range(count):
                    diff = (states[i + 1].double() - states[i].double()).abs().sum(-1)  # (B, T)
                    total[i] += ((diff * weight).sum(1) / tokens).sum().cpu()
                sentences += input_ids.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    if sentences == 0:
        raise ValueError("layer_relevance got no batches")
    return total / sentences


def _check_batch(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    if "input_ids" not in batch:
        raise ValueError(f"a batch needs 'input_ids', got keys {sorted(batch)}")
    input_ids = batch["input_ids"]
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, tokens) tensor")
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has {tuple(input_ids.shape)}")
    return input_ids, mask


def _check_scores(scores: Tensor | Sequence[float]) -> Tensor:
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"layer scores must be a non-empty 1-D sequence, got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("layer scores must be finite")
    return scores


def select_top_layers(scores: Tensor | Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest-scoring layers, in depth order (equal scores: the shallower layer wins)."""
    scores = _check_scores(scores)
    if not 1 <= k <= scores.numel():
        raise ValueError(f"cannot select {k} layers out of {scores.numel()}")
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def random_layers(num_layers: int, k: int, seed: int = 0) -> list[int]:
    """``k`` distinct layers out of ``num_layers`` drawn with ``seed``, in depth order (the "-R-s" / "-Ms" ablations)."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"cannot draw {k} layers out of {num_layers}")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(num_layers, generator=generator)[:k].tolist())


def map_teacher_to_student(
    teacher_layers: Sequence[int], student_layers: Sequence[int]
) -> dict[int, int]:
    """``{student_layer: teacher_layer}``: the selected teacher layers and the adapted student layers, both in depth
    order, paired one to one (MLAS-LoRA paper: the number of selected teacher layers equals the student's)."""
    teacher = sorted(int(i) for i in teacher_layers)
    student = sorted(int(i) for i in student_layers)
    if len(teacher) != len(student):
        raise ValueError(f"{len(teacher)} teacher layers cannot map onto {len(student)} student layers one to one")
    if len(set(teacher)) != len(teacher) or len(set(student)) != len(student):
        raise ValueError("layer lists must not repeat a layer")
    if min(teacher + student) < 0:
        raise ValueError("layer indices must be >= 0")
    return dict(zip(student, teacher))


def project_layer_scores(scores: Tensor | Sequence[float], num_layers: int) -> Tensor:
    """Scores (num_layers,) for a model of ``num_layers`` layers from ``scores`` of another depth: layer ``j`` covers
    relative depth ``[j/L, (j+1)/L)`` and gets the overlap-weighted mean of the source layers covering it."""
    scores = _check_scores(scores)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    source = scores.numel()
    out = torch.zeros(num_layers, dtype=torch.float64)
    for j in range(num_layers):
        lo, hi = j / num_layers, (j + 1) / num_layers
        weights = torch.tensor([max(0.0, min(hi, (i + 1) / source) - max(lo, i / source)) for i in range(source)],
                               dtype=torch.float64)
        out[j] = (weights * scores).sum() / weights.sum()
    return out
