"""The compiled extension ``lora_route._C`` and its backend module ``lora_route.kernels.cuda_ext``.

Without a GPU: the extension imports (when it was built) and rejects CPU tensors with a clear error (its backward
is the torch backend's dense backward, tested in test_torch_backend.py). With a GPU (``cuda`` marker): both forward
kernel families (per-row gather and segment tiles) against a float64 reference for fp32/fp16/bf16, masked sizes,
decode and prefill row counts.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from lora_route import plan_routes, routed_lora_delta
from lora_route.kernels import cuda_ext as cuda_backend
from lora_route.kernels import reference

BUILT = importlib.util.find_spec("lora_route._C") is not None
# A build without a CUDA toolchain holds the CPU kernels alone.
WITH_CUDA_KERNELS = BUILT and hasattr(importlib.import_module("lora_route._C"), "routed_forward")
needs_extension = pytest.mark.skipif(not BUILT, reason="lora_route._C was not built in this install")
needs_cuda_kernels = pytest.mark.skipif(not WITH_CUDA_KERNELS,
                                        reason="lora_route._C was built without CUDA kernels in this install")
needs_gpu_backend = pytest.mark.skipif(not cuda_backend.available(), reason="the cuda backend is not available")

# |got - ref| <= TOLERANCE · (sum of |terms|), elementwise
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _routes(rows: int, n_a: int, n_b: int, n_u: int, seed: int, inactive: float = 0.3):
    generator = torch.Generator().manual_seed(seed)
    active = torch.rand(rows, generator=generator) >= inactive
    a_idx = torch.randint(0, n_a, (rows,), generator=generator).where(active, -1)
    b_idx = torch.randint(0, n_b, (rows,), generator=generator).where(active, -1)
    u_idx = torch.randint(0, n_u, (rows,), generator=generator).where(active, -1) if n_u else None
    return a_idx, b_idx, u_idx


def _tensors(rows, d_in, d_out, rank, n_a, n_b, n_u, dtype, device, seed, row_scale=True):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * std).to(dtype).to(device)

    tensors = {
        "x": randn(rows, d_in),
        "A": randn(n_a, rank, d_in, std=d_in ** -0.5),
        "B": randn(n_b, d_out, rank, std=rank ** -0.5),
        "U": randn(n_u, rank, rank, std=rank ** -0.5) if n_u else None,
        "row_scale": (0.5 + torch.rand(rows, generator=generator, dtype=torch.float64)).to(dtype).to(device)
        if row_scale else None,
        "grad_out": randn(rows, d_out),
        "base": randn(rows, d_out),
    }
    return tensors


def _assert_close(name, got, ref, magnitude, dtype):
    error = (got.double() - ref.double()).abs()
    bound = TOLERANCE[dtype] * magnitude.double()
    bad = ~(error <= bound)
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} entries off, first at {first}: got "
                             f"{got[first].item():.6g}, expected {ref[first].item():.6g} "
                             f"(bound {bound[first].item():.3e})")


# ------------------------------------------------------------------------------------------- without a GPU
@needs_extension
def test_extension_imports_and_exposes_the_forward():
    from lora_route import _C

    assert callable(_C.routed_forward_cpu)
    if WITH_CUDA_KERNELS:
        assert "gather" in _C.routed_forward.__doc__


@needs_cuda_kernels
def test_extension_rejects_cpu_tensors_with_a_clear_error():
    from lora_route import _C

    plan = plan_routes(torch.tensor([0, 1, -1, 0]))
    x, A, B, out = torch.randn(4, 8), torch.randn(2, 3, 8), torch.randn(2, 5, 3), torch.zeros(4, 5)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor, got a tensor on cpu"):
        _C.routed_forward(x, A, B, None, None, 1.0, *plan.tensors()[:3], out, False)


def test_unsupported_reason_names_the_missing_piece():
    reason = cuda_backend.unsupported_reason(torch.zeros(2, 3))
    if WITH_CUDA_KERNELS:
        assert reason == "the cuda backend needs CUDA tensors; got cpu"
    elif BUILT:
        assert reason == "this build of lora_route._C has no CUDA kernels (it was built without a CUDA toolchain)"
    else:
        assert "lora_route._C is not built" in reason
    assert cuda_backend.available() == (WITH_CUDA_KERNELS and torch.cuda.is_available())


def test_routed_forward_refuses_cpu_tensors():
    plan = plan_routes(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="cpu|not built|no CUDA kernels"):
        cuda_backend.routed_forward(torch.zeros(2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 3, 2), None, None, 1.0,
                                    plan.tensors(), torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------- on a GPU
GPU_CASES = [
    # rows, d_in, d_out, rank, n_a, n_b, n_u, inactive share
    (1, 2049, 4097, 16, 4, 4, 0, 0.0),
    (16, 4097, 2049, 8, 8, 8, 2, 0.3),
    (64, 2049, 2049, 16, 30, 30, 0, 0.3),
    (256, 4097, 4097, 16, 6, 6, 1, 0.2),
    (300, 2049, 4097, 16, 8, 8, 2, 0.3),
    (1000, 4097, 2049, 80, 3, 5, 0, 0.1),
    (777, 1000, 3000, 1, 30, 30, 0, 0.5),
    (200, 64, 96, 8, 4, 4, 2, 1.0),
]


def _run_forward(case, dtype, kernel, seed=0):
    rows, d_in, d_out, rank, n_a, n_b, n_u, inactive = case
    t = _tensors(rows, d_in, d_out, rank, n_a, n_b, n_u, dtype, "cuda", seed=seed)
    a_idx, b_idx, u_idx = _routes(rows, n_a, n_b, n_u, seed=seed + 1, inactive=inactive)
    plan = plan_routes(a_idx.cuda(), b_idx.cuda(), u_idx.cuda() if u_idx is not None else None)
    out = t["base"].clone()
    z = cuda_backend.routed_forward(t["x"], t["A"], t["B"], t["U"], t["row_scale"], 0.7, plan.tensors(), out,
                                    kernel=kernel)
    return t, plan, out, z


@pytest.mark.cuda
@needs_gpu_backend
@pytest.mark.parametrize("kernel", ["gather", "segment", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"T{c[0]}-{c[1]}x{c[2]}-r{c[3]}-u{c[6]}-{c[7]}")
def test_forward_matches_float64_reference_and_keeps_base_rows(case, dtype, kernel):
    t, plan, out, z = _run_forward(case, dtype, kernel)
    segments = plan.segments()
    as64 = {k: (v.double() if v is not None else None) for k, v in t.items()}
    ref_delta, ref_z = reference.segment_forward(as64["x"], as64["A"], as64["B"], as64["U"], as64["row_scale"], 0.7,
                                                 segments)
    mag = {k: (v.abs() if v is not None else None) for k, v in as64.items()}
    mag_delta, mag_z = reference.segment_forward(mag["x"], mag["A"], mag["B"], mag["U"], mag["row_scale"], 0.7,
                                                 segments)
    active = plan.row_order.new_zeros(case[0], dtype=torch.bool)
    active[plan.row_order[: int(plan.segment_starts[-1])]] = True
    assert z.dtype == dtype and z.shape == (case[0], case[3])
    _assert_close("z", z, ref_z, mag_z, dtype)
    _assert_close("out", out, as64["base"] + ref_delta, mag_delta + mag["base"], dtype)
    assert torch.equal(out[~active], t["base"][~active]), "rows without adapter changed"
    assert not z[~active].any()


@pytest.mark.cuda
@needs_gpu_backend
@pytest.mark.parametrize("kernel", ["gather", "segment"])
def test_forward_is_deterministic(kernel):
    case = (300, 2049, 1024, 16, 5, 5, 2, 0.2)
    _, _, first_out, first_z = _run_forward(case, torch.bfloat16, kernel, seed=7)
    _, _, second_out, second_z = _run_forward(case, torch.bfloat16, kernel, seed=7)
    assert torch.equal(first_out, second_out) and torch.equal(first_z, second_z)


@pytest.mark.cuda
@needs_gpu_backend
@pytest.mark.parametrize("kernel", ["gather", "segment"])
def test_z_is_computed_even_without_output_features(kernel):
    case = (40, 300, 0, 8, 3, 3, 0, 0.2)
    t, plan, out, z = _run_forward(case, torch.float32, kernel, seed=3)
    _, ref_z = reference.segment_forward(t["x"].double(), t["A"].double(), t["B"].double(), None,
                                         t["row_scale"].double(), 0.7, plan.segments())
    assert out.shape == (40, 0)
    torch.testing.assert_close(z.double(), ref_z, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@needs_gpu_backend
@pytest.mark.parametrize("rows", [16, 600])
def test_public_op_with_a_0d_scale_tensor_matches_torch_backend(rows):
    # ops expands a 0-d scale to a stride-0 (T,) row_scale; the extension needs it contiguous
    t = _tensors(rows, 257, 129, 8, 3, 3, 0, torch.float32, "cuda", seed=11)
    a_idx, b_idx = _routes(rows, 3, 3, 0, seed=12)[:2]
    scale = torch.tensor(0.75, device="cuda", requires_grad=True)
    outs, grads = [], []
    for backend in ("cuda", "torch"):
        x = t["x"].clone().requires_grad_(True)
        out = routed_lora_delta(x, t["A"], t["B"], a_idx.cuda(), b_idx.cuda(), scale=scale, backend=backend)
        out.backward(t["grad_out"])
        outs.append(out.detach())
        grads.append((x.grad, scale.grad.clone()))
        scale.grad = None
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@needs_gpu_backend
def test_unsupported_reason_on_gpu_names_the_dtype():
    assert "float64" in cuda_backend.unsupported_reason(torch.zeros(2, 3, device="cuda", dtype=torch.float64))
    assert cuda_backend.unsupported_reason(torch.zeros(2, 3, device="cuda", dtype=torch.bfloat16)) is None


@pytest.mark.cuda
@needs_gpu_backend
def test_extension_checks_name_the_offending_tensor():
    from lora_route import _C

    plan = plan_routes(torch.tensor([0, 1], device="cuda"))
    x = torch.randn(2, 8, device="cuda")
    A, B = torch.randn(2, 3, 8, device="cuda"), torch.randn(2, 5, 3, device="cuda")
    out = torch.zeros(2, 5, device="cuda")
    tensors = plan.tensors()[:3]
    with pytest.raises(RuntimeError, match=r"A is \[2, 3, 7\] but x has d_in=8"):
        _C.routed_forward(x, A[:, :, :7].contiguous(), B, None, None, 1.0, *tensors, out, True)
    with pytest.raises(RuntimeError, match="B has dtype Half but x has Float"):
        _C.routed_forward(x, A, B.half(), None, None, 1.0, *tensors, out, True)
    with pytest.raises(RuntimeError, match="out must be"):
        _C.routed_forward(x, A, B, None, None, 1.0, *tensors, out[:, :4], True)
