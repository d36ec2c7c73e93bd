"""Every input error of the public operation raises a clear exception naming the problem."""
import pytest
import torch

import lora_route
from lora_route import routed_linear, routed_lora_delta
from lora_route.kernels import reference, torch_backend

T, D_IN, D_OUT, R, N = 6, 8, 5, 2, 3


def _args(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(T, D_IN, generator=generator, dtype=dtype)
    A = torch.randn(N, R, D_IN, generator=generator, dtype=dtype)
    B = torch.randn(N, D_OUT, R, generator=generator, dtype=dtype)
    a_idx = torch.tensor([0, 1, 2, -1, 0, 1])
    b_idx = torch.tensor([2, 1, 0, -1, 0, 1])
    return x, A, B, a_idx, b_idx


def test_a_with_wrong_d_in_names_shapes():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match=r"A is \(3, 2, 7\) but x has d_in=8"):
        routed_lora_delta(x, A[..., :7], B, a_idx, b_idx)


def test_b_with_wrong_rank():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match="B must be"):
        routed_lora_delta(x, A, B[..., :1], a_idx, b_idx)


def test_bank_of_wrong_rank_count():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match=r"A must be \(n_a, r, d_in\)"):
        routed_lora_delta(x, A[0], B, a_idx, b_idx)


def test_core_shape_and_pairing():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match=r"U must be \(n_u, 2, 2\)"):
        routed_lora_delta(x, A, B, a_idx, b_idx, U=torch.zeros(1, 3, 3), u_idx=torch.zeros(T, dtype=torch.long))
    with pytest.raises(ValueError, match="U is given but u_idx is None"):
        routed_lora_delta(x, A, B, a_idx, b_idx, U=torch.zeros(1, R, R))
    with pytest.raises(ValueError, match="u_idx is given but U is None"):
        routed_lora_delta(x, A, B, a_idx, b_idx, u_idx=torch.zeros(T, dtype=torch.long))


def test_index_of_wrong_length():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match="a_idx has 5 entries but the input has 6 rows"):
        routed_lora_delta(x, A, B, a_idx[:5], b_idx)


def test_index_of_wrong_dtype():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match="b_idx must have dtype int32 or int64, got torch.float32"):
        routed_lora_delta(x, A, B, a_idx, b_idx.float())


def test_index_not_1d():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match="a_idx must be 1-D"):
        routed_lora_delta(x, A, B, a_idx.view(2, 3), b_idx)


@pytest.mark.parametrize("bank,index_name", [("A", "a_idx"), ("B", "b_idx")])
def test_index_beyond_bank(bank, index_name):
    x, A, B, a_idx, b_idx = _args()
    index = (a_idx if index_name == "a_idx" else b_idx).clone()
    index[1] = N
    kwargs = {"a_idx": index, "b_idx": b_idx} if index_name == "a_idx" else {"a_idx": a_idx, "b_idx": index}
    with pytest.raises(ValueError, match=f"{index_name} holds {N} but the {bank} bank has {N} adapters"):
        routed_lora_delta(x, A, B, **kwargs)


def test_core_index_beyond_bank():
    x, A, B, a_idx, b_idx = _args()
    u_idx = torch.where(a_idx >= 0, 1, -1)
    with pytest.raises(ValueError, match="u_idx holds 1 but the U bank has 1 cores"):
        routed_lora_delta(x, A, B, a_idx, b_idx, U=torch.zeros(1, R, R), u_idx=u_idx)


def test_index_beyond_bank_through_a_plan():
    x, A, B, a_idx, b_idx = _args()
    b_idx = torch.where(a_idx >= 0, b_idx + 1, -1)
    plan = lora_route.plan_routes(a_idx, b_idx)
    with pytest.raises(ValueError, match="b_idx holds 3 but the B bank has 3 adapters"):
        routed_lora_delta(x, A, B, a_idx, b_idx, plan=plan)


def test_index_below_minus_one():
    x, A, B, a_idx, b_idx = _args()
    a_idx = a_idx.clone()
    a_idx[0] = -2
    with pytest.raises(ValueError, match="a_idx holds -2"):
        routed_lora_delta(x, A, B, a_idx, b_idx)


def test_inconsistent_minus_one():
    x, A, B, a_idx, b_idx = _args()
    b_idx = b_idx.clone()
    b_idx[3] = 1
    with pytest.raises(ValueError, match="row 3: a_idx is -1 but b_idx is 1"):
        routed_lora_delta(x, A, B, a_idx, b_idx)


def test_tensors_on_different_devices():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match="B is on meta but x is on cpu"):
        routed_lora_delta(x, A, B.to("meta"), a_idx, b_idx)
    with pytest.raises(ValueError, match="a_idx is on meta but x is on cpu"):
        routed_lora_delta(x, A, B, a_idx.to("meta"), b_idx)


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.float8_e4m3fn])
def test_unsupported_dtype(dtype):
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match=f"x has dtype {dtype}; supported"):
        routed_lora_delta(x.to(dtype), A.to(dtype), B.to(dtype), a_idx, b_idx)


def test_mixed_dtypes():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match="A has dtype torch.float16 but x has torch.float32"):
        routed_lora_delta(x, A.half(), B, a_idx, b_idx)


def test_scale_shape_and_dtype():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match=r"scale must be a float, a 0-d tensor or \(6,\) per row"):
        routed_lora_delta(x, A, B, a_idx, b_idx, scale=torch.ones(T + 1))
    with pytest.raises(ValueError, match="scale must be a floating-point tensor"):
        routed_lora_delta(x, A, B, a_idx, b_idx, scale=torch.ones(T, dtype=torch.long))
    with pytest.raises(TypeError, match="scale must be a float or a tensor"):
        routed_lora_delta(x, A, B, a_idx, b_idx, scale="2")


def test_weight_and_bias_shapes():
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match=r"weight is \(5, 7\) but must be \(d_out, d_in\) = \(5, 8\)"):
        routed_linear(x, torch.zeros(D_OUT, D_IN - 1), None, A, B, a_idx, b_idx)
    with pytest.raises(ValueError, match=r"bias is \(4,\) but must be \(d_out,\)"):
        routed_linear(x, torch.zeros(D_OUT, D_IN), torch.zeros(D_OUT - 1), A, B, a_idx, b_idx)


def test_plan_for_other_rows():
    x, A, B, a_idx, b_idx = _args()
    plan = lora_route.plan_routes(a_idx[:4], b_idx[:4])
    with pytest.raises(ValueError, match="plan was built for 4 rows but x has 6"):
        routed_lora_delta(x, A, B, a_idx, b_idx, plan=plan)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_plan_is_refused_with_indices_it_was_not_built_from(backend):
    """A plan built for other indices used to be trusted over the indices passed with it (wrong rows, no error)."""
    if backend == "triton" and not lora_route.backends()["triton"]:
        pytest.skip("the triton backend is not available")
    x, A, B, a_idx, b_idx = _args()
    other = lora_route.plan_routes(b_idx, a_idx)
    with pytest.raises(ValueError, match="built from other index tensors than the a_idx"):
        routed_lora_delta(x, A, B, a_idx, b_idx, plan=other, backend=backend)
    same_values = lora_route.plan_routes(a_idx.clone(), b_idx.clone())
    with pytest.raises(ValueError, match="other index tensors"):
        routed_lora_delta(x, A, B, a_idx, b_idx, plan=same_values, backend=backend)
    plan = lora_route.plan_routes(a_idx, b_idx)
    out_of_range = torch.full_like(a_idx, A.shape[0] + 3)
    with pytest.raises(ValueError, match="other index tensors"):
        routed_lora_delta(x, A, B, out_of_range, out_of_range, plan=plan, backend=backend)


def test_a_plan_from_plan_routes_vouches_for_its_indices(monkeypatch):
    """plan_routes checked the index tensors once; the layers that reuse its plan do not check them again."""
    from lora_route.kernels import op

    x, A, B, a_idx, b_idx = _args()
    checked = []
    monkeypatch.setattr(op, "check_index", lambda name, index, num_rows=None: checked.append(name))
    plan = lora_route.plan_routes(a_idx, b_idx)
    routed_lora_delta(x, A, B, a_idx, b_idx, plan=plan)
    assert checked == []
    routed_lora_delta(x, A, B, a_idx, b_idx)
    assert checked == ["a_idx", "b_idx"]
    with pytest.raises(ValueError, match="other index tensors"):
        routed_lora_delta(x, A, B, a_idx, b_idx.clone(), plan=plan)


def test_indices_changed_in_place_after_planning_are_refused():
    x, A, B, a_idx, b_idx = _args()
    plan = lora_route.plan_routes(a_idx, b_idx)
    expected = routed_lora_delta(x, A, B, a_idx, b_idx, plan=plan)
    a_idx[0] = (a_idx[0] + 1) % A.shape[0] if a_idx[0] >= 0 else a_idx[0]
    b_idx.add_(0)
    with pytest.raises(ValueError, match="changed in place after plan_routes"):
        routed_lora_delta(x, A, B, a_idx, b_idx, plan=plan)
    fresh = lora_route.plan_routes(a_idx, b_idx)
    assert routed_lora_delta(x, A, B, a_idx, b_idx, plan=fresh).shape == expected.shape


def test_unknown_and_unavailable_backend(monkeypatch):
    x, A, B, a_idx, b_idx = _args()
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        routed_lora_delta(x, A, B, a_idx, b_idx, backend="fast")
    with pytest.raises(ValueError, match="backend='cuda' cannot serve this call"):
        routed_lora_delta(x, A, B, a_idx, b_idx, backend="cuda")
    monkeypatch.setenv("LORA_ROUTE_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        routed_lora_delta(x, A, B, a_idx, b_idx)


def test_float64_on_triton_is_refused_by_name():
    x, A, B, a_idx, b_idx = _args(torch.float64)
    with pytest.raises(ValueError, match="backend='triton' cannot serve this call"):
        routed_lora_delta(x, A, B, a_idx, b_idx, backend="triton")


def test_rank_beyond_triton_limit_is_refused_by_the_dispatcher():
    x, A, B, a_idx, b_idx = _args()
    rank = 129
    A = torch.zeros(N, rank, D_IN)
    B = torch.zeros(N, D_OUT, rank)
    with pytest.raises(ValueError, match="backend='triton' cannot serve this call: Triton kernels take ranks up to"):
        routed_lora_delta(x, A, B, a_idx, b_idx, backend="triton")
    assert lora_route.resolve_backend("auto", x, rank) == ("cpu" if lora_route.backends()["cpu"] else "torch")


def test_double_backward_raises_a_clear_error():
    """create_graph=True used to return first-order gradients with no graph behind them (second order silently 0)."""
    x, A, B, a_idx, b_idx = _args(torch.float64)
    x.requires_grad_(True)
    A.requires_grad_(True)
    out = routed_lora_delta(x, A, B, a_idx, b_idx).square().sum()
    with pytest.raises(RuntimeError, match="double backward .* is not supported"):
        torch.autograd.grad(out, (x, A), create_graph=True)
    first = routed_lora_delta(x, A, B, a_idx, b_idx).square().sum()
    grad_x, grad_a = torch.autograd.grad(first, (x, A))
    assert grad_x.shape == x.shape and grad_a.shape == A.shape


def test_a_plan_built_with_core_indices_serves_a_call_without_core():
    """Decoding folds the UniCore into the source experts and calls without core, with the plan the routing built
    from (a_idx, u_idx, b_idx): its segments, one per (a, u, b), are the call's (a, b) groups or finer."""
    x, A, B, a_idx, b_idx = _args()
    u_idx = torch.zeros_like(a_idx).where(a_idx >= 0, -1)
    plan = lora_route.plan_routes(a_idx, b_idx, u_idx)
    expected = reference.routed_lora_delta(x, A, B, a_idx, b_idx)
    for formulation in torch_backend.FORMULATIONS:
        with torch_backend.forced_formulation(formulation):
            torch.testing.assert_close(routed_lora_delta(x, A, B, a_idx, b_idx, plan=plan), expected)
    with pytest.raises(ValueError, match="other index tensors than the u_idx"):
        routed_lora_delta(x, A, B, a_idx, b_idx, U=torch.eye(R).unsqueeze(0), u_idx=u_idx.clone(), plan=plan)
