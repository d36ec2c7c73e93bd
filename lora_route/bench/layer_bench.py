"""Layer-level benchmark: one gated MLP block (gate/up/down, a LoRA on each) run by every provider on the same
inputs, weights and adapter banks, timed side by side, each output checked against the float32 torch backend.

Providers:
- ``base``: the frozen MLP alone (``nn.Linear`` modules), no adapter;
- ``peft_single``: PEFT ``get_peft_model`` with one LoRA applied to every row;
- ``peft_mixed``: PEFT with one LoRA per adapter, rows routed by ``adapter_names=`` (PEFT's mixed batch);
- ``naive_loop``: per-adapter Python loop (:mod:`.naive`);
- ``lora_route_<backend>``: :func:`lora_route.routed_linear` with ``backend=`` explicit and one
  :func:`lora_route.plan_routes` plan shared by the three projections.
Per-step setup (the plan, the naive loop's row groups) is built outside the timed call — it is built once per
model step and shared by every layer — and is timed on its own (:func:`time_plan_build`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from lora_route.bench.config import MLPShape, Workload
from lora_route.bench.errors import ProviderUnavailable
from lora_route.bench.naive import group_rows, naive_loop_linear
from lora_route.bench.peft_baseline import attach_peft_loras, peft_adapter_name
from lora_route.bench.timing import Timer, Timing
from lora_route.kernels.dispatch import resolve_backend
from lora_route.kernels.op import routed_linear
from lora_route.kernels.plan import plan_routes
from lora_route.kernels.torch_backend import uses_dense

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# Relative error (max |out - ref| / max |ref|) below which an output counts as agreeing with the reference.
AGREEMENT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    if name == "silu":
        return nn.functional.silu
    return lambda h: nn.functional.gelu(h, approximate="tanh")


def gated_mlp(x: Tensor, project: Callable[[str, Tensor], Tensor], activation: str) -> Tensor:
    """``down(act(gate(x)) * up(x))`` with ``project(name, input)`` applying projection ``name``."""
    act = _activation(activation)
    return project("down_proj", act(project("gate_proj", x)) * project("up_proj", x))


@dataclass
class MLPBanks:
    """Frozen MLP weights (d_out, d_in) and LoRA banks A (n, r, d_in), B (n, d_out, r) per projection."""

    shape: MLPShape
    weights: dict[str, Tensor]
    A: dict[str, Tensor]
    B: dict[str, Tensor]

    @property
    def scale(self) -> float:
        """alpha / r with alpha = 2 r, the usual LoRA setting."""
        return 2.0

    @property
    def alpha(self) -> float:
        return self.scale * self.shape.rank

    def adapter_params(self) -> list[Tensor]:
        return [*self.A.values(), *self.B.values()]

    def to(self, dtype: torch.dtype) -> "MLPBanks":
        """A detached copy in ``dtype`` (the reference computes in float32)."""
        def cast(tensors):
            return {name: t.detach().to(dtype) for name, t in tensors.items()}
        return MLPBanks(self.shape, cast(self.weights), cast(self.A), cast(self.B))


def make_mlp_banks(shape: MLPShape, device: torch.device, dtype: torch.dtype, seed: int) -> MLPBanks:
    """Random weights scaled so activations stay O(1): W ~ N(0, 1/d_in), A ~ N(0, 1/d_in), B ~ N(0, 0.01/r).
    Adapter banks are leaf tensors that require grad (they are what training updates)."""
    generator = torch.Generator().manual_seed(seed)
    dims = {"gate_proj": (shape.ffn, shape.hidden), "up_proj": (shape.ffn, shape.hidden),
            "down_proj": (shape.hidden, shape.ffn)}
    n, r = shape.num_adapters, shape.rank

    def randn(*size, std):
        return (torch.randn(*size, generator=generator) * std).to(device=device, dtype=dtype)

    weights, A, B = {}, {}, {}
    for name, (d_out, d_in) in dims.items():
        weights[name] = randn(d_out, d_in, std=d_in ** -0.5)
        A[name] = randn(n, r, d_in, std=d_in ** -0.5).requires_grad_(True)
        B[name] = randn(n, d_out, r, std=0.1 * r ** -0.5).requires_grad_(True)
    return MLPBanks(shape, weights, A, B)


class GatedMLP(nn.Module):
    """An HF-style MLP module (``gate_proj``/``up_proj``/``down_proj``) whose frozen weights are the banks' tensors."""

    def __init__(self, banks: MLPBanks):
        super().__init__()
        self.activation = banks.shape.activation
        for name in PROJECTIONS:
            d_out, d_in = banks.weights[name].shape
            linear = nn.Linear(d_in, d_out, bias=False, device="meta")
            linear.weight = nn.Parameter(banks.weights[name], requires_grad=False)
            setattr(self, name, linear)

    def forward(self, x: Tensor) -> Tensor:
        return gated_mlp(x, lambda name, h: getattr(self, name)(h), self.activation)


@dataclass
class PreparedCall:
    """``run``: the timed call; ``forward``: one forward (no grad) for the correctness check; ``rows``: the
    adapter index per row this provider computes (-1 = base only); ``grad_to_none``: grads reset between calls."""

    run: Callable[[], object]
    forward: Callable[[], Tensor]
    rows: Tensor
    grad_to_none: list[Tensor]


class LayerBench:
    """All providers of one MLP shape. PEFT models are built once per shape and reused across workloads."""

    def __init__(self, shape: MLPShape, device: torch.device, dtype: torch.dtype, seed: int):
        self.shape, self.device, self.dtype = shape, torch.device(device), dtype
        self.banks = make_mlp_banks(shape, self.device, dtype, seed)
        self._reference_banks: MLPBanks | None = None
        self._modules: dict[str, nn.Module] = {}

    # ----------------------------------------------------------------------------------------- inputs
    def inputs(self, workload: Workload, seed: int) -> tuple[Tensor, Tensor]:
        """``x`` and the upstream gradient ``dy``, both (sequences, seq_len, hidden)."""
        generator = torch.Generator().manual_seed(seed)
        size = (workload.sequences, workload.seq_len, self.shape.hidden)
        x = torch.randn(*size, generator=generator).to(self.device, self.dtype)
        dy = torch.randn(*size, generator=generator).to(self.device, self.dtype)
        return x, dy

    # ------------------------------------------------------------------------------------- providers
    def _module(self, provider: str) -> nn.Module:
        if provider not in self._modules:
            module = GatedMLP(self.banks)
            if provider != "base":
                count = 1 if provider == "peft_single" else self.shape.num_adapters
                module = attach_peft_loras(module, PROJECTIONS, self.shape.rank, self.banks.alpha, count,
                                           autocast_adapter_dtype=False)
                self._copy_banks_into_peft(module, count)
            self._modules[provider] = module
        return self._modules[provider]

    def _copy_banks_into_peft(self, peft_model: nn.Module, count: int) -> None:
        inner = peft_model.get_base_model()
        with torch.no_grad():
            for name in PROJECTIONS:
                layer = getattr(inner, name)
                for index in range(count):
                    adapter = peft_adapter_name(index)
                    layer.lora_A[adapter].weight.copy_(self.banks.A[name][index])
                    layer.lora_B[adapter].weight.copy_(self.banks.B[name][index])
                    layer.lora_A[adapter].weight.requires_grad_(True)
                    layer.lora_B[adapter].weight.requires_grad_(True)

    def _provider_forward(self, provider: str, x: Tensor, sequence_ids: Tensor, row_ids: Tensor):
        """``(forward, rows, adapter_params)`` of one provider: the forward callable, the adapter index per row it
        computes (-1 = base only) and the adapter tensors it trains."""
        banks, activation = self.banks, self.shape.activation
        if provider in ("base", "peft_single", "peft_mixed"):
            module = self._module(provider)
            params = [p for p in module.parameters() if p.requires_grad]
            if provider == "peft_mixed":
                names = [peft_adapter_name(i) for i in sequence_ids.tolist()]
                return (lambda: module(x, adapter_names=names)), row_ids, params
            rows = torch.full_like(row_ids, -1 if provider == "base" else 0)
            return (lambda: module(x)), rows, params
        if provider == "naive_loop":
            groups = group_rows(row_ids)

            def naive_projection(name, h):
                return naive_loop_linear(h, banks.weights[name], None, banks.A[name], banks.B[name], groups,
                                         banks.scale)
            return (lambda: gated_mlp(x, naive_projection, activation)), row_ids, banks.adapter_params()
        if provider.startswith("lora_route_"):
            backend = provider.removeprefix("lora_route_")
            try:
                resolve_backend(backend, x, weight=banks.weights[PROJECTIONS[0]])
            except ValueError as error:
                raise ProviderUnavailable(str(error)) from error
            plan = plan_routes(row_ids)

            def routed_projection(name, h):
                return routed_linear(h, banks.weights[name], None, banks.A[name], banks.B[name], row_ids, row_ids,
                                     scale=banks.scale, plan=plan, backend=backend)
            return (lambda: gated_mlp(x, routed_projection, activation)), row_ids, banks.adapter_params()
        raise ValueError(f"unknown layer provider {provider!r}")

    def prepare(self, provider: str, workload: Workload, x: Tensor, dy: Tensor, sequence_ids: Tensor) -> PreparedCall:
        """The calls of ``provider`` on this workload; :class:`ProviderUnavailable` when it cannot run it.
        ``sequence_ids`` (sequences,) is the adapter of each sequence; ``x``, ``dy`` (sequences, seq_len, hidden)."""
        train = workload.kind == "forward_backward"
        row_ids = sequence_ids.repeat_interleave(workload.seq_len).to(self.device)
        x_in = x.detach().requires_grad_(train)
        if provider in ("base", "peft_single", "peft_mixed"):
            self._module(provider).train(train)
        forward, rows, params = self._provider_forward(provider, x_in, sequence_ids, row_ids)

        def forward_no_grad():
            with torch.no_grad():
                return forward()

        if not train:
            return PreparedCall(run=forward_no_grad, forward=forward_no_grad, rows=rows, grad_to_none=[x_in, *params])

        def forward_backward():
            forward().backward(dy)

        try:
            forward_backward()
        except ValueError as error:
            if provider != "peft_mixed":
                raise
            # PEFT refuses adapter_names in training mode; its own message is the skip reason.
            raise ProviderUnavailable(f"{type(error).__name__}: {error}") from error
        return PreparedCall(run=forward_backward, forward=forward_no_grad, rows=rows, grad_to_none=[x_in, *params])

    def synchronising_reason(self, provider: str) -> str | None:
        """Why ``provider``'s decode call synchronises with the host on this shape (so no CUDA graph can record it);
        None when it does not: the torch backend's segments formulation, taken for banks too large for the dense
        one, reads the plan's segments on the host."""
        if provider != "lora_route_torch":
            return None
        segmented = [name for name in PROJECTIONS if not uses_dense(self.banks.A[name], self.banks.B[name])]
        if not segmented:
            return None
        return (f"the torch backend takes its segments formulation on {', '.join(segmented)} at these bank sizes, "
                "which reads the plan on the host (a synchronisation)")

    # ----------------------------------------------------------------------------------- correctness
    def relative_error(self, output: Tensor, x: Tensor, rows: Tensor) -> float:
        """max |output - ref| / max |ref|, ref = the MLP with adapter ``rows`` in float32 on the torch backend."""
        if self._reference_banks is None:
            self._reference_banks = self.banks.to(torch.float32)
        ref_banks = self._reference_banks
        plan = plan_routes(rows)
        with torch.no_grad():
            reference = gated_mlp(x.float(), lambda n, h: routed_linear(
                h, ref_banks.weights[n], None, ref_banks.A[n], ref_banks.B[n], rows, rows, scale=ref_banks.scale,
                plan=plan, backend="torch"), self.shape.activation)
            error = (output.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-30)
        return float(error)


def time_plan_build(timer: Timer, row_ids: Tensor) -> Timing:
    """Time :func:`lora_route.plan_routes` on ``row_ids`` (T,): the per-step cost every layer then shares."""
    return timer.measure(lambda: plan_routes(row_ids))
