"""RoutedLoRALinear: a frozen ``nn.Linear`` plus adapter banks, every row routed to its own adapter by the fused op.

Banks are single Parameters (``lora_A`` (n_a, r, d_in), ``lora_B`` (n_b, d_out, r), optional UniCore ``uni_A``
(r_uni, r) / ``uni_B`` (r, r_uni), optional MoLoRA router), so DDP/FSDP see a fixed parameter set whatever
directions a batch holds. The per-row indices come from the model's routing state (:mod:`lora_route.adapters.patch`), which
builds them and their segment plan once per input shape and shares them with every layer.
"""
from __future__ import annotations

import math
from typing import Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn

from lora_route.adapters.config import SHARED_A_INIT_METHODS, RoutedLoRAConfig
from lora_route.kernels.op import routed_linear, routed_lora_delta
from lora_route.kernels.plan import RoutePlan


class RowRoutes(Protocol):
    """Source of per-row routes for a layer input (implemented by :class:`lora_route.adapters.patch.RoutingState`)."""

    def rows(self, x: Tensor, route_ids: Sequence[int]) -> list[tuple[Tensor, Tensor | None, Tensor, float, RoutePlan]]:
        """``(a_idx, u_idx, b_idx, scale, plan)`` per requested route, for the rows of ``x`` (..., d_in)."""


class RoutedLoRALinear(nn.Module):
    """``y = base_layer(x) + Σ_routes scale · B[b] · U[u] · A[a] · dropout(x)`` per row.

    base_layer: the frozen ``nn.Linear`` (d_in → d_out); config: the adapter's
    :class:`~lora_route.adapters.config.RoutedLoRAConfig`; layer_index: decoder layer holding this module (None when not in
    a numbered layer). ``scaling = alpha / r``. Adapter parameters are float32 (float64 for a float64 base) and are
    cast to the input dtype in forward, so bf16/fp16 models train fp32 adapter weights.
    """

    def __init__(self, base_layer: nn.Linear, config: RoutedLoRAConfig, layer_index: int | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"RoutedLoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.config = config
        self.layer_index = layer_index
        self.spec = config.layer_spec(layer_index)
        self.r = config.r
        self.scaling = config.alpha / config.r
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        weight = base_layer.weight
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        d_out, d_in = weight.shape
        factory = {"device": weight.device, "dtype": dtype}
        shapes = self.parameter_shapes(config, layer_index, d_in, d_out)
        self.lora_A = nn.Parameter(torch.empty(shapes["lora_A"], **factory))
        self.lora_B = nn.Parameter(torch.zeros(shapes["lora_B"], **factory))
        if self.spec.has_core:
            self.uni_A = nn.Parameter(torch.empty(shapes["uni_A"], **factory))
            self.uni_B = nn.Parameter(torch.empty(shapes["uni_B"], **factory))
        else:
            self.uni_A = self.uni_B = None
        self.router = nn.Linear(d_in, self.spec.router_experts, bias=False, **factory) if self.spec.router_experts else None
        self.route_source: RowRoutes | None = None
        self.merged_routes: tuple[tuple[int, int, int], ...] | None = None
        self._merged_factors: tuple[Tensor, Tensor] | None = None
        self._banks_cache: tuple[tuple, tuple[Tensor, Tensor, Tensor | None]] | None = None
        self.load_balancing_loss: Tensor | None = None
        self.reset_adapter_parameters()

    @staticmethod
    def parameter_shapes(config: RoutedLoRAConfig, layer_index: int | None, d_in: int,
                         d_out: int) -> dict[str, tuple[int, ...]]:
        """Name → shape of every adapter parameter a layer of ``config`` over a (d_out × d_in) linear layer holds
        (``lora_A``, ``lora_B``, ``uni_A`` / ``uni_B`` with the UniCore, ``router.weight`` with a learned router)."""
        spec = config.layer_spec(layer_index)
        shapes = {"lora_A": (spec.n_a, config.r, d_in), "lora_B": (spec.n_b, d_out, config.r)}
        if spec.has_core:
            shapes.update(uni_A=(config.r_uni, config.r), uni_B=(config.r, config.r_uni))
        if spec.router_experts:
            shapes["router.weight"] = (spec.router_experts, d_in)
        return shapes

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    # ------------------------------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_adapter_parameters(self) -> None:
        """LoRA's initialisation: every A Kaiming-uniform (a=√5, i.e. U(±1/√d_in), as ``nn.Linear`` / PEFT), every
        B zero, so the adapter starts as the identity map. The UniCore (not specified by the UniLoRA paper) starts
        as the identity core: ``Uni_A`` gets orthonormal columns and ``Uni_B = Uni_Aᵀ`` (a projection when
        r_uni < r), so UniLoRA starts as CrossLoRA and gradients reach every factor once B moves.

        Cross-connected methods (:data:`~lora_route.adapters.config.SHARED_A_INIT_METHODS`; neither paper specifies
        the initialisation) start every source expert A from the same draw, unless ``independent_source_init``: the
        experts' rank-space codes then begin aligned, so a target expert trained behind one source expert can read
        another's codes; with independent draws, source experts that never met a target expert in training produce
        codes it cannot read (``lora-route study stage2-data`` measures both)."""
        if self.lora_A.device.type == "meta":
            return
        bound = 1.0 / math.sqrt(self.in_features)
        if self.config.method in SHARED_A_INIT_METHODS and not self.config.independent_source_init:
            self.lora_A[0].uniform_(-bound, bound)
            self.lora_A[1:].copy_(self.lora_A[:1].expand_as(self.lora_A[1:]))
        else:
            self.lora_A.uniform_(-bound, bound)
        self.lora_B.zero_()
        if self.spec.has_core:
            r, r_uni = self.uni_B.shape
            q, _ = torch.linalg.qr(torch.randn(max(r, r_uni), min(r, r_uni), dtype=self.uni_A.dtype))
            if r_uni >= r:
                self.uni_A.copy_(q)
                self.uni_B.copy_(q.t())
            else:
                self.uni_B.copy_(q)
                self.uni_A.copy_(q.t())
        if self.router is not None:
            nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))

    @torch.no_grad()
    def init_from(self, matrices: Mapping[int | str, tuple[Tensor, Tensor]]) -> None:
        """Set adapters from given factors (MLAS SVD initialisation and the like).

        matrices: adapter key (bank index, ``"general"``, ``"src-tgt"`` or a dat adapter name, see
        :meth:`RoutedLoRAConfig.adapter_index`) → ``(A (r, d_in), B (d_out, r))`` with ``ΔW = scaling · B · A``.
        """
        if not isinstance(matrices, Mapping) or not matrices:
            raise ValueError("init_from expects a non-empty mapping adapter key -> (A, B)")
        for key, pair in matrices.items():
            index = self.config.adapter_index(key)
            if not 0 <= index < min(self.spec.n_a, self.spec.n_b):
                raise ValueError(f"adapter {key!r} (bank index {index}) is not in this layer's banks "
                                 f"(n_a={self.spec.n_a}, n_b={self.spec.n_b})")
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, Tensor) for t in pair)):
                raise ValueError(f"matrices[{key!r}] must be a pair of tensors (A, B)")
            a, b = pair
            if tuple(a.shape) != tuple(self.lora_A.shape[1:]) or tuple(b.shape) != tuple(self.lora_B.shape[1:]):
                raise ValueError(f"matrices[{key!r}] has A {tuple(a.shape)} and B {tuple(b.shape)}; this layer needs "
                                 f"A {tuple(self.lora_A.shape[1:])} and B {tuple(self.lora_B.shape[1:])}")
            self.lora_A[index].copy_(a.to(self.lora_A))
            self.lora_B[index].copy_(b.to(self.lora_B))

    # ------------------------------------------------------------------------------------------ forward
    def core(self, dtype: torch.dtype | None = None) -> Tensor | None:
        """UniCore ``U = Uni_B · Uni_A`` as a (1, r, r) bank (None without core); differentiable. Calls without grad
        read it folded into the source experts instead (:meth:`inference_banks`)."""
        if not self.spec.has_core:
            return None
        core = (self.uni_B @ self.uni_A).unsqueeze(0)
        return core if dtype is None else core.to(dtype)

    def inference_banks(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(A (n_a, r, d_in), B (n_b, d_out, r), A_core)`` in ``dtype`` for calls that record no autograd graph:
        ``A_core`` holds ``U·A[a]`` per bank (the UniCore folded into the source experts, so that a routed call needs
        no core step; None without core). Kept until a factor changes; recomputed while a CUDA graph is being
        captured, so that every replay reads the current factors."""
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"inference_banks needs a floating-point torch.dtype, got {dtype!r}")
        factors = [self.lora_A, self.lora_B] + ([self.uni_A, self.uni_B] if self.spec.has_core else [])
        if self.lora_A.is_cuda and torch.cuda.is_current_stream_capturing():
            key = None
        else:
            key = (dtype, *((factor._version, factor.data_ptr()) for factor in factors))
            if self._banks_cache is not None and self._banks_cache[0] == key:
                return self._banks_cache[1]
        with torch.no_grad():
            A_core = torch.matmul(self.core()[0], self.lora_A).to(dtype) if self.spec.has_core else None
            banks = (self.lora_A.to(dtype), self.lora_B.to(dtype), A_core)
        if key is not None:
            self._banks_cache = (key, banks)
        return banks

    def _calls(self, x: Tensor) -> list[tuple[Tensor, Tensor | None, Tensor, float | Tensor, RoutePlan | None]]:
        """``(a_idx, u_idx, b_idx, scale, plan)`` for every route this layer applies to the rows of ``x``."""
        if self.router is not None:
            flat = x.reshape(-1, self.in_features)
            probs = self.router(flat.to(self.router.weight.dtype)).float().softmax(-1)
            gates, experts = probs.topk(self.config.top_k, dim=-1)
            num_experts = probs.shape[-1]
            counts = torch.zeros(num_experts, device=x.device, dtype=probs.dtype)
            counts.scatter_add_(0, experts.reshape(-1), torch.ones_like(gates.reshape(-1)))
            fraction = counts / max(1, experts.numel())
            self.load_balancing_loss = num_experts * (fraction.detach() * probs.mean(0)).sum()
            return [(experts[:, j], None, experts[:, j], gates[:, j].to(x.dtype) * self.scaling, None)
                    for j in range(experts.shape[1])]
        if not self.spec.routes:
            return []
        if self.route_source is None:
            raise RuntimeError("this RoutedLoRALinear is not attached to a patched model; use apply_routed_lora")
        return [(a, u, b, scale * self.scaling, plan)
                for a, u, b, scale, plan in self.route_source.rows(x, self.spec.routes)]

    def forward(self, x: Tensor) -> Tensor:
        if self.merged_routes is not None:
            return self.base_layer(x)
        calls = self._calls(x)
        if not calls:
            return self.base_layer(x)
        adapter_input = self.lora_dropout(x) if self.training else x
        if torch.is_grad_enabled():
            A, B, U, A_core = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype), self.core(x.dtype), None
        else:
            (A, B, A_core), U = self.inference_banks(x.dtype), None
        weight, bias = self.base_layer.weight, self.base_layer.bias
        out = None
        for a_idx, u_idx, b_idx, scale, plan in calls:
            bank, core, core_idx = A, None, None
            if u_idx is not None:
                bank, core, core_idx = (A_core, None, None) if A_core is not None else (A, U, u_idx)
            if out is None and adapter_input is x and weight.dtype == x.dtype:
                out = routed_linear(x, weight, bias, bank, B, a_idx, b_idx, U=core, u_idx=core_idx, scale=scale,
                                    plan=plan)
                continue
            if out is None:
                out = self.base_layer(x)
            out = out + routed_lora_delta(adapter_input, bank, B, a_idx, b_idx, U=core, u_idx=core_idx, scale=scale,
                                          plan=plan)
        return out

    # ------------------------------------------------------------------------------------------ one direction
    def routes_of(self, direction_routes: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """Of a direction's routes (one ``(a, u, b)`` per route of the method), those this layer applies."""
        return [direction_routes[i] for i in self.spec.routes]

    def direction_factors(self, routes: Sequence[tuple[int, int, int]]) -> tuple[Tensor, Tensor]:
        """Factors of the sum of ``routes`` ((a, u, b) triples): ``A'`` (k·r, d_in) and ``B'`` (d_out, k·r) with
        ``Σ scaling · B[b]·U·A[a] = scaling · B'·A'`` (float32, detached)."""
        if self.router is not None:
            raise ValueError("molora_topk routes each token through a learned router; it has no per-direction factors")
        a_parts, b_parts = [], []
        core = self.core()
        with torch.no_grad():
            for a, u, b in routes:
                if not (0 <= a < self.spec.n_a and 0 <= b < self.spec.n_b):
                    raise ValueError(f"route (a={a}, b={b}) is outside this layer's banks "
                                     f"(n_a={self.spec.n_a}, n_b={self.spec.n_b})")
                a_parts.append(self.lora_A[a].float())
                b_matrix = self.lora_B[b].float()
                b_parts.append(b_matrix @ core[0].float() if (core is not None and u >= 0) else b_matrix)
        return torch.cat(a_parts, 0), torch.cat(b_parts, 1)

    def delta_weight(self, routes: Sequence[tuple[int, int, int]]) -> Tensor:
        """``ΔW`` (d_out, d_in), float32, of the sum of ``routes``."""
        a, b = self.direction_factors(routes)
        return self.scaling * (b @ a)

    @torch.no_grad()
    def merge(self, routes: Sequence[tuple[int, int, int]]) -> None:
        """Fold the routes' ΔW into ``base_layer.weight``; forward then runs the base layer only. The factors of the
        folded ΔW are kept, so that :meth:`unmerge` subtracts exactly what was added whatever happens to the
        adapters in between."""
        if self.merged_routes is not None:
            raise ValueError(f"already merged routes {self.merged_routes}; unmerge first")
        a, b = self.direction_factors(routes)
        weight = self.base_layer.weight
        weight.copy_((weight.float() + self.scaling * (b @ a)).to(weight.dtype))
        self.merged_routes = tuple(tuple(route) for route in routes)
        self._merged_factors = (a, b)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged ΔW again (exact in float32; within rounding for half-precision bases)."""
        if self.merged_routes is None or self._merged_factors is None:
            raise ValueError("nothing is merged into this layer")
        a, b = self._merged_factors
        weight = self.base_layer.weight
        weight.copy_((weight.float() - self.scaling * (b @ a)).to(weight.dtype))
        self.merged_routes = None
        self._merged_factors = None

    def extra_repr(self) -> str:
        core = f", r_uni={self.uni_A.shape[0]}" if self.spec.has_core else ""
        router = f", router_experts={self.spec.router_experts}, top_k={self.config.top_k}" if self.router is not None else ""
        return (f"method={self.config.method}, n_a={self.spec.n_a}, n_b={self.spec.n_b}, r={self.r}{core}{router}, "
                f"scaling={self.scaling:g}, routes={self.spec.routes}")
