"""The training objective: token cross-entropy on target tokens, optionally R-Drop's symmetric KL.

Logits are computed only where the loss needs them (positions whose next token is a target token), which on a
262k-vocabulary model such as Gemma 3 saves most of the output-layer work and memory.

R-Drop reduction (documented choice): with two dropout passes giving per-token distributions p1, p2 over the N
target tokens of a batch,
    CE  = (1/N) * sum_t  (CE1_t + CE2_t) / 2
    KL  = (1/N) * sum_t  (KL(p1_t || p2_t) + KL(p2_t || p1_t)) / 2
    loss = CE + alpha * KL
i.e. token means (not the paper's per-sentence means), so CE and KL share one scale and alpha is comparable across
batch compositions; padding and prompt tokens are masked out of both terms. The functions below return *sums* over
target tokens so that gradient accumulation and DDP can normalise by the global token count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_route.data.collate import IGNORE_INDEX


class TargetLogits(nn.Module):
    """Wraps a causal LM: ``forward(input_ids, attention_mask, labels, position_ids=None)`` -> (logits (N, V) fp32,
    targets (N,)) for the N positions whose next label is not ``-100``. Equal to the model's own logits at those
    positions (final soft-capping included); DDP wraps this module so gradients still synchronise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "get_decoder") or model.get_output_embeddings() is None:
            raise TypeError(f"{type(model).__name__} is not a causal LM with a decoder and an output layer")
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)} differ in shape")
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        hidden = self.model.get_decoder()(**kwargs).last_hidden_state
        mask = labels[:, 1:] != IGNORE_INDEX
        selected = hidden[:, :-1][mask]
        logits = self.model.get_output_embeddings()(selected).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits, labels[:, 1:][mask]


@dataclass
class LossSums:
    """Sums over the target tokens of one micro-batch (divide by the token count for means)."""

    ce: Tensor
    kl: Tensor | None
    tokens: int


def token_loss_sums(logits: Tensor, targets: Tensor, rdrop: bool) -> LossSums:
    """CE (and with ``rdrop`` the symmetric KL) summed over target tokens.

    logits: (N, V) for a plain batch, or (2N, V) for an R-Drop batch whose second half repeats the first.
    targets: matching (N,) or (2N,) token ids.
    """
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"logits (N, V) and targets (N,) expected, got {tuple(logits.shape)} / {tuple(targets.shape)}")
    if not rdrop:
        return LossSums(F.cross_entropy(logits, targets, reduction="sum"), None, targets.shape[0])
    if logits.shape[0] % 2:
        raise ValueError("an R-Drop batch holds every row twice; got an odd number of target tokens")
    n = logits.shape[0] // 2
    if not torch.equal(targets[:n], targets[n:]):
        raise ValueError("the two halves of an R-Drop batch have different targets")
    logp = logits.log_softmax(dim=-1)
    ce = F.nll_loss(logp, targets, reduction="sum") / 2
    p1, p2 = logp[:n], logp[n:]
    kl = (F.kl_div(p2, p1, log_target=True, reduction="sum") + F.kl_div(p1, p2, log_target=True, reduction="sum")) / 2
    return LossSums(ce, kl, n)
