"""SVD initialisation (MLAS-LoRA paper, eq. 7–8): reconstruction error = energy of the discarded singular values."""
import pytest
import torch

from lora_route.adapters.lowrank import discarded_energy, low_rank_factors


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_reconstruction_error_is_discarded_energy(rank):
    u, _ = torch.linalg.qr(torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    sigma = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    matrix = u @ torch.diag(sigma) @ v.T
    b, a = low_rank_factors(matrix, rank, scaling=2.0)
    assert b.shape == (8, rank) and a.shape == (rank, 6)
    error = ((matrix - 2.0 * b @ a) ** 2).sum().item()
    assert error == pytest.approx(float((sigma[rank:] ** 2).sum()), abs=1e-10)
    assert discarded_energy(matrix, rank) == pytest.approx(error, abs=1e-10)
    # eq. 7: A has orthonormal rows (V^T), B = U Σ / scaling
    assert torch.allclose(a @ a.T, torch.eye(rank, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(2.0 * b.norm(dim=0), sigma[:rank])


def test_rank_above_matrix_rank_pads_with_zeros_and_keeps_dtype():
    matrix = torch.randn(3, 4)
    b, a = low_rank_factors(matrix, 6)
    assert b.dtype == torch.float32 and b.shape == (3, 6) and a.shape == (6, 4)
    assert torch.allclose(b @ a, matrix, atol=1e-5)
    assert torch.count_nonzero(b[:, 3:]) == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        low_rank_factors(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="rank"):
        low_rank_factors(torch.zeros(3, 3), 0)
    with pytest.raises(ValueError, match="scaling"):
        low_rank_factors(torch.zeros(3, 3), 1, scaling=0.0)
    with pytest.raises(ValueError, match="NaN"):
        low_rank_factors(torch.full((2, 2), float("nan")), 1)


def test_randomised_path_for_large_matrices_is_close_to_exact():
    gen = torch.Generator().manual_seed(2)
    matrix = torch.randn(300, 160, generator=gen, dtype=torch.float64)  # flat spectrum: the hard case
    exact_b, exact_a = low_rank_factors(matrix, 8, exact=True)
    b, a = low_rank_factors(matrix, 8)  # 160 > 4·18: randomised
    optimum = discarded_energy(matrix, 8)
    error = float(((matrix - b @ a) ** 2).sum())
    assert optimum <= error <= 1.01 * optimum
    assert float(((matrix - exact_b @ exact_a) ** 2).sum()) == pytest.approx(optimum)
    assert torch.equal(b, low_rank_factors(matrix, 8)[0])  # seeded: deterministic
