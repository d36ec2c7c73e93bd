"""The op resolves its backend once per kind of call (not once per layer), and the cached answer keeps every rule of
:func:`lora_route.resolve_backend`: ``LORA_ROUTE_BACKEND`` changes take effect, a backend that cannot serve a call
raises on every call, and ``torch.compile`` keeps the answer as a constant instead of tracing the resolution."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

import lora_route
from lora_route import plan_routes, routed_linear, routed_lora_delta
from lora_route.kernels import dispatch, op, torch_backend


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty resolution cache, no LORA_ROUTE_BACKEND, and the list of requests that reached resolve_backend."""
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    monkeypatch.delenv("LORA_ROUTE_BACKEND", raising=False)
    requests = []
    resolve = dispatch.resolve_backend
    monkeypatch.setattr(dispatch, "resolve_backend", lambda *args: requests.append(args[0]) or resolve(*args))
    return requests


def _layer(dtype=torch.float32, rank=2):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=generator, dtype=dtype)
    weight = torch.randn(5, 8, generator=generator, dtype=dtype)
    A = torch.randn(3, rank, 8, generator=generator, dtype=dtype)
    B = torch.randn(3, 5, rank, generator=generator, dtype=dtype)
    a_idx = torch.tensor([0, 1, 2, -1, 0, 1])
    return x, weight, A, B, a_idx


def _used_backends(monkeypatch) -> list[str]:
    used = []
    get_backend = op.get_backend
    monkeypatch.setattr(op, "get_backend", lambda name: used.append(name) or get_backend(name))
    return used


def test_the_layers_of_a_model_resolve_their_backend_once(fresh_cache):
    x, weight, A, B, a_idx = _layer()
    plan = plan_routes(a_idx)
    for _ in range(3):  # three layers sharing the plan
        routed_linear(x, weight, None, A, B, a_idx, a_idx, plan=plan)
    routed_lora_delta(x, A, B, a_idx, a_idx, plan=plan)  # no weight: another kind of call
    routed_linear(x.double(), weight.double(), None, A.double(), B.double(), a_idx, a_idx, plan=plan)
    assert fresh_cache == ["auto", "auto", "auto"]


def test_a_change_of_lora_route_backend_takes_effect_at_the_next_call(fresh_cache, monkeypatch):
    if not lora_route.backends()["triton"]:
        pytest.skip("the triton backend is not available")
    used = _used_backends(monkeypatch)
    x, weight, A, B, a_idx = _layer()
    routed_lora_delta(x, A, B, a_idx, a_idx)
    monkeypatch.setenv("LORA_ROUTE_BACKEND", "triton")
    routed_lora_delta(x, A, B, a_idx, a_idx)
    monkeypatch.setenv("LORA_ROUTE_BACKEND", "torch")
    routed_lora_delta(x, A, B, a_idx, a_idx)
    monkeypatch.delenv("LORA_ROUTE_BACKEND")
    routed_lora_delta(x, A, B, a_idx, a_idx)
    auto_on_cpu = "cpu" if lora_route.backends()["cpu"] else "torch"
    assert used == [auto_on_cpu, "triton", "torch", auto_on_cpu]


def test_a_backend_that_cannot_serve_the_call_raises_on_every_call(fresh_cache, monkeypatch):
    x, weight, A, B, a_idx = _layer(rank=129)  # above the Triton kernels' largest rank
    for _ in range(2):
        with pytest.raises(ValueError, match="backend='triton' cannot serve this call"):
            routed_lora_delta(x, A, B, a_idx, a_idx, backend="triton")
    monkeypatch.setenv("LORA_ROUTE_BACKEND", "cuda")
    for _ in range(2):
        with pytest.raises(ValueError, match="backend='cuda' cannot serve this call"):
            routed_lora_delta(x, A, B, a_idx, a_idx)
    assert dispatch._RESOLVED == {}
    with pytest.raises(ValueError, match="num_rows must be >= 0"):
        dispatch.resolve_backend_cached("auto", x, 2, None, -1)


def test_compile_keeps_the_resolution_out_of_the_traced_graph(fresh_cache, monkeypatch):
    """A backend's availability check may do what dynamo cannot trace (the cuda backend imports its extension):
    the resolution used to be traced, which broke ``fullgraph=True`` (and graph-broke otherwise)."""
    untraceable = torch_backend.BACKEND._replace(
        unsupported_reason=lambda x, weight, rank: importlib.import_module("json") and None)
    monkeypatch.setitem(dispatch.BACKENDS, "torch", untraceable)
    x, weight, A, B, a_idx = _layer()
    plan = plan_routes(a_idx)

    def layer(x):
        return routed_linear(x, weight, None, A, B, a_idx, a_idx, plan=plan, backend="torch")

    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))
    assert fresh_cache == ["torch"]


def test_kernels_imported_without_the_interpreter_refuse_cpu_tensors_with_a_reason():
    """Setting TRITON_INTERPRET=1 after the kernels were imported used to let CPU calls through to a Triton launch that
    failed with "0 active drivers" (lora-route bench's Triton rows on a CPU)."""
    script = (
        "import os, torch, lora_route\n"
        "from lora_route.kernels.dispatch import resolve_backend\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    resolve_backend('triton', torch.zeros(2, 8), 4)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LORA_ROUTE_BACKEND")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "imported before TRITON_INTERPRET=1 was set" in done.stdout
