"""The baseline a user writes today to train several LoRAs on one mixed batch: a Python loop over the directions
present, each gathering its rows (``index_select``), applying its own LoRA and adding the result back
(``index_add_``). The rows of each direction are found once per step (one host synchronisation), as a careful user
would; the per-direction launches remain.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lora_route.kernels.plan import check_index


def group_rows(row_adapters: Tensor) -> list[tuple[int, Tensor]]:
    """``[(adapter, rows)]`` for each adapter present in ``row_adapters`` (T,) (-1 rows are left out);
    ``rows`` is an int64 tensor of row ids on the same device. Synchronises once."""
    check_index("row_adapters", row_adapters)
    order = torch.argsort(row_adapters, stable=True)
    adapters, counts = torch.unique_consecutive(row_adapters[order], return_counts=True)
    groups = zip(adapters.tolist(), torch.split(order, counts.tolist()))
    return [(adapter, rows) for adapter, rows in groups if adapter >= 0]


def naive_loop_linear(x: Tensor, weight: Tensor, bias: Tensor | None, A: Tensor, B: Tensor,
                      groups: list[tuple[int, Tensor]], scale: float) -> Tensor:
    """``F.linear(x, weight, bias)`` plus, for each ``(adapter, rows)`` of ``groups``, ``scale · B[a] A[a] x`` on
    those rows. x: (..., d_in); A: (n, r, d_in); B: (n, d_out, r). Differentiable by autograd."""
    if A.dim() != 3 or B.dim() != 3 or A.shape[0] != B.shape[0] or A.shape[2] != x.shape[-1] or B.shape[2] != A.shape[1]:
        raise ValueError(f"A {tuple(A.shape)} / B {tuple(B.shape)} do not fit x (..., {x.shape[-1]}): "
                         "need A (n, r, d_in) and B (n, d_out, r)")
    out = nn.functional.linear(x, weight, bias)
    lead = out.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    out2d = out.reshape(-1, out.shape[-1])
    for adapter, rows in groups:
        sub_batch = x2d.index_select(0, rows)
        delta = (sub_batch @ A[adapter].t()) @ B[adapter].t()
        out2d.index_add_(0, rows, delta, alpha=scale)
    return out2d.reshape(*lead, out2d.shape[-1])


class RowGroups:
    """The per-step ``[(adapter, rows)]`` shared by every :class:`NaiveLoopLoRALinear` of a model."""

    def __init__(self):
        self.groups: list[tuple[int, Tensor]] | None = None

    @contextmanager
    def use(self, row_adapters: Tensor):
        """Group ``row_adapters`` (T,) once; every naive layer called inside the block uses that grouping."""
        self.groups = group_rows(row_adapters)
        try:
            yield
        finally:
            self.groups = None


class NaiveLoopLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus ``num_adapters`` LoRAs applied by :func:`naive_loop_linear`.

    lora_A: (num_adapters, r, d_in), Kaiming-uniform; lora_B: (num_adapters, d_out, r), zeros (standard LoRA init);
    scaling = alpha / r. Like :class:`lora_route.adapters.layer.RoutedLoRALinear`, adapter weights are float32 masters
    cast to the input dtype in forward.
    """

    def __init__(self, base_layer: nn.Linear, num_adapters: int, rank: int, alpha: float, row_groups: RowGroups):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"base_layer must be an nn.Linear, got {type(base_layer).__name__}")
        if num_adapters < 1 or rank < 1:
            raise ValueError(f"num_adapters and rank must be >= 1, got {num_adapters} and {rank}")
        self.base_layer = base_layer.requires_grad_(False)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": torch.float64 if weight.dtype == torch.float64 else torch.float32}
        self.lora_A = nn.Parameter(torch.empty(num_adapters, rank, base_layer.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(num_adapters, base_layer.out_features, rank, **factory))
        for matrix in self.lora_A:
            nn.init.kaiming_uniform_(matrix, a=5 ** 0.5)
        self.scaling = alpha / rank
        self.row_groups = row_groups

    def forward(self, x: Tensor) -> Tensor:
        if self.row_groups.groups is None:
            raise RuntimeError("NaiveLoopLoRALinear called outside RowGroups.use(row_adapters): no routing for this step")
        return naive_loop_linear(x, self.base_layer.weight, self.base_layer.bias, self.lora_A.to(x.dtype),
                                 self.lora_B.to(x.dtype), self.row_groups.groups, self.scaling)


def patch_naive_loop(model: nn.Module, target_names: tuple[str, ...], num_adapters: int, rank: int,
                     alpha: float) -> RowGroups:
    """Replace every ``nn.Linear`` whose attribute name is in ``target_names`` by a :class:`NaiveLoopLoRALinear`
    (in place); freeze everything else. Returns the :class:`RowGroups` that routes the patched layers."""
    model.requires_grad_(False)
    row_groups = RowGroups()
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if name in target_names and isinstance(child, nn.Linear)]
    if not targets:
        raise ValueError(f"no nn.Linear named any of {target_names} in {type(model).__name__}")
    for parent, name, child in targets:
        setattr(parent, name, NaiveLoopLoRALinear(child, num_adapters, rank, alpha, row_groups))
    return row_groups
