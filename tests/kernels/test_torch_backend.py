"""The torch backend's two formulations: the dense (one-hot) forward and backward against the segment reference,
the rule that picks one, and a decode call that runs without a host synchronisation or a per-segment loop."""
from __future__ import annotations

import pytest
import torch

from lora_route import plan_routes
from lora_route.kernels import reference, torch_backend
from lora_route.kernels.backend import DERIVED_MAX_ENTRIES, RowRoutes

# |got - ref| <= TOLERANCE · (sum of |terms|), elementwise
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

CASES = [
    # rows, d_in, d_out, rank, n_a, n_b, n_u, row_scale, inactive share
    (1, 5, 7, 3, 2, 2, 0, False, 0.0),
    (23, 17, 9, 4, 3, 5, 2, True, 0.3),
    (64, 33, 65, 8, 6, 6, 0, True, 0.5),
    (30, 16, 16, 2, 1, 1, 1, False, 0.2),
    (12, 8, 8, 4, 3, 3, 2, True, 1.0),
    (6, 40, 24, 16, 2, 3, 1, True, 0.2),    # fewer rows than the rank: the per-bank products of the forward
]


def _case(case, dtype):
    rows, d_in, d_out, rank, n_a, n_b, n_u, use_row_scale, inactive = case
    generator = torch.Generator().manual_seed(rows)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * std).to(dtype)

    active = torch.rand(rows, generator=generator) >= inactive
    a_idx = torch.randint(0, n_a, (rows,), generator=generator).where(active, -1)
    b_idx = torch.randint(0, n_b, (rows,), generator=generator).where(active, -1)
    u_idx = torch.randint(0, n_u, (rows,), generator=generator).where(active, -1) if n_u else None
    tensors = {"x": randn(rows, d_in), "A": randn(n_a, rank, d_in, std=d_in ** -0.5),
               "B": randn(n_b, d_out, rank, std=rank ** -0.5), "U": randn(n_u, rank, rank) if n_u else None,
               "row_scale": (0.5 + torch.rand(rows, generator=generator, dtype=torch.float64)).to(dtype)
               if use_row_scale else None, "grad_out": randn(rows, d_out)}
    return tensors, RowRoutes(a_idx, u_idx, b_idx), plan_routes(a_idx, b_idx, u_idx)


def _assert_close(name, got, ref, magnitude, dtype):
    error = (got.double() - ref.double()).abs()
    bad = ~(error <= TOLERANCE[dtype] * magnitude.double())
    assert not bad.any(), f"{name}: {int(bad.sum())} of {bad.numel()} entries off"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-r{c[3]}-a{c[4]}b{c[5]}u{c[6]}-{c[8]}")
def test_dense_forward_and_backward_match_the_segment_reference(case, dtype):
    t, routes, plan = _case(case, dtype)
    args = (t["A"], t["B"], t["U"], t["row_scale"], 0.7)
    delta, z = torch_backend.dense_delta(t["x"], *args, routes)
    ref_delta, ref_z = reference.segment_forward(t["x"], *args, plan.segments())
    magnitudes = tuple(v.abs() if isinstance(v, torch.Tensor) else v for v in args)
    mag_delta, mag_z = reference.segment_forward(t["x"].abs(), *magnitudes, plan.segments())
    _assert_close("delta", delta, ref_delta, mag_delta, dtype)
    _assert_close("z", z, ref_z, mag_z, dtype)
    assert torch.equal(delta[routes.a_idx < 0], torch.zeros_like(delta[routes.a_idx < 0]))
    needs = [True] * 5
    got = torch_backend.dense_backward(t["grad_out"], t["x"], z, *args, routes, needs)
    ref = reference.segment_backward(t["grad_out"], t["x"], ref_z, *args, plan.segments(), needs)
    magnitude = reference.segment_backward(t["grad_out"].abs(), t["x"].abs(), mag_z, *magnitudes, plan.segments(),
                                           needs)
    for name, g, r, m in zip(("dx", "dA", "dB", "dU", "d_row_scale"), got, ref, magnitude):
        assert (g is None) == (r is None), name
        if r is not None:
            assert g.shape == r.shape and g.dtype == dtype, name
            _assert_close(name, g, r, m, dtype)


def test_dense_backward_computes_only_what_is_needed():
    t, routes, _ = _case((10, 6, 5, 2, 2, 2, 2, True, 0.3), torch.float64)
    z = torch.zeros(10, 2, dtype=torch.float64)
    grads = torch_backend.dense_backward(t["grad_out"], t["x"], z, t["A"], t["B"], t["U"], t["row_scale"], 1.0,
                                         routes, [False, True, False, False, True])
    assert [g is not None for g in grads] == [False, True, False, False, True]
    no_core = torch_backend.dense_backward(t["grad_out"], t["x"], z, t["A"], t["B"], None, None, 1.0,
                                           RowRoutes(routes.a_idx, None, routes.b_idx), [True] * 5)
    assert no_core[3] is None and no_core[4] is None


def test_the_dense_formulation_is_used_while_the_banks_are_small():
    def banks(n, rank, d_in, d_out):
        return torch.zeros(n, rank, d_in), torch.zeros(n, d_out, rank)

    assert torch_backend.uses_dense(*banks(3, 16, 640, 2048))            # the demo's three languages
    assert not torch_backend.uses_dense(*banks(30, 16, 640, 2048))       # 30 experts: 480 > half of d_in
    assert not torch_backend.uses_dense(*banks(3, 128, 96, 96))


def test_a_formulation_can_be_forced_for_a_block():
    A, B = torch.zeros(30, 16, 640), torch.zeros(30, 2048, 16)
    assert not torch_backend.uses_dense(A, B)
    with torch_backend.forced_formulation("dense"):
        assert torch_backend.uses_dense(A, B)
        with torch_backend.forced_formulation("segments"):
            assert not torch_backend.uses_dense(A[:1], B[:1])
        assert torch_backend.uses_dense(A, B)
    assert not torch_backend.uses_dense(A, B) and torch_backend.uses_dense(A[:3], B[:3])
    with pytest.raises(ValueError, match="unknown formulation 'sparse'"):
        with torch_backend.forced_formulation("sparse"):
            pass


def test_a_dense_decode_call_never_synchronises_or_loops_over_segments(monkeypatch):
    """The segment formulation reads the plan's segments on the host (a sync and a Python loop per layer); decode
    calls with few banks must not."""
    t, routes, plan = _case((12, 64, 128, 8, 3, 3, 1, True, 0.2), torch.float32)
    monkeypatch.setattr(type(plan), "segments", lambda self: pytest.fail("read the segments on the host"))
    monkeypatch.setattr(RowRoutes, "plan", lambda self: pytest.fail("built a plan"))
    out, z = torch_backend.forward(t["x"], None, None, t["A"], t["B"], t["U"], t["row_scale"], 0.5, routes)
    assert out.shape == (12, 128) and z.shape == (12, 8)


def test_the_dense_selectors_are_built_once_per_shared_plan():
    """Decoding passes one plan to every layer of a step: the first dense call builds the gather index and the per-row
    weights, the others reuse them (keyed by what else they depend on), with the result of a call without a plan."""
    t, routes, plan = _case((12, 64, 128, 8, 3, 3, 1, False, 0.2), torch.float32)
    args = (t["x"], None, None, t["A"], t["B"], t["U"], None)

    def shared():
        return RowRoutes(routes.a_idx, routes.u_idx, routes.b_idx, shared_plan=plan)

    expected, _ = torch_backend.forward(*args, 0.5, routes)
    first, _ = torch_backend.forward(*args, 0.5, shared())
    built = dict(plan.derived)
    second, _ = torch_backend.forward(*args, 0.5, shared())
    assert len(built) == 1 and all(plan.derived[key] is value for key, value in built.items())
    assert torch.equal(first, expected) and torch.equal(second, expected)
    torch_backend.forward(*args, 0.25, shared())
    assert len(plan.derived) == 2
    with_row_scale = t["x"].new_ones(12)
    torch_backend.forward(*args[:-1], with_row_scale, 0.5, shared())
    assert len(plan.derived) == 2


def test_a_shared_plan_keeps_a_bounded_number_of_derived_values():
    """A scale that never compares equal to itself (NaN) makes a new key at every call: the plan must not grow."""
    t, routes, plan = _case((4, 64, 128, 8, 3, 3, 0, False, 0.0), torch.float32)
    for _ in range(3 * DERIVED_MAX_ENTRIES):
        torch_backend.forward(t["x"], None, None, t["A"], t["B"], None, None, float("nan"),
                              RowRoutes(routes.a_idx, None, routes.b_idx, shared_plan=plan))
    assert 0 < len(plan.derived) <= DERIVED_MAX_ENTRIES
