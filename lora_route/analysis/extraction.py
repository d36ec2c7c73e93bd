"""Awareness-guided sub-matrix extraction (MLAS-LoRA paper, §3.2, eq. 4–5): ``W_s = Extract(W_T, I, m, n)``.

From a teacher matrix ``W_T`` (M × N) take an (m × n) sub-matrix for a student module, M ≥ m and N ≥ n.

Choices where the paper is vague (it only says the extraction maximises an aggregate awareness score and keeps the
structure of the most relevant parts):

* Rows are the teacher's neurons (output units). The m rows with the largest aggregate score are the members of the
  index set ``I`` ranked by their row score (for general neurons the mean Φ over pairs, for a pair's specific
  neurons that pair's Φ), then — when ``I`` has fewer than m members — the remaining rows ranked by score; the
  chosen rows keep their teacher order. Rows outside ``I`` are zeroed, so a general sub-matrix carries only general
  neurons' weights and a specific one only that pair's.
* Columns are the n input units with the largest input awareness, in teacher order (inputs are shared by general and
  specific neurons, so they are not masked).
* The aggregate score returned is the sum of the row scores of the members of ``I`` that were kept (the paper's
  "sum of the (average) awareness scores of all the involved neurons").
* With teacher = student (M = m, N = n) every row and column is kept: the result is ``W`` with the rows outside ``I``
  zeroed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Extraction", "extract_submatrix", "top_indices"]


@dataclass(frozen=True)
class Extraction:
    """An extracted sub-matrix ``matrix`` (m, n), the teacher ``rows`` (m,) and ``columns`` (n,) it came from, and its
    aggregate awareness ``score``."""

    matrix: Tensor
    rows: Tensor
    columns: Tensor
    score: float


def top_indices(scores: Tensor, k: int, preferred: Tensor | None = None) -> Tensor:
    """Indices (k,) in ascending order of the k best entries of ``scores`` (n,); entries where the bool mask
    ``preferred`` (n,) is True rank before all others; equal keys: the lower index wins."""
    scores = scores.double().cpu()
    n = scores.numel()
    if not 1 <= k <= n:
        raise ValueError(f"cannot take {k} of {n} entries")
    group = torch.zeros(n, dtype=torch.float64) if preferred is None else (~preferred.cpu()).double()
    order = sorted(range(n), key=lambda i: (float(group[i]), -float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.int64)


def extract_submatrix(
    weight: Tensor,
    row_scores: Tensor,
    column_scores: Tensor,
    shape: tuple[int, int],
    members: Tensor | None = None,
) -> Extraction:
    """``Extract(W_T, I, m, n)``: ``weight`` (M, N); ``row_scores`` (M,), ``column_scores`` (N,) non-negative
    awareness; ``shape`` = (m, n); ``members`` = the index set ``I`` as int indices into the M rows (None: all rows)."""
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D tensor, got {getattr(weight, 'shape', type(weight).__name__)}")
    big_m, big_n = weight.shape
    m, n = (int(v) for v in shape)
    if not (1 <= m <= big_m and 1 <= n <= big_n):
        raise ValueError(f"cannot extract a {m}x{n} sub-matrix from a {big_m}x{big_n} teacher matrix "
                         "(the teacher module must be at least as large as the student's)")
    row_scores = torch.as_tensor(row_scores)
    column_scores = torch.as_tensor(column_scores)
    if row_scores.shape != (big_m,) or column_scores.shape != (big_n,):
        raise ValueError(f"scores must have shapes ({big_m},) and ({big_n},), got {tuple(row_scores.shape)} "
                         f"and {tuple(column_scores.shape)}")
    in_set = torch.ones(big_m, dtype=torch.bool)
    if members is not None:
        members = torch.as_tensor(members, dtype=torch.int64).reshape(-1).cpu()
        if members.numel() and (int(members.min()) < 0 or int(members.max()) >= big_m):
            raise ValueError(f"member indices must lie in [0, {big_m}), got range "
                             f"[{int(members.min())}, {int(members.max())}]")
        in_set = torch.zeros(big_m, dtype=torch.bool)
        in_set[members] = True
    rows = top_indices(row_scores, m, in_set)
    columns = top_indices(column_scores, n)
    keep = in_set[rows].to(weight.device)
    sub = weight[rows.to(weight.device)][:, columns.to(weight.device)]
    sub = torch.where(keep.unsqueeze(1), sub, torch.zeros_like(sub))
    score = float(row_scores.double().cpu()[rows][in_set[rows]].sum())
    return Extraction(matrix=sub, rows=rows, columns=columns, score=score)
