"""Every backend against a float64 evaluation of the reference, outputs and every gradient, over a sampled grid.

The grid samples (rather than crosses) sizes, ranks, bank sizes, index patterns, the optional core U and the scale
kind; every sampled case runs for every backend and dtype — the torch backend in both its formulations ("torch": dense,
"torch-segments": one GEMM pair per segment). CPU runs the torch backend, the compiled CPU kernels (float32, where
``lora_route._C`` is built) and the Triton kernels under ``TRITON_INTERPRET=1`` (see conftest.py); the
``cuda``-marked copy adds masked sizes 2049 / 4097 on a GPU. The layer grid runs ``routed_linear`` (base GEMM
included) through every backend, the fused Triton one among them.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import lora_route
from lora_route import plan_routes, routed_linear, routed_lora_delta
from lora_route.kernels import reference, torch_backend
from lora_route.triton_kernels import unsupported_reason

# |got - ref| <= TOLERANCE · (sum of |terms|), elementwise (see _assert_matches): a few units of each dtype's epsilon
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TORCH_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
CPU_DTYPES = (torch.float32,)
PATTERNS = ("one", "distinct", "zipf", "none", "mixed")


@dataclass(frozen=True)
class Case:
    rows: int
    d_in: int
    d_out: int
    rank: int
    n_a: int
    n_b: int
    n_u: int  # 0: no core U
    pattern: str  # one of PATTERNS
    scale: str  # "float", "row" (T,) tensor or "scalar" 0-d tensor
    lead: tuple = ()  # (n,): x is passed as (n, rows // n, d_in)
    use_plan: bool = True  # pass a prebuilt plan (else the op plans per call)

    @property
    def id(self):
        core = f"U{self.n_u}" if self.n_u else "noU"
        return (f"T{self.rows}-{self.d_in}x{self.d_out}-r{self.rank}-a{self.n_a}b{self.n_b}-{core}-"
                f"{self.pattern}-{self.scale}")


CPU_CASES = [
    Case(16, 33, 65, 1, 1, 1, 0, "one", "float"),
    Case(24, 65, 33, 8, 4, 4, 2, "distinct", "row", lead=(2,)),
    Case(40, 127, 65, 16, 32, 32, 0, "zipf", "row"),
    Case(33, 33, 127, 16, 8, 5, 3, "mixed", "float", use_plan=False),
    Case(20, 65, 65, 8, 3, 3, 1, "none", "row"),
    Case(64, 127, 127, 8, 32, 32, 4, "mixed", "scalar"),
    Case(17, 33, 33, 1, 5, 7, 2, "zipf", "float", use_plan=False),
    Case(48, 65, 127, 16, 1, 32, 0, "distinct", "scalar"),
    Case(30, 127, 33, 16, 12, 1, 2, "mixed", "row"),
    Case(1, 33, 65, 8, 4, 4, 2, "distinct", "row"),
    Case(9, 127, 127, 1, 32, 32, 0, "none", "float"),
    Case(50, 33, 65, 16, 2, 2, 2, "one", "row"),
    Case(64, 65, 33, 8, 32, 32, 32, "distinct", "row"),
    Case(37, 127, 127, 16, 6, 6, 2, "zipf", "scalar", lead=(37,), use_plan=False),
    Case(45, 33, 127, 1, 3, 4, 0, "mixed", "row"),
    Case(29, 127, 65, 8, 1, 1, 0, "mixed", "float"),
    Case(20, 33, 65, 128, 2, 3, 2, "mixed", "row"),  # the largest rank the Triton kernels take (MAX_RANK)
]

GPU_CASES = [
    Case(300, 2049, 4097, 16, 8, 8, 2, "mixed", "row"),
    Case(513, 4097, 2049, 8, 32, 32, 0, "zipf", "float"),
    Case(64, 2049, 2049, 16, 32, 32, 4, "distinct", "scalar"),
    Case(1000, 4097, 4097, 1, 1, 1, 1, "one", "row"),
    Case(257, 2049, 4097, 16, 4, 4, 0, "none", "float"),
]


def _backend_dtypes(backends):
    pairs = []
    for backend in backends:
        dtypes = TORCH_DTYPES if backend.startswith("torch") else CPU_DTYPES if backend == "cpu" else TRITON_DTYPES
        for dtype in dtypes:
            pairs.append(pytest.param(backend, dtype, id=f"{backend}-{str(dtype).split('.')[-1]}"))
    return pairs


def _require_backend(backend: str) -> None:
    if not lora_route.backends()[backend.split("-")[0]]:
        pytest.skip(f"backend {backend!r} is not available in this install")


@contextmanager
def _formulation(backend: str | None):
    """Run the torch backend in one formulation: dense for "torch", segments for "torch-segments"."""
    with torch_backend.forced_formulation("segments" if backend == "torch-segments" else "dense"):
        yield backend.split("-")[0] if backend is not None else None


def _pattern_indices(pattern: str, rows: int, bank: int, generator: torch.Generator, offset: int) -> torch.Tensor:
    """(rows,) int64 bank indices in [0, bank) for one index pattern (before -1 rows are applied)."""
    if pattern == "one":
        return torch.full((rows,), offset % bank, dtype=torch.int64)
    if pattern == "distinct":
        return (torch.arange(rows) * (2 * offset + 1) + offset) % bank
    weights = 1.0 / torch.arange(1, bank + 1, dtype=torch.float64) ** 1.5
    if pattern == "zipf":
        return torch.multinomial(weights, rows, replacement=True, generator=generator)
    return torch.randint(0, bank, (rows,), generator=generator)


def _indices(case: Case, generator: torch.Generator):
    if case.pattern == "none":
        active = torch.zeros(case.rows, dtype=torch.bool)
    elif case.pattern == "mixed":
        active = torch.rand(case.rows, generator=generator) < 0.7
        active[0], active[-1] = True, case.rows == 1
    else:
        active = torch.ones(case.rows, dtype=torch.bool)
    a_idx = _pattern_indices(case.pattern, case.rows, case.n_a, generator, 0).where(active, -1)
    b_idx = _pattern_indices(case.pattern, case.rows, case.n_b, generator, 1).where(active, -1)
    u_idx = _pattern_indices(case.pattern, case.rows, case.n_u, generator, 2).where(active, -1) if case.n_u else None
    return a_idx, b_idx, u_idx


def _make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Leaf tensors of one case (rounded to ``dtype``) and the random upstream gradient."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * std).to(dtype).to(device)

    a_idx, b_idx, u_idx = _indices(case, generator)
    inputs = {
        "x": randn(case.rows, case.d_in),
        "A": randn(case.n_a, case.rank, case.d_in, std=case.d_in ** -0.5),
        "B": randn(case.n_b, case.d_out, case.rank, std=case.rank ** -0.5),
    }
    if case.n_u:
        inputs["U"] = randn(case.n_u, case.rank, case.rank, std=case.rank ** -0.5)
    if case.scale == "row":
        inputs["scale"] = (0.5 + torch.rand(case.rows, generator=generator, dtype=torch.float64)).to(dtype).to(device)
    elif case.scale == "scalar":
        inputs["scale"] = torch.tensor(0.75, dtype=dtype, device=device)
    indices = {name: (index.to(device) if index is not None else None)
               for name, index in (("a_idx", a_idx), ("b_idx", b_idx), ("u_idx", u_idx))}
    return {"leaves": inputs, "indices": indices, "grad_out": randn(case.rows, case.d_out)}


def _delta(case: Case, leaves: dict, indices: dict, backend: str | None, plan=None):
    """The delta through the public op (``backend``) or the float64 reference (``backend=None``)."""
    scale = leaves.get("scale", 0.5)
    if backend is None:
        if isinstance(scale, torch.Tensor) and scale.dim() == 0:
            scale = scale.expand(case.rows)  # the reference takes a float or a (T,) tensor
        return reference.routed_lora_delta(leaves["x"], leaves["A"], leaves["B"], indices["a_idx"], indices["b_idx"],
                                           U=leaves.get("U"), u_idx=indices["u_idx"], scale=scale)
    x = leaves["x"]
    if case.lead:
        x = x.reshape(*case.lead, case.rows // case.lead[0], case.d_in)
    out = routed_lora_delta(x, leaves["A"], leaves["B"], indices["a_idx"], indices["b_idx"], U=leaves.get("U"),
                            u_idx=indices["u_idx"], scale=scale, plan=plan, backend=backend)
    return out.reshape(case.rows, case.d_out)


def _forward_backward(case: Case, data: dict, backend: str | None, magnitude: bool = False):
    """``(out, {name: grad})`` of the delta; ``backend=None`` evaluates the reference in float64, and with
    ``magnitude`` on the absolute values of every input, which gives each output and gradient entry the sum of the
    absolute values of its terms (the scale that rounding errors are bounded by)."""
    def prepare(t):
        t = t.double().abs() if magnitude else (t.double() if backend is None else t)
        return t.detach().clone().requires_grad_(True)

    leaves = {name: prepare(t) for name, t in data["leaves"].items()}
    indices = data["indices"]
    plan = None
    if backend is not None and case.use_plan:
        plan = plan_routes(indices["a_idx"], indices["b_idx"], indices["u_idx"])
    with _formulation(backend) as name:
        out = _delta(case, leaves, indices, name, plan)
        grad_out = data["grad_out"] if backend is not None else data["grad_out"].double()
        out.backward(grad_out.abs() if magnitude else grad_out)
    return out.detach(), {name: t.grad for name, t in leaves.items()}


def _assert_matches(name: str, got: torch.Tensor, ref: torch.Tensor, magnitude: torch.Tensor, dtype) -> None:
    """Elementwise |got - ref| <= tol(dtype) · (sum of |terms|), so entries with no terms (rows without adapter,
    unused bank entries) must be exactly zero."""
    assert got is not None, f"{name}: no gradient"
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    error = (got.double().cpu() - ref.cpu()).abs()
    bound = TOLERANCE[dtype] * magnitude.cpu()
    bad = ~(error <= bound)
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} entries off, first at {first}: "
                             f"got {got[first].item():.6g}, expected {ref[first].item():.6g} "
                             f"(bound {bound[first].item():.3e})")


def _check_case(case: Case, backend: str, dtype: torch.dtype, device: str) -> None:
    _require_backend(backend)
    data = _make_inputs(case, dtype, device)
    out, grads = _forward_backward(case, data, backend)
    ref_out, ref_grads = _forward_backward(case, data, None)
    mag_out, mag_grads = _forward_backward(case, data, None, magnitude=True)
    _assert_matches("out", out, ref_out, mag_out, dtype)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        _assert_matches(f"d{name}", grads[name], ref_grads[name], mag_grads[name], dtype)
    if case.pattern == "none":
        assert not out.any() and not any(g.any() for g in grads.values()), "rows without adapter contributed"


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(("backend", "dtype"), _backend_dtypes(("torch", "torch-segments", "triton", "cpu")))
def test_grid_matches_float64_reference(case, backend, dtype):
    _check_case(case, backend, dtype, "cpu")


def _layer_forward_backward(case: Case, data: dict, weight: torch.Tensor, bias: torch.Tensor, backend: str | None,
                            magnitude: bool = False):
    """``routed_linear`` with the layer's weight and bias: ``(out, {name: grad})``, as :func:`_forward_backward`."""
    def prepare(t):
        t = t.double().abs() if magnitude else (t.double() if backend is None else t)
        return t.detach().clone().requires_grad_(True)

    leaves = {name: prepare(t) for name, t in {**data["leaves"], "weight": weight, "bias": bias}.items()}
    idx = data["indices"]
    scale = leaves.get("scale", 0.5)
    grad_out = data["grad_out"] if backend is not None else data["grad_out"].double()
    if backend is None:
        if isinstance(scale, torch.Tensor) and scale.dim() == 0:
            scale = scale.expand(case.rows)
        out = reference.routed_linear(leaves["x"], leaves["weight"], leaves["bias"], leaves["A"], leaves["B"],
                                      idx["a_idx"], idx["b_idx"], U=leaves.get("U"), u_idx=idx["u_idx"], scale=scale)
    else:
        with _formulation(backend) as name:
            plan = plan_routes(idx["a_idx"], idx["b_idx"], idx["u_idx"])
            out = routed_linear(leaves["x"], leaves["weight"], leaves["bias"], leaves["A"], leaves["B"], idx["a_idx"],
                                idx["b_idx"], U=leaves.get("U"), u_idx=idx["u_idx"], scale=scale, plan=plan,
                                backend=name)
    out.backward(grad_out.abs() if magnitude else grad_out)
    return out.detach(), {name: t.grad for name, t in leaves.items()}


LAYER_CASES = [CPU_CASES[1], CPU_CASES[3], CPU_CASES[6], CPU_CASES[8]]


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(("backend", "dtype"),
                         _backend_dtypes(("torch", "torch-segments", "triton", "triton_fused", "cpu")))
def test_layer_grid_matches_float64_reference(case, backend, dtype):
    """The whole layer (base GEMM + delta) and every gradient, the weight's and the bias' included."""
    _check_layer_case(case, backend, dtype, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("case", GPU_CASES[:3] + LAYER_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(("backend", "dtype"), _backend_dtypes(("torch", "triton", "triton_fused", "cuda")))
def test_layer_grid_matches_float64_reference_on_gpu(case, backend, dtype):
    _check_layer_case(case, backend, dtype, "cuda")


def _check_layer_case(case: Case, backend: str, dtype: torch.dtype, device: str) -> None:
    _require_backend(backend)
    data = _make_inputs(case, dtype, device, seed=5)
    generator = torch.Generator().manual_seed(6)
    weight = (torch.randn(case.d_out, case.d_in, generator=generator, dtype=torch.float64) * case.d_in ** -0.5)
    bias = torch.randn(case.d_out, generator=generator, dtype=torch.float64)
    weight, bias = weight.to(dtype).to(device), bias.to(dtype).to(device)
    out, grads = _layer_forward_backward(case, data, weight, bias, backend)
    ref_out, ref_grads = _layer_forward_backward(case, data, weight, bias, None)
    mag_out, mag_grads = _layer_forward_backward(case, data, weight, bias, None, magnitude=True)
    _assert_matches("out", out, ref_out, mag_out, dtype)
    for name in ref_grads:
        _assert_matches(f"d{name}", grads[name], ref_grads[name], mag_grads[name], dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("case", GPU_CASES + CPU_CASES[:4], ids=lambda c: c.id)
@pytest.mark.parametrize(("backend", "dtype"), _backend_dtypes(("torch", "triton", "cuda")))
def test_grid_matches_float64_reference_on_gpu(case, backend, dtype):
    _check_case(case, backend, dtype, "cuda")


def test_gradcheck_float64_torch_backend():
    case = Case(6, 4, 3, 2, 3, 2, 2, "mixed", "row")
    data = _make_inputs(case, torch.float64, "cpu", seed=3)
    idx = data["indices"]
    leaves = [data["leaves"][name].clone().requires_grad_(True) for name in ("x", "A", "B", "U", "scale")]
    weight = torch.randn(case.d_out, case.d_in, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(case.d_out, dtype=torch.float64, requires_grad=True)

    def linear(x, A, B, U, scale, weight, bias):
        return routed_linear(x, weight, bias, A, B, idx["a_idx"], idx["b_idx"], U=U, u_idx=idx["u_idx"],
                             scale=scale, backend="torch")

    assert torch.autograd.gradcheck(linear, (*leaves, weight, bias), fast_mode=True)
    scalar = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def delta(x, A, B, scale):
        return routed_lora_delta(x, A, B, idx["a_idx"], idx["b_idx"], scale=scale, backend="torch")

    assert torch.autograd.gradcheck(delta, (*leaves[:3], scalar))


@pytest.mark.parametrize("pattern", ["none", "mixed"])
@pytest.mark.parametrize(("backend", "dtype"), _backend_dtypes(("torch", "torch-segments", "triton", "cpu")))
def test_rows_without_adapter_keep_the_base_output_bit_for_bit(pattern, backend, dtype):
    _require_backend(backend)
    case = Case(21, 33, 65, 8, 3, 4, 2, pattern, "row")
    data = _make_inputs(case, dtype, "cpu", seed=1)
    leaves, idx = data["leaves"], data["indices"]
    weight = torch.randn(case.d_out, case.d_in, dtype=torch.float64).to(dtype)
    bias = torch.randn(case.d_out, dtype=torch.float64).to(dtype)
    with _formulation(backend) as name:
        out = routed_linear(leaves["x"], weight, bias, leaves["A"], leaves["B"], idx["a_idx"], idx["b_idx"],
                            U=leaves["U"], u_idx=idx["u_idx"], scale=leaves["scale"], backend=name)
    base = F.linear(leaves["x"], weight, bias)
    inactive = idx["a_idx"] < 0
    assert inactive.any()
    assert torch.equal(out[inactive], base[inactive])
    if pattern == "mixed":
        assert not torch.equal(out[~inactive], base[~inactive])


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
def test_triton_backward_is_deterministic(dtype):
    _require_backend("triton")
    case = Case(64, 65, 33, 16, 3, 2, 2, "zipf", "row")
    data = _make_inputs(case, dtype, "cpu", seed=2)
    first_out, first = _forward_backward(case, data, "triton")
    second_out, second = _forward_backward(case, data, "triton")
    assert torch.equal(first_out, second_out)
    for name in first:
        assert torch.equal(first[name], second[name]), f"d{name} differs between two runs"


def _triton_kernels():
    _require_backend("triton")
    from lora_route.triton_kernels import routed_lora

    return routed_lora


def test_launch_count_does_not_grow_with_the_number_of_adapters(monkeypatch):
    kernels = _triton_kernels()
    launches = []

    class CountingKernel:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches.append(self.name)
            return self.kernel[grid]

    for name in ("_shrink_kernel", "_expand_kernel", "_grad_shrink_kernel", "_bank_grad_kernel"):
        monkeypatch.setattr(kernels, name, CountingKernel(name, getattr(kernels, name)))
    counts = []
    for bank in (1, 32):
        launches.clear()
        case = Case(32, 33, 33, 8, bank, bank, bank, "distinct", "row")
        _forward_backward(case, _make_inputs(case, torch.float32, "cpu"), "triton")
        counts.append(sorted(launches))
    assert counts[0] == counts[1]
    assert counts[0] == sorted(["_shrink_kernel", "_expand_kernel", "_grad_shrink_kernel", "_expand_kernel"]
                               + ["_bank_grad_kernel"] * 3)


@pytest.mark.parametrize("block_m", [16, 64])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("rows", [1, 7, 64, 100])
def test_row_tiles_cover_every_active_row_once(rows, pattern, block_m):
    kernels = _triton_kernels()
    case = Case(rows, 1, 1, 1, 5, 3, 2, pattern, "float")
    a_idx, b_idx, u_idx = _indices(case, torch.Generator().manual_seed(rows))
    plan = plan_routes(a_idx, b_idx, u_idx)
    tile_segment, tile_start = kernels._row_tiles(plan, block_m, 5 * 3 * 2)
    assert tile_segment.shape[0] == min(rows, 30) + -(-rows // block_m)
    covered = []
    for segment, start in zip(tile_segment.tolist(), tile_start.tolist()):
        if segment < 0:
            continue
        end = min(start + block_m, int(plan.segment_starts[segment + 1]))
        assert int(plan.segment_starts[segment]) <= start < end
        covered.extend(range(start, end))
    assert sorted(covered) == list(range(int((a_idx >= 0).sum())))


def test_host_launch_arithmetic_matches_tritons():
    import triton

    kernels = _triton_kernels()
    for n in range(300):
        assert kernels._next_power_of_2(n) == triton.next_power_of_2(n), n
        for divisor in (1, 16, 64, 128):
            assert kernels._cdiv(n, divisor) == triton.cdiv(n, divisor), (n, divisor)


def test_unsupported_reason_names_the_problem(monkeypatch):
    x = torch.zeros(2, 3)
    assert "fp32/fp16/bf16" in unsupported_reason(x.double())
    assert "ranks up to" in unsupported_reason(x, rank=1000)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "CUDA tensor" in unsupported_reason(x)


def test_triton_rejects_a_rank_above_its_tile():
    kernels = _triton_kernels()
    rank = kernels.MAX_RANK + 1
    x, A, B = torch.zeros(2, 4), torch.zeros(1, rank, 4), torch.zeros(1, 3, rank)
    plan = plan_routes(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=f"r <= {kernels.MAX_RANK}"):
        kernels.routed_forward(x, A, B, None, None, 1.0, plan.tensors(), torch.zeros(2, 3))


def test_triton_rejects_an_output_it_cannot_accumulate_into():
    kernels = _triton_kernels()
    x, A, B = torch.zeros(2, 4), torch.zeros(1, 8, 4), torch.zeros(1, 3, 8)
    plan = plan_routes(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"out must be a contiguous \(2, ...\) tensor"):
        kernels.routed_forward(x, A, B, None, None, 1.0, plan.tensors(), torch.zeros(3, 2).t())


@pytest.mark.parametrize("needs", [(True,) * 5, (False, False, True, False, False), (False, False, False, False, True),
                                   (True, False, False, True, False), (False, True, False, False, False)],
                         ids=lambda n: "".join("1" if x else "0" for x in n))
def test_triton_backend_contract_matches_segment_reference(needs):
    """The backend functions themselves (float scale and row scale together, subsets of ``needs``) against the
    torch backend's segment functions, which ops.py only reaches with one of the two scales set."""
    kernels = _triton_kernels()
    case = Case(40, 33, 65, 8, 4, 3, 2, "mixed", "row")
    data = _make_inputs(case, torch.float32, "cpu", seed=4)
    leaves, idx = data["leaves"], data["indices"]
    x, A, B, U, row_scale = (leaves[name] for name in ("x", "A", "B", "U", "scale"))
    plan = plan_routes(idx["a_idx"], idx["b_idx"], idx["u_idx"])
    base = torch.randn(case.rows, case.d_out)
    out = base.clone()
    z = kernels.routed_forward(x, A, B, U, row_scale, 0.7, plan.tensors(), out)
    delta, z_ref = reference.segment_forward(x, A, B, U, row_scale, 0.7, plan.segments())
    active = idx["a_idx"] >= 0
    torch.testing.assert_close(out, base + delta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z[active], z_ref[active], rtol=1e-5, atol=1e-5)
    grads = kernels.routed_backward(data["grad_out"], x, z, A, B, U, row_scale, 0.7, plan.tensors(), needs)
    ref_grads = reference.segment_backward(data["grad_out"], x, z_ref, A, B, U, row_scale, 0.7, plan.segments(), needs)
    for name, got, expected in zip(("dx", "dA", "dB", "dU", "d_row_scale"), grads, ref_grads):
        if expected is None:
            assert got is None, f"{name} was not asked for"
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_plan_derived_tiles_are_cached_per_plan_and_rederived_after_an_update():
    import gc

    kernels = _triton_kernels()
    a_idx = torch.tensor([2, 0, -1, 2, 1, 0, 2])
    plan = kernels.SegmentPlan(*plan_routes(a_idx).tensors())
    build_count = []

    def build():
        build_count.append(1)
        return kernels._row_tiles(plan, 16, 9)

    first = kernels._derived(plan, ("tiles", 16, 9), build)
    assert kernels._derived(plan, ("tiles", 16, 9), build) is first and len(build_count) == 1
    plan.segment_routes.add_(0)  # an in-place update bumps the version: derived data is rebuilt
    kernels._derived(plan, ("tiles", 16, 9), build)
    assert len(build_count) == 2
    with torch.inference_mode():
        inference_plan = kernels.SegmentPlan(*plan_routes(a_idx).tensors())
        tiles = kernels._derived(inference_plan, ("tiles", 16, 9), lambda: kernels._row_tiles(inference_plan, 16, 9))
    assert torch.equal(tiles[0], first[0]) and torch.equal(tiles[1], first[1])
    before = len(kernels._PLAN_DERIVED)
    plan = inference_plan = tiles = first = build = None
    gc.collect()
    assert len(kernels._PLAN_DERIVED) <= before - 2


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
def test_bank_gradients_split_over_rows_match_and_stay_deterministic(monkeypatch, dtype):
    """Bank gradients with each bank's rows cut into several splits (forced by a small split size)."""
    kernels = _triton_kernels()
    monkeypatch.setattr(kernels, "MIN_ROWS_PER_SPLIT", 16)
    monkeypatch.setattr(kernels, "BLOCK_M_MAX", 16)  # splits are BLOCK_M-aligned: several must hold rows
    case = Case(64, 33, 65, 8, 2, 1, 2, "zipf", "row")
    assert kernels._row_splits(case.rows, 2, torch.device("cpu")) == 4
    _check_case(case, "triton", dtype, "cpu")
    data = _make_inputs(case, dtype, "cpu")
    _, first = _forward_backward(case, data, "triton")
    _, second = _forward_backward(case, data, "triton")
    for name in first:
        assert torch.equal(first[name], second[name]), f"d{name} differs between two runs"
