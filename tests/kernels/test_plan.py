"""Segment plans group rows by route, keep static shapes and are reusable across calls."""
import pytest
import torch

from lora_route import plan_routes, routed_lora_delta
from lora_route.kernels import reference
from lora_route.kernels.plan import build_plan_tensors


def _random_routes(num_rows, n_a, n_b, n_u, seed, inactive_share=0.3):
    generator = torch.Generator().manual_seed(seed)
    a_idx = torch.randint(0, n_a, (num_rows,), generator=generator)
    b_idx = torch.randint(0, n_b, (num_rows,), generator=generator)
    u_idx = torch.randint(0, n_u, (num_rows,), generator=generator)
    inactive = torch.rand(num_rows, generator=generator) < inactive_share
    return a_idx.masked_fill(inactive, -1), b_idx.masked_fill(inactive, -1), u_idx.masked_fill(inactive, -1)


@pytest.mark.parametrize("num_rows,seed", [(1, 0), (7, 1), (50, 2), (200, 3)])
def test_segments_partition_active_rows_by_route(num_rows, seed):
    a_idx, b_idx, u_idx = _random_routes(num_rows, 4, 3, 2, seed)
    plan = plan_routes(a_idx, b_idx, u_idx)
    seen_rows, seen_routes = [], set()
    for rows, a, u, b in plan.segments():
        assert len(rows) > 0
        assert bool((a_idx[rows] == a).all() and (b_idx[rows] == b).all() and (u_idx[rows] == u).all())
        assert (a, u, b) not in seen_routes
        seen_routes.add((a, u, b))
        seen_rows.extend(rows.tolist())
    active = (a_idx >= 0).nonzero().squeeze(1).tolist()
    assert sorted(seen_rows) == active
    routes = {(a, u, b) for a, u, b in zip(a_idx.tolist(), u_idx.tolist(), b_idx.tolist()) if a >= 0}
    assert int(plan.num_segments) == len(routes)
    # rows without adapter come last in row_order
    assert sorted(plan.row_order[len(active):].tolist()) == (a_idx < 0).nonzero().squeeze(1).tolist()


def test_shapes_are_static_and_padding_is_sentinel():
    a_idx = torch.tensor([2, 2, -1, 0, 2])
    plan = plan_routes(a_idx)
    assert plan.row_order.shape == (5,)
    assert plan.segment_starts.shape == (6,)
    assert plan.segment_routes.shape == (5, 3)
    assert plan.segment_starts.tolist() == [0, 1, 4, 4, 4, 4]
    assert plan.segment_routes.tolist() == [[0, 0, 0], [2, 0, 2], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]]
    assert plan.index_bounds == ((0, 2), (0, 2), (0, 0))


def test_all_rows_without_adapter():
    plan = plan_routes(torch.full((4,), -1))
    assert int(plan.num_segments) == 0
    assert plan.segments() == []
    assert plan.segment_starts.tolist() == [0] * 5


def test_empty_batch():
    plan = plan_routes(torch.zeros(0, dtype=torch.long))
    assert int(plan.num_segments) == 0 and plan.row_order.shape == (0,)


def test_plan_reused_across_layers_matches_per_call_plan():
    a_idx, b_idx, _ = _random_routes(30, 5, 5, 1, seed=4)
    plan = plan_routes(a_idx, b_idx)
    generator = torch.Generator().manual_seed(5)
    for d_in, d_out in [(16, 24), (24, 16)]:
        x = torch.randn(30, d_in, generator=generator, dtype=torch.float64)
        A = torch.randn(5, 4, d_in, generator=generator, dtype=torch.float64)
        B = torch.randn(5, d_out, 4, generator=generator, dtype=torch.float64)
        with_plan = routed_lora_delta(x, A, B, a_idx, b_idx, plan=plan)
        expected = reference.routed_lora_delta(x, A, B, a_idx, b_idx)
        torch.testing.assert_close(with_plan, expected)
        torch.testing.assert_close(routed_lora_delta(x, A, B, a_idx, b_idx), expected)


def test_plan_tensors_trace_without_graph_break():
    a_idx, b_idx, u_idx = _random_routes(12, 3, 3, 2, seed=6)
    compiled = torch.compile(build_plan_tensors, fullgraph=True)
    for got, want in zip(compiled(a_idx, b_idx, u_idx), build_plan_tensors(a_idx, b_idx, u_idx)):
        assert torch.equal(got, want)


def test_int32_indices_are_accepted():
    a_idx = torch.tensor([1, 0, 1, -1], dtype=torch.int32)
    plan = plan_routes(a_idx)
    assert [rows.tolist() for rows, *_ in plan.segments()] == [[1], [0, 2]]
