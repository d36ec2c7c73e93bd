"""The CPU kernels of ``lora_route._C`` and their backend ``lora_route.kernels.cpu_ext`` (the sampled grid of
test_ops_grid.py runs them too): shapes that exercise every remainder of the vector loops and rows of one bank in
groups of more than one pass, bit-identical results whatever the thread count, ``backend="auto"`` on CPU, and the
extension's own checks of its arguments."""
from __future__ import annotations

import pytest
import torch

import lora_route
from lora_route import plan_routes, routed_linear, routed_lora_delta
from lora_route.kernels import cpu_ext, reference, torch_backend
from lora_route.kernels.backend import RowRoutes

needs_cpu_kernels = pytest.mark.skipif(not cpu_ext.available(), reason="lora_route._C with CPU kernels is not built")


def _inputs(rows, d_in, d_out, rank, n_a, n_b, n_u, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "x": torch.randn(rows, d_in, generator=generator),
        "A": torch.randn(n_a, rank, d_in, generator=generator) * d_in ** -0.5,
        "B": torch.randn(n_b, d_out, rank, generator=generator) * rank ** -0.5,
        "U": torch.randn(n_u, rank, rank, generator=generator) * rank ** -0.5 if n_u else None,
        "scale": 0.5 + torch.rand(rows, generator=generator),
    }
    active = torch.rand(rows, generator=generator) < 0.8
    indices = {
        "a_idx": torch.randint(0, n_a, (rows,), generator=generator).where(active, -1),
        "b_idx": torch.randint(0, n_b, (rows,), generator=generator).where(active, -1),
        "u_idx": torch.randint(0, n_u, (rows,), generator=generator).where(active, -1) if n_u else None,
    }
    return tensors, indices


def _reference(tensors, indices):
    """The float64 reference's delta and its gradients for an upstream gradient of ones."""
    as64 = {name: t.double().requires_grad_(True) for name, t in tensors.items() if t is not None}
    out = reference.routed_lora_delta(as64["x"], as64["A"], as64["B"], indices["a_idx"], indices["b_idx"],
                                      U=as64.get("U"), u_idx=indices["u_idx"], scale=as64["scale"])
    out.backward(torch.ones_like(out))
    return out.detach(), {name: t.grad for name, t in as64.items()}


@needs_cpu_kernels
@pytest.mark.parametrize("shape", [
    # rows, d_in, d_out, rank, n_a, n_b, n_u: remainders of the 16-lane, 4-row and 64-column loops, one bank for many
    # rows (groups of 4 and a rest), a column count that leaves a partial chunk
    (50, 1000, 2085, 5, 1, 1, 0),
    (13, 17, 15, 3, 2, 3, 2),
    (64, 640, 300, 16, 3, 2, 1),
    (1, 2048, 640, 64, 4, 4, 0),
])
def test_forward_and_backward_match_float64_reference(shape):
    tensors, indices = _inputs(*shape)
    leaves = {name: t.clone().requires_grad_(True) for name, t in tensors.items() if t is not None}
    out = routed_lora_delta(leaves["x"], leaves["A"], leaves["B"], indices["a_idx"], indices["b_idx"],
                            U=leaves.get("U"), u_idx=indices["u_idx"], scale=leaves["scale"], backend="cpu")
    expected, expected_grads = _reference(tensors, indices)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    inactive = indices["a_idx"] < 0
    assert not out[inactive].any()
    out.backward(torch.ones_like(out))
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad.double(), expected_grads[name], rtol=1e-4, atol=1e-4, msg=name)


@needs_cpu_kernels
def test_results_do_not_depend_on_the_thread_count():
    tensors, indices = _inputs(37, 640, 2048, 16, 3, 3, 1, seed=4)
    weight = torch.randn(2048, 640)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with torch.no_grad():
                outputs.append(routed_linear(tensors["x"], weight, None, tensors["A"], tensors["B"], indices["a_idx"],
                                             indices["b_idx"], U=tensors["U"], u_idx=indices["u_idx"],
                                             scale=tensors["scale"], backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1])


@needs_cpu_kernels
def test_auto_takes_the_cpu_kernels_for_float32_and_torch_otherwise():
    x = torch.zeros(4, 8)
    assert lora_route.resolve_backend("auto", x, 2) == "cpu"
    assert lora_route.resolve_backend("auto", x.double(), 2) == "torch"
    with pytest.raises(ValueError, match="backend='cpu' cannot serve this call: the cpu backend supports float32; "
                                         "got torch.float64"):
        lora_route.resolve_backend("cpu", x.double(), 2)


@needs_cpu_kernels
def test_row_orders_are_built_once_per_plan_and_group_rows_by_bank():
    a_idx, b_idx = torch.tensor([2, 0, -1, 2, 1], dtype=torch.int32), torch.tensor([0, 1, -1, 1, 0])
    plan = plan_routes(a_idx, b_idx)
    routes = RowRoutes(a_idx, None, b_idx, shared_plan=plan)
    first = cpu_ext.kernel_routes(routes)
    assert cpu_ext.kernel_routes(RowRoutes(a_idx, None, b_idx, shared_plan=plan)) is first
    a64, b64, u64, order_a, order_b = first
    assert a64.dtype == torch.int64 and u64 is None
    assert order_a.tolist() == [1, 4, 0, 3] and order_b.tolist() == [0, 4, 1, 3]


def _extension_call(**changes):
    tensors, indices = _inputs(6, 8, 5, 2, 3, 3, 0, seed=1)
    indices = {name: index for name, index in indices.items() if index is not None}
    routes = RowRoutes(indices["a_idx"], None, indices["b_idx"])
    _, _, _, order_a, order_b = cpu_ext.kernel_routes(routes)
    arguments = {"x": tensors["x"], "A": tensors["A"],
                 "B_t": torch_backend.expand_layout(tensors["B"]).view(3, 2, 5), "U": None, "row_scale": None,
                 "scale": 1.0, "a_idx": indices["a_idx"], "b_idx": indices["b_idx"], "u_idx": None,
                 "order_a": order_a, "order_b": order_b, "out": torch.zeros(6, 5)}
    arguments.update(changes)
    from lora_route import _C

    return _C.routed_forward_cpu(**arguments)


@needs_cpu_kernels
@pytest.mark.parametrize(("changes", "message"), [
    ({"x": torch.zeros(6, 8, dtype=torch.float64)}, "x must be float32, got Double"),
    ({"A": torch.zeros(3, 2, 7)}, r"A must be a non-empty \(n_a, r, d_in\) with d_in = 8"),
    ({"out": torch.zeros(6, 4)}, r"out must be \(T, d_out\)"),
    ({"U": torch.zeros(1, 2, 2)}, "U and u_idx must be given together"),
    ({"a_idx": torch.tensor([0, 1, 3, 0, 1, 2])}, r"a_idx\[2\] = 3 is outside its bank of 3 entries"),
    ({"b_idx": torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)}, "b_idx must be a contiguous"),
    ({"order_a": torch.tensor([0])}, "order_a must be a contiguous"),
])
def test_extension_names_the_wrong_argument(changes, message):
    with pytest.raises(RuntimeError, match=message):
        _extension_call(**changes)


@needs_cpu_kernels
def test_extension_refuses_an_order_that_is_not_sorted_or_repeats_a_row():
    routes = {"a_idx": torch.tensor([0, 1, 2, 0, 1, 2]), "b_idx": torch.tensor([2, 1, 0, 2, 1, 0]),
              "order_b": torch.tensor([2, 5, 1, 4, 0, 3])}
    assert _extension_call(**routes, order_a=torch.tensor([0, 3, 1, 4, 2, 5])).shape == (6, 2)
    with pytest.raises(RuntimeError, match="order_a is not sorted by its index at 3"):
        _extension_call(**routes, order_a=torch.tensor([0, 3, 2, 4, 1, 5]))
    with pytest.raises(RuntimeError, match=r"order_a\[1\] = 0 is not an active row, or repeats a row listed before it"):
        _extension_call(**routes, order_a=torch.tensor([0, 0, 1, 4, 2, 5]))


def test_unsupported_reason_names_the_missing_piece():
    reason = cpu_ext.unsupported_reason(torch.zeros(2, 3))
    if cpu_ext.available():
        assert reason is None
        assert cpu_ext.unsupported_reason(torch.zeros(2, 3, dtype=torch.bfloat16)) == (
            "the cpu backend supports float32; got torch.bfloat16")
    else:
        assert "lora_route._C" in reason
        assert lora_route.resolve_backend("auto", torch.zeros(2, 3), 2) == "torch"
