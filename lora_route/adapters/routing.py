"""Languages → adapter-bank indices.

A :class:`LanguageRouter` turns the per-sequence languages of a batch, ``src[i] → tgt[i]``, into per-sequence bank
indices ``(a_idx, u_idx, b_idx)`` for each *route* of the method (most methods have one route; MLAS has two: the
general LoRA and the pair-specific one; MoLoRA top-k has none, its experts are picked by a learned router inside
every layer). :func:`expand_to_rows` repeats them over the rows a layer sees. This module knows nothing about
kernels or modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.common.languages import TYPOLOGY_GROUPS, direction_key


def expert_map_from_groups(languages: Sequence[str], groups: Mapping[str, str] | None = None) -> dict[str, int]:
    """Language → expert index, one expert per group (first-appearance order of the groups in ``languages``).

    ``groups`` defaults to :data:`TYPOLOGY_GROUPS`; every language needs a group.
    """
    groups = TYPOLOGY_GROUPS if groups is None else groups
    missing = [lang for lang in languages if lang not in groups]
    if missing:
        raise ValueError(f"no language group for {', '.join(missing)}; pass a groups mapping that covers them")
    order = list(dict.fromkeys(groups[lang] for lang in languages))
    return {lang: order.index(groups[lang]) for lang in languages}


def shared_expert_map(languages: Sequence[str]) -> dict[str, int]:
    """Every language → expert 0 (one expert shared by all sources, or by all targets)."""
    return {lang: 0 for lang in languages}


@dataclass(frozen=True)
class RouteIndices:
    """Bank indices of one route, one entry per sequence (or per row after :func:`expand_to_rows`).

    In route order (A, then the core U, then B, as the kernels' plan): a_idx, b_idx: (N,) int64; u_idx: (N,) int64 or
    None (methods without core); scale: float factor on top of the
    layer's alpha/r (1.0 for the static routers).
    """

    a_idx: Tensor
    u_idx: Tensor | None
    b_idx: Tensor
    scale: float = 1.0

    def __len__(self) -> int:
        return self.a_idx.shape[0]


def expand_to_rows(indices: RouteIndices, num_sequences: int, seq_len: int) -> RouteIndices:
    """Per-sequence indices → per-row indices for an input of ``num_sequences × seq_len`` rows (row-major).

    When the input holds k× more sequences than routes (beam search, ``num_return_sequences``: transformers repeats
    each sequence k times in a row), each sequence's route is repeated k times. Any other mismatch is a ValueError.
    """
    routes = len(indices)
    if num_sequences <= 0 or seq_len < 0:
        raise ValueError(f"bad input shape: {num_sequences} sequences of {seq_len} tokens")
    if num_sequences % routes != 0:
        raise ValueError(
            f"the input has {num_sequences} sequences but route() was given {routes} (src, tgt) pairs; "
            f"pass one pair per sequence (or a divisor of it for beam search / num_return_sequences)"
        )
    repeat = (num_sequences // routes) * seq_len

    def rows(index: Tensor | None) -> Tensor | None:
        return None if index is None else index.repeat_interleave(repeat)

    return RouteIndices(rows(indices.a_idx), rows(indices.u_idx), rows(indices.b_idx), indices.scale)


class LanguageRouter:
    """Static router of a :class:`~lora_route.adapters.config.RoutedLoRAConfig`: (src, tgt) per sequence → bank indices.

    ``indices(src, tgt, device)`` returns one :class:`RouteIndices` per route (see the module docstring);
    unknown languages, directions the method does not define and length mismatches raise ValueError.
    """

    def __init__(self, config: RoutedLoRAConfig):
        self.config = config
        self.method = config.method
        self._languages = set(config.languages)

    @property
    def num_routes(self) -> int:
        return {"mlas": 2, "molora_topk": 0}.get(self.method, 1)

    def check_pairs(self, src: Sequence[str], tgt: Sequence[str]) -> None:
        """ValueError unless src/tgt are equal-length non-empty lists of configured languages."""
        for name, langs in (("src", src), ("tgt", tgt)):
            if isinstance(langs, str) or not isinstance(langs, Sequence):
                raise ValueError(f"{name} must be a list of language codes (one per sequence), got {langs!r}")
        if len(src) != len(tgt):
            raise ValueError(f"src has {len(src)} languages but tgt has {len(tgt)}; give one pair per sequence")
        if not src:
            raise ValueError("src and tgt are empty; give one (src, tgt) pair per sequence")
        for name, langs in (("src", src), ("tgt", tgt)):
            unknown = sorted({lang for lang in langs if lang not in self._languages}, key=str)
            if unknown:
                raise ValueError(
                    f"unknown {name} language {', '.join(map(repr, unknown))}; this adapter was configured for "
                    f"{', '.join(self.config.languages)}"
                )

    def indices(self, src: Sequence[str], tgt: Sequence[str],
                device: torch.device | str = "cpu") -> tuple[RouteIndices, ...]:
        """One :class:`RouteIndices` (per-sequence, int64 on ``device``) per route of the method."""
        self.check_pairs(src, tgt)
        cfg = self.config
        pairs = list(zip(src, tgt))
        if self.method == "molora_topk":
            return ()
        if self.method == "lora":
            routes = [([0] * len(pairs), None, [0] * len(pairs))]
        elif self.method in ("crosslora", "unilora"):
            a = [cfg.src_expert[s] for s, _ in pairs]
            b = [cfg.tgt_expert[t] for _, t in pairs]
            routes = [(a, [0] * len(pairs) if self.method == "unilora" else None, b)]
        elif self.method == "molora_static":
            ids = [self._direction_index(s, t) for s, t in pairs]
            routes = [(ids, None, ids)]
        elif self.method == "mlas":
            ids = [1 + self._direction_index(s, t) for s, t in pairs]
            routes = [([0] * len(pairs), None, [0] * len(pairs)), (ids, None, ids)]
        elif self.method == "dat":
            ids = [cfg.dat_adapter_index(s, t) for s, t in pairs]
            routes = [(ids, None, ids)]
        else:
            raise ValueError(f"unknown method {self.method!r}")

        def tensor(values):
            return None if values is None else torch.tensor(values, dtype=torch.int64, device=device)

        return tuple(RouteIndices(tensor(a), tensor(u), tensor(b)) for a, u, b in routes)

    def _direction_index(self, src: str, tgt: str) -> int:
        index = self.config.direction_index(src, tgt)
        if index is None:
            raise ValueError(
                f"direction {direction_key(src, tgt)} has no expert in this {self.method} adapter; "
                f"configured directions: {', '.join(direction_key(s, t) for s, t in self.config.directions)}"
            )
        return index
