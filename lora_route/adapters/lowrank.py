"""SVD initialisation of LoRA factors (MLAS-LoRA paper, eq. 7–8): ``W_s = U Σ V^T``, ``B = U[:, :r] Σ[:r, :r]``,
``A = V^T[:r, :]``.

The routed layers compute ``scaling · B · A`` (scaling = alpha / r), so :func:`low_rank_factors` divides ``B`` by
``scaling``: the adapter then adds exactly the rank-r truncation of ``W_s``, as eq. 9 (``W' = W + B_gen A_gen +
B_spe A_spe``) has it. Its Frobenius error is the energy of the discarded singular values, ``Σ_{i>r} σ_i²``.
When r exceeds ``min(d_out, d_in)`` the extra factor rows / columns are zero.

Large matrices (``min(d_out, d_in) > 4·(r + 10)``, e.g. every MLP projection of a real model) use the randomised
truncated SVD (``torch.svd_lowrank``, r + 10 columns, 4 power iterations, fixed seed): the full SVD of a 2048×640
matrix costs seconds on a loaded CPU and MLAS needs hundreds; the randomised error stays within 1 % of the exact
truncation's (tested). ``exact=True`` forces the full SVD.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["low_rank_factors", "discarded_energy"]


def low_rank_factors(matrix: Tensor, rank: int, scaling: float = 1.0, *, exact: bool | None = None
                     ) -> tuple[Tensor, Tensor]:
    """``(B (d_out, rank), A (rank, d_in))`` with ``scaling · B @ A`` = best rank-``rank`` approximation of
    ``matrix`` (d_out, d_in); computed in float64, returned in ``matrix``'s dtype (float32 for integer input).
    ``exact``: None = full SVD for small matrices, randomised for large ones (module doc); True / False force."""
    if not isinstance(matrix, Tensor) or matrix.dim() != 2:
        raise ValueError(f"matrix must be a 2-D tensor, got {getattr(matrix, 'shape', type(matrix).__name__)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not scaling or not torch.isfinite(torch.tensor(float(scaling))):
        raise ValueError(f"scaling must be finite and non-zero, got {scaling!r}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("matrix holds NaN or inf")
    dtype = matrix.dtype if matrix.is_floating_point() else torch.float32
    oversampled = rank + 10
    if exact is None:
        exact = min(matrix.shape) <= 4 * oversampled
    if exact or oversampled >= min(matrix.shape):
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(matrix.double(), q=oversampled, niter=4)
        vh = v.T
    keep = min(rank, s.numel())
    b = matrix.new_zeros((matrix.shape[0], rank), dtype=torch.float64)
    a = matrix.new_zeros((rank, matrix.shape[1]), dtype=torch.float64)
    b[:, :keep] = u[:, :keep] * s[:keep] / float(scaling)
    a[:keep] = vh[:keep]
    return b.to(dtype), a.to(dtype)


def discarded_energy(matrix: Tensor, rank: int) -> float:
    """``Σ_{i>rank} σ_i²`` of ``matrix``: the squared Frobenius error of its best rank-``rank`` approximation."""
    s = torch.linalg.svdvals(matrix.double())
    return float((s[rank:] ** 2).sum())
