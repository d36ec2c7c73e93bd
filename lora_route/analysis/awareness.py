"""Neuron awareness (MLAS-LoRA paper, eq. 2–3 and appendix A.6): ``Φ_{l,j}(s,t) = |∂L/∂h_{l,j} · h_{l,j}|``, its
normalisation across language pairs and the λ split into language-general and language-specific neurons.

A *neuron* of a linear module is one of its output units (row ``j`` of ``W``); ``h_{l,j}`` is that unit's output.
The same score is also taken on each input unit (column ``j``), which sub-matrix extraction uses to choose columns.

Choices where the paper is vague:

* ``L`` is the mean token cross-entropy over all target tokens of the seed set (labels ``-100`` are ignored) and
  ``∂L/∂h · h`` is the dot product over every position of every seed sentence, so
  ``Φ = |Σ_{n,t} ∂L/∂h_{n,t} · h_{n,t}|`` — the first-order change of the seed-set loss when the neuron's output is
  set to zero, exactly as written; signed contributions are accumulated over batches and the absolute value is
  taken once at the end.
* Normalisation (A.6): ``λ_i = Φ(s_i,t_i) / Σ_n Φ(s_n,t_n)`` per neuron (0 for a neuron whose Φ is 0 everywhere).
  A neuron whose largest ``λ_i`` is below the threshold λ (default 0.2) is language-general; otherwise it is
  specific to the pair with the largest ``λ_i`` (a partition: each neuron belongs to one set). With P pairs the
  largest ``λ_i`` is at least ``1/P``, so λ ≤ 1/P makes every neuron specific; that case warns.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

DEFAULT_THRESHOLD = 0.2

__all__ = [
    "AwarenessScores", "NeuronSplit", "causal_lm_loss_sum", "neuron_awareness", "normalise_awareness",
    "split_neurons", "DEFAULT_THRESHOLD",
]

LossFn = Callable[[nn.Module, Mapping[str, Tensor]], "tuple[Tensor, int]"]


@dataclass(frozen=True)
class AwarenessScores:
    """Φ of one linear module: ``output`` (d_out,) per output unit, ``input`` (d_in,) per input unit; float64."""

    output: Tensor
    input: Tensor


@dataclass(frozen=True)
class NeuronSplit:
    """λ split of one module's neurons over P pairs.

    owner:    (n,) int64; -1 for a language-general neuron, else the index of the pair it is specific to.
    general:  indices of the language-general neurons.
    specific: one index tensor per pair.
    """

    owner: Tensor
    general: Tensor
    specific: tuple[Tensor, ...]


def causal_lm_loss_sum(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy of a causal LM over the batch's target tokens and their number.

    ``batch``: ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B, T) with -100 where no loss is taken.
    """
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise ValueError(f"a batch needs {key!r}, got keys {sorted(batch)}")
    device = next(model.parameters()).device
    labels = batch["labels"].to(device)
    if labels.shape != batch["input_ids"].shape:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but input_ids has {tuple(batch['input_ids'].shape)}")
    mask = batch.get("attention_mask")
    logits = model(input_ids=batch["input_ids"].to(device),
                   attention_mask=None if mask is None else mask.to(device)).logits
    targets = labels[:, 1:]
    count = int((targets != -100).sum())
    if count == 0:
        raise ValueError("the batch has no target token (every label is -100)")
    loss = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, count


def neuron_awareness(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    modules: Mapping[str, nn.Module],
    loss_fn: LossFn = causal_lm_loss_sum,
) -> dict[str, AwarenessScores]:
    """Φ per output and input unit of every module in ``modules`` (name → ``nn.Linear`` or ``RoutedLoRALinear``
    inside ``model``; hook the routed module itself, not its ``base_layer``, which the fused kernel bypasses).

    Real backward passes through ``model`` over ``batches``; parameters get no gradients (their ``requires_grad``
    flags are restored afterwards), only the activations do: the graph starts at the input embeddings (HF models),
    or, for a model without them, at the input of the first module reached. ``loss_fn(model, batch)`` returns the summed
    loss of the batch and the number of terms it sums (default: :func:`causal_lm_loss_sum`).
    """
    if not modules:
        raise ValueError("neuron_awareness needs at least one module")
    for name, module in modules.items():
        if not isinstance(module, nn.Module) or not all(
                isinstance(getattr(module, attr, None), int) for attr in ("in_features", "out_features")):
            raise TypeError(f"module {name!r} is a {type(module).__name__}, not a linear layer "
                            "(nn.Linear or RoutedLoRALinear)")
    out_acc = {name: torch.zeros(m.out_features, dtype=torch.float64) for name, m in modules.items()}
    in_acc = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in modules.items()}

    def contribution(acc: Tensor, value: Tensor):
        def hook(grad: Tensor):
            acc.add_((grad.double() * value.detach().double()).reshape(-1, value.shape[-1]).sum(0).cpu())
        return hook

    def pre_hook(name):
        def hook(_module, args):
            x = args[0]
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            x.register_hook(contribution(in_acc[name], x))
            return (x,) + tuple(args[1:])
        return hook

    def post_hook(name):
        def hook(_module, _args, output):
            output.register_hook(contribution(out_acc[name], output))
        return hook

    flags = {p: p.requires_grad for p in model.parameters()}
    handles = []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Module):
        # Activations must carry gradients although no parameter does: start the graph at the embeddings, so every
        # module input is a non-leaf whose hook sees the full ∂L/∂x (all paths, residual included).
        handles.append(embeddings.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True)))
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    total = 0
    try:
        for p in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            for batch in batches:
                loss, count = loss_fn(model, batch)
                if not loss.requires_grad:
                    raise ValueError("the loss does not depend on any of the given modules")
                loss.backward()
                total += count
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
    if total == 0:
        raise ValueError("neuron_awareness got no batches")
    return {name: AwarenessScores(out_acc[name].abs() / total, in_acc[name].abs() / total) for name in modules}


def normalise_awareness(scores: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """λ (P, n) = Φ / Σ_pairs Φ for Φ (P pairs, n neurons), non-negative; columns summing to 0 give 0."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"awareness scores must be (pairs, neurons), got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
        raise ValueError("awareness scores must be finite and >= 0")
    total = scores.sum(0, keepdim=True)
    return torch.where(total > 0, scores / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(scores))


def split_neurons(scores: Tensor | Sequence[Sequence[float]], threshold: float = DEFAULT_THRESHOLD) -> NeuronSplit:
    """Language-general / language-specific neurons from Φ (P pairs, n neurons) with threshold λ (see module doc)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"threshold λ must lie in (0, 1), got {threshold!r}")
    normalised = normalise_awareness(scores)
    pairs = normalised.shape[0]
    if threshold <= 1.0 / pairs:
        warnings.warn(f"λ = {threshold} <= 1/{pairs} pairs: the largest normalised score of a neuron is at least "
                      f"1/{pairs}, so no neuron can be language-general", stacklevel=2)
    best, owner = normalised.max(0)
    owner = torch.where(best < threshold, torch.full_like(owner, -1), owner)
    general = (owner == -1).nonzero().squeeze(1)
    specific = tuple((owner == p).nonzero().squeeze(1) for p in range(pairs))
    return NeuronSplit(owner=owner, general=general, specific=specific)
