"""The specification itself: scalar, 0-d and per-row scales agree."""
import torch

from lora_route.kernels import reference


def test_zero_dim_tensor_scale_equals_float_scale():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    A = torch.randn(2, 3, 6, generator=generator, dtype=torch.float64)
    B = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64)
    a_idx = torch.tensor([0, 1, -1, 1, 0])
    expected = reference.routed_lora_delta(x, A, B, a_idx, a_idx, scale=0.5)
    zero_dim = reference.routed_lora_delta(x, A, B, a_idx, a_idx, scale=torch.tensor(0.5, dtype=torch.float64))
    per_row = reference.routed_lora_delta(x, A, B, a_idx, a_idx, scale=torch.full((5,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(zero_dim, expected)
    torch.testing.assert_close(per_row, expected)
