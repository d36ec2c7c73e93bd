"""The fused layer kernels (``triton_kernels/fused_linear.py``) against a float64 per-row reference.

Every case checks the layer output (base GEMM + adapter delta), z and every gradient (dx including dy·W0, dA, dB,
dU, d_row_scale) elementwise: |got - ref| <= TOLERANCE[dtype] · (the same quantity evaluated on the absolute values
of every input), the tolerances of the Triton backend in test_ops_grid.py. Entries without terms (z and d_row_scale
on rows without adapter, unused bank entries) must therefore be exactly zero. On CPU the kernels run in Triton's
interpreter (``TRITON_INTERPRET=1``, set by conftest.py); shapes are small and odd so that every tile has tails.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from lora_route import plan_routes
from lora_route.triton_kernels import fused_linear, routed_lora

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = [pytest.param(dtype, id=str(dtype).removeprefix("torch.")) for dtype in TOLERANCE]
GRADIENTS = ("dx", "dA", "dB", "dU", "d_row_scale")
PATTERNS = ("one", "distinct", "runs", "none", "mixed")


@dataclass(frozen=True)
class Case:
    rows: int
    d_in: int
    d_out: int
    rank: int
    banks: int  # n_a = n_b = banks, n_u = max(1, banks // 2)
    pattern: str  # one of PATTERNS
    core: bool  # with the core U
    bias: bool
    row_scale: bool  # a (T,) row_scale next to the float scale (else the float scale alone)
    small_tiles: bool = False  # 16-row tiles instead of the config table's: runs straddle several row tiles

    @property
    def id(self) -> str:
        return (f"T{self.rows}-{self.d_in}x{self.d_out}-r{self.rank}-n{self.banks}-{self.pattern}-"
                f"{'U' if self.core else 'noU'}-{'bias' if self.bias else 'nobias'}-"
                f"{'rowscale' if self.row_scale else 'float'}{'-tiles16' if self.small_tiles else ''}")


CASES = [
    Case(1, 33, 65, 8, 3, "one", True, True, True),  # one decode row
    Case(7, 65, 33, 1, 4, "distinct", False, False, False),
    Case(33, 129, 65, 16, 4, "runs", True, True, True),
    Case(70, 33, 129, 8, 5, "mixed", True, False, True),
    Case(70, 65, 65, 16, 3, "none", False, True, False),
    Case(33, 33, 33, 16, 32, "distinct", True, True, False),
    Case(70, 129, 33, 64, 4, "runs", True, True, True),  # rank 64
    Case(33, 33, 65, 128, 3, "mixed", True, True, True),  # rank 128 (MAX_RANK)
    Case(70, 65, 129, 8, 1, "one", False, True, True, small_tiles=True),
    Case(33, 65, 33, 16, 5, "runs", True, False, False, small_tiles=True),
    Case(200, 33, 65, 16, 6, "runs", True, True, True),  # 2 row tiles of 128 (fp16/bf16), 4 of 64 (fp32)
    Case(70, 33, 65, 1, 4, "mixed", False, True, False, small_tiles=True),
    Case(1, 65, 33, 16, 2, "none", True, True, True),  # one decode row without adapter
    Case(7, 129, 129, 8, 3, "mixed", False, False, True),
    Case(64, 65, 129, 16, 8, "distinct", False, True, True),  # 64 decode rows, a run per row in one row tile
    Case(130, 65, 33, 8, 3, "mixed", True, True, False),  # two 128-row tiles, the second holding 2 rows
    Case(33, 33, 65, 1, 2, "runs", False, False, True, small_tiles=True),
    Case(16, 129, 65, 16, 1, "one", True, False, False),
]
SMALL_TILES = {key: fused_linear.TileConfig(16, 32, 16, 4, 2, 2) for key in fused_linear.FUSED_CONFIGS}


def _runs_of(rows: int, banks: int, generator: torch.Generator, inactive_share: float) -> torch.Tensor:
    """(rows,) indices in runs of 3..24 equal entries (a run is -1 with probability ``inactive_share``)."""
    values = []
    while len(values) < rows:
        length = int(torch.randint(3, 25, (1,), generator=generator))
        inactive = float(torch.rand(1, generator=generator)) < inactive_share
        values += [-1 if inactive else int(torch.randint(0, banks, (1,), generator=generator))] * length
    return torch.tensor(values[:rows])


def _indices(case: Case, generator: torch.Generator):
    """``(a_idx, b_idx, u_idx)`` of a pattern; a and b change at different rows (their runs differ)."""
    n_u = max(1, case.banks // 2)
    rows = torch.arange(case.rows)
    if case.pattern == "one":
        a, b, u = (torch.full((case.rows,), value) for value in (case.banks - 1, 0, n_u - 1))
    elif case.pattern == "distinct":
        a, b, u = rows % case.banks, (3 * rows + 1) % case.banks, (5 * rows + 2) % n_u
    elif case.pattern == "none":
        a = b = u = torch.full((case.rows,), -1)
    else:
        share = 0.3 if case.pattern == "mixed" else 0.0
        a = _runs_of(case.rows, case.banks, generator, share)
        b = torch.where(a >= 0, _runs_of(case.rows, case.banks, generator, 0.0), -1)
        u = torch.where(a >= 0, _runs_of(case.rows, n_u, generator, 0.0), -1)
        if case.pattern == "mixed" and case.rows > 2:  # isolated rows without adapter inside runs too
            lone = torch.rand(case.rows, generator=generator) < 0.1
            a, b, u = (t.masked_fill(lone, -1) for t in (a, b, u))
            a[0], b[0], u[0] = 0, 0, 0
    return a, b, (u if case.core else None)


def _inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * std).to(dtype).to(DEVICE)

    a_idx, b_idx, u_idx = _indices(case, generator)
    leaves = {
        "x": randn(case.rows, case.d_in),
        "A": randn(case.banks, case.rank, case.d_in, std=case.d_in ** -0.5),
        "B": randn(case.banks, case.d_out, case.rank, std=case.rank ** -0.5),
        "U": randn(max(1, case.banks // 2), case.rank, case.rank, std=case.rank ** -0.5) if case.core else None,
        "row_scale": ((0.5 + torch.rand(case.rows, generator=generator, dtype=torch.float64)).to(dtype).to(DEVICE)
                      if case.row_scale else None),
    }
    return {
        "leaves": leaves,
        "weight": randn(case.d_out, case.d_in, std=case.d_in ** -0.5),
        "bias": randn(case.d_out) if case.bias else None,
        "scale": 0.75,
        "indices": tuple(index.to(DEVICE) if index is not None else None for index in (a_idx, b_idx, u_idx)),
        "grad_out": randn(case.rows, case.d_out),
    }


def _reference(data: dict, magnitude: bool = False):
    """``(out, z, grads)`` in float64, row by row (gathered banks); with ``magnitude`` on the absolute values of
    every input and of grad_out, which gives each entry the sum of the absolute values of its terms."""
    def prepare(t):
        if t is None:
            return None
        t = t.double().cpu()
        return (t.abs() if magnitude else t).requires_grad_(True)

    leaves = {name: prepare(t) for name, t in data["leaves"].items()}
    weight, bias = prepare(data["weight"]), prepare(data["bias"])
    a_idx, b_idx, u_idx = (index.cpu() if index is not None else None for index in data["indices"])
    x, A, B, U, row_scale = (leaves[name] for name in ("x", "A", "B", "U", "row_scale"))
    rows = (a_idx >= 0).nonzero().squeeze(1)
    z_rows = torch.einsum("trd,td->tr", A[a_idx[rows]], x[rows])
    core = torch.einsum("tqr,tr->tq", U[u_idx[rows]], z_rows) if U is not None else z_rows
    delta_rows = torch.einsum("tor,tr->to", B[b_idx[rows]], core) * data["scale"]
    if row_scale is not None:
        delta_rows = delta_rows * row_scale[rows, None]
    out = F.linear(x, weight, bias).index_add(0, rows, delta_rows)
    z = x.new_zeros(x.shape[0], A.shape[1]).index_add(0, rows, z_rows)
    grad_out = data["grad_out"].double().cpu()
    out.backward(grad_out.abs() if magnitude else grad_out)
    grads = dict(zip(GRADIENTS, (x.grad, A.grad, B.grad, U.grad if U is not None else None,
                                 row_scale.grad if row_scale is not None else None)))
    return out.detach(), z.detach(), grads


def _run_fused(data: dict, needs=(True,) * 5):
    leaves = data["leaves"]
    x, A, B, U, row_scale = (leaves[name] for name in ("x", "A", "B", "U", "row_scale"))
    a_idx, b_idx, u_idx = data["indices"]
    plan = routed_lora.SegmentPlan(*plan_routes(a_idx, b_idx, u_idx).tensors())
    out, z = fused_linear.fused_linear_forward(x, data["weight"], data["bias"], A, B, U, row_scale, data["scale"],
                                               plan, b_idx)
    grads = fused_linear.fused_linear_backward(data["grad_out"], x, z, data["weight"], A, B, U, row_scale,
                                               data["scale"], plan, a_idx, needs)
    return out, z, dict(zip(GRADIENTS, grads))


def _assert_matches(name, got, ref, magnitude, dtype) -> None:
    assert got is not None, f"{name}: missing"
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    error = (got.double().cpu() - ref).abs()
    bound = TOLERANCE[dtype] * magnitude
    bad = ~(error <= bound)
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} entries off, first at {first}: got "
                             f"{got[first].item():.6g}, expected {ref[first].item():.6g} (bound {bound[first]:.3e})")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fused_layer_matches_float64_reference(case, dtype, monkeypatch):
    if case.small_tiles:
        monkeypatch.setattr(fused_linear, "FUSED_CONFIGS", SMALL_TILES)
    data = _inputs(case, dtype)
    out, z, grads = _run_fused(data)
    ref_out, ref_z, ref_grads = _reference(data)
    mag_out, mag_z, mag_grads = _reference(data, magnitude=True)
    _assert_matches("out", out, ref_out, mag_out, dtype)
    _assert_matches("z", z, ref_z, mag_z, dtype)
    for name in GRADIENTS:
        if ref_grads[name] is None:
            assert grads[name] is None, f"{name}: returned without the operand"
        else:
            _assert_matches(name, grads[name], ref_grads[name], mag_grads[name], dtype)
    # Rows without adapter: the base layer alone, within the GEMM's tolerance.
    inactive = (data["indices"][0] < 0).cpu()
    if inactive.any():
        x, weight = data["leaves"]["x"].double().cpu(), data["weight"].double().cpu()
        bias = data["bias"].double().cpu() if data["bias"] is not None else None
        base_bound = TOLERANCE[dtype] * F.linear(x.abs(), weight.abs(), bias.abs() if bias is not None else None)
        assert ((out.double().cpu() - F.linear(x, weight, bias)).abs() <= base_bound)[inactive].all()
        dx_base = data["grad_out"].double().cpu() @ weight
        dx_bound = TOLERANCE[dtype] * (data["grad_out"].double().cpu().abs() @ weight.abs())
        assert ((grads["dx"].double().cpu() - dx_base).abs() <= dx_bound)[inactive].all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_batch_without_adapters_is_f_linear(dtype):
    case = Case(40, 65, 33, 16, 3, "none", True, True, True)
    data = _inputs(case, dtype, seed=5)
    out, z, grads = _run_fused(data)
    x, weight, bias = data["leaves"]["x"], data["weight"], data["bias"]
    expected = F.linear(x.double(), weight.double(), bias.double())
    bound = TOLERANCE[dtype] * F.linear(x.double().abs(), weight.double().abs(), bias.double().abs())
    assert ((out.double() - expected).abs() <= bound).all()
    assert not z.any() and not grads["d_row_scale"].any()
    assert not any(grads[name].any() for name in ("dA", "dB", "dU"))


@pytest.mark.parametrize("needs", [(True, False, False, False, False), (False, True, True, False, False),
                                   (False, False, False, True, True), (True, True, False, False, True)],
                         ids=lambda needs: "".join("1" if n else "0" for n in needs))
def test_backward_returns_what_is_asked_for(needs):
    case = Case(33, 33, 65, 8, 4, "mixed", True, True, True)
    data = _inputs(case, torch.float32, seed=2)
    _, _, grads = _run_fused(data, needs)
    ref_grads = _reference(data)[2]
    mag_grads = _reference(data, magnitude=True)[2]
    for name, need in zip(GRADIENTS, needs):
        if need:
            _assert_matches(name, grads[name], ref_grads[name], mag_grads[name], torch.float32)
        else:
            assert grads[name] is None, f"{name} was not asked for"


def test_backward_is_deterministic():
    case = Case(70, 33, 65, 16, 2, "runs", True, True, True)
    data = _inputs(case, torch.bfloat16, seed=3)
    first, second = _run_fused(data), _run_fused(data)
    assert torch.equal(first[0], second[0])
    for name in GRADIENTS:
        assert torch.equal(first[2][name], second[2][name]), f"{name} differs between two runs"


def test_launch_count_does_not_grow_with_the_number_of_adapters(monkeypatch):
    launches = []

    class CountingKernel:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches.append(self.name)
            return self.kernel[grid]

    for module, name in ((routed_lora, "_shrink_kernel"), (routed_lora, "_grad_shrink_kernel"),
                         (routed_lora, "_bank_grad_kernel"), (fused_linear, "_fused_linear_kernel")):
        monkeypatch.setattr(module, name, CountingKernel(name, getattr(module, name)))
    counts = []
    for banks in (1, 16):
        launches.clear()
        _run_fused(_inputs(Case(16, 33, 33, 8, banks, "distinct", True, True, True), torch.float32))
        counts.append(sorted(launches))
    assert counts[0] == counts[1] == sorted(["_shrink_kernel", "_fused_linear_kernel", "_grad_shrink_kernel",
                                             "_fused_linear_kernel"] + ["_bank_grad_kernel"] * 3)


@pytest.mark.parametrize("block_m", [16, 64])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_runs_cover_every_row_in_order(pattern, block_m):
    case = Case(100, 1, 1, 1, 5, pattern, True, False, False)
    index = _indices(case, torch.Generator().manual_seed(7))[1]
    row_bank, run_starts, run_bank, tile_first_run, tile_last_run = fused_linear._natural_runs(index, block_m)
    assert torch.equal(row_bank, index)
    count = int((run_starts < case.rows).sum())
    assert run_starts[0] == 0 and (run_starts[count:] == case.rows).all() and (run_bank[count:] == -1).all()
    for run in range(count):
        span = index[run_starts[run]:run_starts[run + 1]]
        assert (span == run_bank[run]).all() and len(span) > 0
        if run + 1 < count:
            assert index[run_starts[run + 1]] != run_bank[run], "two adjacent runs share an index"
    assert len(tile_first_run) == len(tile_last_run) == -(-case.rows // block_m)
    for tile, (first, last) in enumerate(zip(tile_first_run.tolist(), tile_last_run.tolist())):
        tile_end = min(case.rows, (tile + 1) * block_m)
        assert run_starts[first] <= tile * block_m < run_starts[first + 1]
        assert run_starts[last] < tile_end <= run_starts[last + 1]


@pytest.mark.parametrize(("rows", "d_in", "d_out", "rank"), [(0, 17, 9, 4), (5, 17, 9, 0), (5, 17, 0, 4), (5, 0, 9, 4)],
                         ids=["no-rows", "rank0", "no-outputs", "no-inputs"])
def test_degenerate_shapes(rows, d_in, d_out, rank):
    """Empty dimensions: the base layer alone where the adapter has nothing to add; z is zero on idle rows."""
    generator = torch.Generator().manual_seed(rows + d_in + d_out + rank)
    x = torch.randn(rows, d_in, generator=generator).to(DEVICE)
    weight, bias = torch.randn(d_out, d_in, generator=generator).to(DEVICE), torch.randn(d_out).to(DEVICE)
    A = torch.randn(2, rank, d_in, generator=generator).to(DEVICE)
    B = torch.randn(2, d_out, rank, generator=generator).to(DEVICE)
    index = (torch.arange(rows) % 3 - 1).to(DEVICE)
    plan = plan_routes(index).tensors()
    out, z = fused_linear.fused_linear_forward(x, weight, bias, A, B, None, None, 0.5, plan, index)
    delta = torch.zeros(rows, d_out, device=DEVICE)
    for t in range(rows):
        if index[t] >= 0:
            delta[t] = 0.5 * B[index[t]] @ (A[index[t]] @ x[t])
    torch.testing.assert_close(out, F.linear(x, weight, bias) + delta)
    assert z.shape == (rows, rank) and not z[index < 0].any()
    grad_out = torch.randn(rows, d_out, generator=generator).to(DEVICE)
    dx, dA, dB, dU, d_row_scale = fused_linear.fused_linear_backward(grad_out, x, z, weight, A, B, None, None, 0.5,
                                                                     plan, index, (True,) * 5)
    assert dx.shape == x.shape and dA.shape == A.shape and dB.shape == B.shape and dU is None and d_row_scale is None
    if rank == 0 or d_out == 0:
        torch.testing.assert_close(dx, grad_out @ weight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_read_through_strides(dtype):
    """A transposed weight view (stride 1 along d_out) and int32 indices give the same layer."""
    case = Case(33, 65, 33, 8, 3, "mixed", True, True, True)
    data = _inputs(case, dtype, seed=6)
    out, z, grads = _run_fused(data)
    data["weight"] = data["weight"].t().contiguous().t()
    data["indices"] = tuple(index.int() if index is not None else None for index in data["indices"])
    strided_out, strided_z, strided_grads = _run_fused(data)
    torch.testing.assert_close(strided_out, out)
    torch.testing.assert_close(strided_z, z)
    for name in GRADIENTS:
        torch.testing.assert_close(strided_grads[name], grads[name], msg=lambda m: f"{name}: {m}")


def test_config_table_fits_sm80_shared_memory():
    """The reduction pipeline (stages · (BM + BN) · BK operands) of every entry fits sm_80's 99 KiB per block."""
    assert set(fused_linear.FUSED_CONFIGS) == {(rows, operands) for rows in ("decode", "large")
                                              for operands in ("half", "fp32")}
    for (_, operands), config in fused_linear.FUSED_CONFIGS.items():
        width = 4 if operands == "fp32" else 2
        assert config.num_stages * (config.block_m + config.block_n) * config.block_k * width <= 96 * 1024
    cpu = torch.device("cpu")
    for num_rows in (1, 7, 33, 64):
        config = fused_linear.fused_config(num_rows, torch.bfloat16, 14336, cpu)
        assert config.block_m == max(16, 1 << (num_rows - 1).bit_length()) and config.block_n == 64
    assert fused_linear.fused_config(64, torch.bfloat16, 4096, cpu).block_n == 32  # 64 programs < 132 SMs
    assert fused_linear.fused_config(65, torch.bfloat16, 4096, cpu) == fused_linear.FUSED_CONFIGS[("large", "half")]


def test_unsupported_reason_and_validation_name_the_problem(monkeypatch):
    x = torch.zeros(4, 8, device=DEVICE)
    weight = torch.zeros(6, 8, device=DEVICE)
    reason = fused_linear.fused_unsupported_reason
    assert "fp32/fp16/bf16" in reason(x.double(), weight.double())
    assert "weight in x's dtype" in reason(x, weight.half())
    assert "ranks up to" in reason(x, weight, fused_linear.MAX_RANK + 1)
    assert reason(x, weight, 16) is None
    plan = plan_routes(torch.zeros(4, dtype=torch.long, device=DEVICE)).tensors()
    A, B = torch.zeros(1, 2, 8, device=DEVICE), torch.zeros(1, 6, 2, device=DEVICE)
    index = torch.zeros(4, dtype=torch.long, device=DEVICE)
    forward = fused_linear.fused_linear_forward
    with pytest.raises(ValueError, match=r"weight must be \(d_out, d_in\) = \(6, 8\)"):
        forward(x, weight[:5], None, A, B, None, None, 1.0, plan, index)
    with pytest.raises(ValueError, match="bias must be a"):
        forward(x, weight, torch.zeros(5, device=DEVICE), A, B, None, None, 1.0, plan, index)
    with pytest.raises(ValueError, match="b_idx must be a"):
        forward(x, weight, None, A, B, None, None, 1.0, plan, index[:3])
    with pytest.raises(ValueError, match="x must be contiguous"):
        forward(torch.zeros(8, 4, device=DEVICE).t(), weight, None, A, B, None, None, 1.0, plan, index)
    with pytest.raises(ValueError, match="B must have x's dtype"):
        forward(x, weight, None, A, B.half(), None, None, 1.0, plan, index)
    with pytest.raises(ValueError, match=r"grad_out must be a contiguous \(4, ...\) tensor"):
        fused_linear.fused_linear_backward(torch.zeros(3, 6, device=DEVICE), x, torch.zeros(4, 2, device=DEVICE),
                                           weight, A, B, None, None, 1.0, plan, index, (True,) * 5)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert "CUDA tensor" in reason(x, weight)
