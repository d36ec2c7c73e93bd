"""The float32 output layer's greedy tokens, screened with a bfloat16 copy of its weight.

Decoding a small model with a large vocabulary on a CPU spends most of a step in the output layer: Gemma 3 270M's
262,144 × 640 float32 weight is 671 MB, read at every step. :class:`ScreenedArgmax` ranks the tokens with bfloat16
copies of the weight and the hidden states (half the bytes, and the CPU's bfloat16 dot-product instructions), then
computes in float32 only the logits of the tokens that the rounding could have put first. For hidden state ``h`` (d
features) and token ``v``, the bfloat16 logit ``a_v`` (float32 sums of the products of ``W̃ = bf16(W)`` and
``h̃ = bf16(h)``, rounded to bfloat16) and the float32 layer's logit ``l_v`` (a float32 sum of d products) differ by
at most

    ‖W_v − W̃_v‖·‖h‖ + ‖W̃_v‖·‖h − h̃‖ + γ_d·(‖W̃_v‖·‖h̃‖ + ‖W_v‖·‖h‖) + 2⁻⁸·|a_v| / (1 − 2⁻⁸),
    γ_d = d·2⁻²⁴ / (1 − d·2⁻²⁴)

(rounding the operands, the two float32 sums, the bfloat16 result). ``B``, twice that bound's maximum over the
vocabulary (a margin for instructions that flush subnormal products), bounds every token of a row; so the float32
greedy token, and every token tied with it, has ``a_v ≥ max(a) − 2B``. Those candidates' logits are computed in
float32 and the first largest wins, as in ``argmax`` over the full float32 logits. The candidates' float32 sums are
computed by a product of another shape than the full layer's, so their last bit can differ as it does between batch
sizes; a row whose two best tokens are that close may pick the other one.

On the CPU, bfloat16 products sum in float32. CUDA's bfloat16 products may sum in reduced precision
(``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction``), which the bound does not cover, so only
CPU layers are screened, and only on CPUs with bfloat16 dot-product instructions (AVX-512 BF16 or AMX), without
which a bfloat16 product is no cheaper than the float32 one it would replace.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BF16_UNIT_ROUNDOFF = 2.0 ** -8
_FP32_UNIT_ROUNDOFF = 2.0 ** -24
_SUBNORMAL_MARGIN = 2.0
# Beyond this share of the vocabulary as candidates, computing the whole float32 layer is the cheaper way.
_MAX_CANDIDATE_SHARE = 1 / 16
# Positions screened per pass: bounds the float32 temporaries (rows × vocabulary) and the union of candidates.
_ROWS_PER_PASS = 128


class ScreenedArgmax:
    """Greedy tokens of the bias-free float32 linear layer ``weight`` (vocabulary, features), from a bfloat16 copy
    of it that it keeps (half the layer's bytes), with every candidate that rounding could have put first checked
    in float32."""

    def __init__(self, weight: Tensor):
        if not isinstance(weight, Tensor):
            raise ValueError(f"ScreenedArgmax needs a weight tensor, got {type(weight).__name__}")
        if weight.dim() != 2 or weight.dtype != torch.float32:
            raise ValueError(f"ScreenedArgmax needs a 2-D float32 weight, got {tuple(weight.shape)} {weight.dtype}")
        if weight.device.type != "cpu":
            raise ValueError(f"ScreenedArgmax screens CPU layers only (bfloat16 sums elsewhere may use reduced "
                             f"precision), got a weight on {weight.device}")
        with torch.no_grad():
            self.weight = weight.detach()
            self.weight_bf16 = self.weight.to(torch.bfloat16)
            rounded = self.weight_bf16.float()
            self.rounding_norm = float((self.weight - rounded).norm(dim=1).max())
            self.rounded_norm = float(rounded.norm(dim=1).max())
            self.norm = float(self.weight.norm(dim=1).max())
        features = self.weight.shape[1]
        self.gamma = features * _FP32_UNIT_ROUNDOFF / (1 - features * _FP32_UNIT_ROUNDOFF)
        self.version = (weight._version, weight.data_ptr())

    def current_for(self, weight: Tensor) -> bool:
        """Whether this screen was built from ``weight`` as it is now."""
        return self.version == (weight._version, weight.data_ptr())

    @torch.no_grad()
    def approximate(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For float32 hidden states ``rows`` (N, features): the bfloat16 logits as float32 (N, vocabulary), their
        largest value per row (N,) and, per row, a bound (N,) on their distance to the float32 layer's logits, the
        margin included."""
        rows_bf16 = rows.to(torch.bfloat16)
        approx = F.linear(rows_bf16, self.weight_bf16).float()
        lowest, highest = torch.aminmax(approx, dim=1)
        rounded_rows = rows_bf16.float()
        row_norm, rounded_row_norm = rows.norm(dim=1), rounded_rows.norm(dim=1)
        bound = _SUBNORMAL_MARGIN * (
            self.rounding_norm * row_norm + self.rounded_norm * (rows - rounded_rows).norm(dim=1)
            + self.gamma * (self.rounded_norm * rounded_row_norm + self.norm * row_norm)
            + torch.maximum(lowest.abs(), highest.abs()) * _BF16_UNIT_ROUNDOFF / (1 - _BF16_UNIT_ROUNDOFF))
        return approx, highest, bound

    def _greedy(self, rows: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(tokens (N,), float32 logits (N,))`` of the float32 layer's greedy token per row of ``rows`` (N,
        features); None when a value is not finite or the candidates are too many to be worth screening."""
        approx, highest, bound = self.approximate(rows)
        threshold = highest - 2 * bound
        if not bool(torch.isfinite(threshold).all()):
            return None
        candidates = (approx >= threshold[:, None]).any(dim=0).nonzero().squeeze(1)
        if candidates.numel() > _MAX_CANDIDATE_SHARE * self.weight.shape[0]:
            return None
        exact = F.linear(rows, self.weight[candidates])
        if not bool(torch.isfinite(exact).all()):
            return None
        position = exact.argmax(dim=1)
        return candidates[position], exact.gather(1, position[:, None]).squeeze(1)

    @torch.no_grad()
    def logits(self, hidden: Tensor) -> Tensor:
        """Logits (``hidden.shape[:-1]``, vocabulary) whose argmax is the float32 layer's: ``-inf`` except at each
        position's greedy token, which holds its float32 logit. Hidden states with a non-finite value, or more
        candidates in a pass of up to 128 positions than a sixteenth of the vocabulary, get the full float32 logits
        instead."""
        if not isinstance(hidden, Tensor) or hidden.dtype != torch.float32 or hidden.dim() < 1 \
                or hidden.shape[-1] != self.weight.shape[1]:
            got = f"{tuple(hidden.shape)} {hidden.dtype}" if isinstance(hidden, Tensor) else type(hidden).__name__
            raise ValueError(f"hidden states must be float32 (..., {self.weight.shape[1]}), got {got}")
        rows = hidden.reshape(-1, hidden.shape[-1])
        logits = rows.new_full((rows.shape[0], self.weight.shape[0]), float("-inf"))
        for start in range(0, rows.shape[0], _ROWS_PER_PASS):
            chunk = rows[start:start + _ROWS_PER_PASS]
            greedy = self._greedy(chunk)
            if greedy is None:
                return F.linear(hidden, self.weight)
            tokens, values = greedy
            logits[torch.arange(start, start + chunk.shape[0]), tokens] = values
        return logits.reshape(*hidden.shape[:-1], self.weight.shape[0])


_SCREENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def cpu_has_bf16_products() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX-512 BF16 or AMX tiles), as torch reports them."""
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def screen_for(layer: nn.Module) -> ScreenedArgmax | None:
    """The screen of ``layer`` (kept while the layer lives, until its weight changes), or ``None`` when the layer
    cannot be screened: not a bias-free ``nn.Linear`` with a float32 CPU weight, called through an instance-level
    ``forward`` (a hook's wrapper), or on a CPU without bfloat16 dot-product instructions."""
    if type(layer) is not nn.Linear or layer.bias is not None or "forward" in layer.__dict__:
        return None
    if not cpu_has_bf16_products():
        return None
    weight = layer.weight
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    screen = _SCREENS.get(layer)
    if screen is None or not screen.current_for(weight):
        screen = _SCREENS[layer] = ScreenedArgmax(weight)
    return screen


@contextlib.contextmanager
def screened_output_layer(model: nn.Module) -> Iterator[bool]:
    """Within: ``model``'s output layer returns :meth:`ScreenedArgmax.logits` (``-inf`` except at each position's
    float32 greedy token), so the greedy token of any increasing function of the logits the model applies after the
    layer (softcapping, a positive scale) is unchanged. Yields whether the layer is screened (see
    :func:`screen_for`); inside autograd the layer is left as it is."""
    layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    screen = screen_for(layer) if isinstance(layer, nn.Module) and not torch.is_grad_enabled() else None
    if screen is None:
        yield False
        return
    layer.forward = screen.logits
    try:
        yield True
    finally:
        del layer.forward
