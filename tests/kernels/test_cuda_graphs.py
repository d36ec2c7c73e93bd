"""The decode path of ``routed_linear`` with a prebuilt plan on a GPU: no host synchronisation, so it records into a
CUDA graph, eager and through ``torch.compile(mode="reduce-overhead")``, and a replay equals the eager call — also
after the inputs and the adapter banks change in place (nothing the graph reads may be a copy kept from before).

Every backend that can record: the fast ones and the torch backend's dense formulation (its segments formulation
reads the plan on the host and cannot)."""
from __future__ import annotations

import pytest
import torch

import lora_route
from lora_route import plan_routes, routed_linear
from lora_route.bench.graphs import capture
from lora_route.kernels import torch_backend

pytestmark = pytest.mark.cuda
BACKENDS = ("triton", "triton_fused", "cuda", "torch")


def _require(backend: str) -> None:
    if not lora_route.backends()[backend]:
        pytest.skip(f"backend {backend!r} is not available in this install")


def _decode_layer(rows: int = 64, d_in: int = 256, d_out: int = 512, rank: int = 16, banks: int = 4, seed: int = 0):
    """bf16 tensors of one decode-sized layer on the GPU (a quarter of the rows without adapter) and their plan."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator) * std).to("cuda", torch.bfloat16)

    active = torch.rand(rows, generator=generator) >= 0.25
    a_idx = torch.randint(0, banks, (rows,), generator=generator).where(active, -1).cuda()
    b_idx = torch.randint(0, banks, (rows,), generator=generator).where(active, -1).cuda()
    layer = {"x": randn(rows, d_in), "weight": randn(d_out, d_in, std=d_in ** -0.5), "bias": randn(d_out),
             "A": randn(banks, rank, d_in, std=d_in ** -0.5), "B": randn(banks, d_out, rank, std=rank ** -0.5),
             "scale": (0.5 + torch.rand(rows, generator=generator)).to("cuda", torch.bfloat16),
             "a_idx": a_idx, "b_idx": b_idx}
    assert torch_backend.uses_dense(layer["A"], layer["B"]), "the torch backend must take its dense formulation"
    return layer, plan_routes(a_idx, b_idx)


def _call(layer: dict, plan, backend: str):
    def call():
        with torch.no_grad():
            return routed_linear(layer["x"], layer["weight"], layer["bias"], layer["A"], layer["B"], layer["a_idx"],
                                 layer["b_idx"], scale=layer["scale"], plan=plan, backend=backend)
    return call


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decode_call_with_a_plan_never_synchronises(backend):
    _require(backend)
    layer, plan = _decode_layer()
    call = _call(layer, plan, backend)
    call()  # first call: kernel compilation and caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decode_call_with_a_plan_replays_from_a_cuda_graph(backend):
    _require(backend)
    layer, plan = _decode_layer()
    call = _call(layer, plan, backend)
    graph, output = capture(call)
    graph.replay()
    torch.testing.assert_close(output, call())
    layer["x"].copy_(torch.randn_like(layer["x"]))
    layer["B"].mul_(-2.0)  # the adapter bank updated in place after the capture
    layer["scale"].add_(0.25)
    graph.replay()
    torch.testing.assert_close(output, call())


@pytest.mark.parametrize("backend", BACKENDS)
def test_reduce_overhead_compile_matches_eager(backend):
    _require(backend)
    layer, plan = _decode_layer(seed=1)
    eager = _call(layer, plan, backend)

    def layer_call(x):
        return routed_linear(x, layer["weight"], layer["bias"], layer["A"], layer["B"], layer["a_idx"],
                             layer["b_idx"], scale=layer["scale"], plan=plan, backend=backend)

    compiled = torch.compile(layer_call, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for _ in range(3):  # CUDA graph trees record on a later call than the first
            got = compiled(layer["x"]).clone()
        torch.testing.assert_close(got, eager())
        layer["x"].copy_(torch.randn_like(layer["x"]))
        got = compiled(layer["x"]).clone()
    torch.testing.assert_close(got, eager())


class _PlannedRoutes:
    """A route source with per-row indices and their plan built once, outside any capture (as route() does)."""

    def __init__(self, a_idx, b_idx):
        u_idx = torch.zeros_like(a_idx).where(a_idx >= 0, -1)
        self.route = (a_idx, u_idx, b_idx, 1.0, plan_routes(a_idx, b_idx, u_idx))

    def rows(self, x, route_ids):
        return [self.route for _ in route_ids]


def test_a_unilora_layer_replays_with_its_current_core():
    """The layer keeps its banks with the UniCore folded in between decoding calls; a graph recorded with the kept banks
    would go on reading them after Uni_A / Uni_B change."""
    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.layer import RoutedLoRALinear

    torch.manual_seed(0)
    config = RoutedLoRAConfig("unilora", ["en", "de", "zh"], r=8, alpha=16.0, r_uni=16, dropout=0.0)
    layer = RoutedLoRALinear(torch.nn.Linear(64, 32), config, layer_index=0).cuda().eval()
    with torch.no_grad():
        layer.lora_B.normal_()
    a_idx = torch.tensor([0, 1, 2, -1, 1, 0], device="cuda")
    layer.route_source = _PlannedRoutes(a_idx, torch.tensor([1, 2, 0, -1, 0, 2], device="cuda"))
    x = torch.randn(6, 64, device="cuda")

    def call():
        with torch.no_grad():
            return layer(x)

    graph, output = capture(call)
    graph.replay()
    torch.testing.assert_close(output, call())
    with torch.no_grad():
        layer.uni_A.mul_(-0.5)
    graph.replay()
    torch.testing.assert_close(output, call())
