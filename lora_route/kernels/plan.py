"""Segment plans: the rows of a batch grouped by route, built once and shared by every layer and by backward.

A route is the triple ``(a, u, b)`` of bank indices a row uses. Grouping rows that share a route lets each kernel
tile run a dense GEMM against one adapter. Every tensor of a plan has a shape fixed by the number of rows ``T``
(no host synchronisation is needed to build one, so plans build inside ``torch.compile`` graphs too); the number
of segments ``S`` is a device scalar and the unused tail of the padded tensors holds sentinels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

_INDEX_DTYPES = (torch.int32, torch.int64)
# Rows at or below this count are decode-sized: one row per sequence, BGMV-style gather kernels.
DECODE_MAX_ROWS = 256
SHAPE_CLASSES = ("decode", "prefill_or_training")


def shape_class(num_rows: int) -> str:
    """``"decode"`` for at most :data:`DECODE_MAX_ROWS` rows (one per sequence), else ``"prefill_or_training"``."""
    return "decode" if num_rows <= DECODE_MAX_ROWS else "prefill_or_training"


@dataclass(frozen=True)
class RoutePlan:
    """Rows grouped by route.

    row_order:       (T,) int64. Row ids sorted by route; rows without adapter (``a_idx == -1``) come last.
    segment_starts:  (T + 1,) int64. Segment ``s`` is ``row_order[segment_starts[s]:segment_starts[s + 1]]`` for
                     ``s < S``; entries past ``S`` equal the number of active rows.
    segment_routes:  (T, 3) int64. ``(a, u, b)`` of segment ``s`` in row ``s``; ``-1`` past ``S``.
                     ``u`` is 0 when the routes carry no core index.
    num_segments:    () int64, ``S``.
    index_bounds:    ``((min_a, max_a), (min_b, max_b), (min_u, max_u))`` over active rows as Python ints, or None
                     when the plan was built inside a compiled graph (bounds are then checked by the kernel call).
    indices:         the ``(a_idx, b_idx, u_idx)`` tensors :func:`plan_routes` built the plan from, and
    index_versions:  their version counters then (-1 for inference tensors, which carry none): a call that passes the
                     plan with other index tensors, or with these changed in place since, is refused
                     (:meth:`check_built_from`).
    derived:         values a backend derives from the routes (key → value), built by the first call that passes
                     this plan and reused by every later call that passes it (the layers of a model in one step).
    """

    row_order: Tensor
    segment_starts: Tensor
    segment_routes: Tensor
    num_segments: Tensor
    index_bounds: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    indices: tuple[Tensor, Tensor, Tensor | None] | None = None
    index_versions: tuple[int, int, int] | None = None
    derived: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_rows(self) -> int:
        return self.row_order.shape[0]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.row_order, self.segment_starts, self.segment_routes, self.num_segments

    def check_built_from(self, a_idx: Tensor, b_idx: Tensor, u_idx: Tensor | None) -> None:
        """ValueError unless this plan was built by :func:`plan_routes` from these very index tensors and none of them
        has been changed in place since (plans built inside a compiled graph record no indices and are not checked).
        A call without core (``u_idx`` None) may pass a plan built with core indices: its segments, one per
        ``(a, u, b)``, are the call's ``(a, b)`` groups or finer, which every backend serves."""
        if self.indices is None:
            return
        for name, given, built in zip(("a_idx", "b_idx", "u_idx"), (a_idx, b_idx, u_idx), self.indices):
            if given is not built and not (name == "u_idx" and given is None):
                raise ValueError(f"the plan was built from other index tensors than the {name} passed with it; "
                                 "build it with plan_routes() from the indices of this call")
        if _versions(self.indices) != self.index_versions:
            raise ValueError("an index tensor was changed in place after plan_routes() built this plan; "
                             "build a new plan from the changed indices")

    def segments(self) -> list[tuple[Tensor, int, int, int]]:
        """Host-side ``(rows, a, u, b)`` per segment (synchronises; used by the torch backend)."""
        count = int(self.num_segments)
        starts = self.segment_starts[: count + 1].tolist()
        routes = self.segment_routes[:count].tolist()
        return [
            (self.row_order[starts[s] : starts[s + 1]], *routes[s]) for s in range(count)
        ]


def check_index(name: str, index: Tensor, num_rows: int | None = None) -> None:
    """Raise ValueError unless ``index`` is a 1-D int32/int64 tensor (of ``num_rows`` entries when given)."""
    if not isinstance(index, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of bank indices, got {type(index).__name__}")
    if index.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must have dtype int32 or int64, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one bank index per row), got shape {tuple(index.shape)}")
    if num_rows is not None and index.shape[0] != num_rows:
        raise ValueError(f"{name} has {index.shape[0]} entries but the input has {num_rows} rows")


def _sort_key(index: Tensor, active: Tensor) -> Tensor:
    return torch.where(active, index.long(), torch.iinfo(torch.int64).max)


def build_plan_tensors(a_idx: Tensor, b_idx: Tensor, u_idx: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(row_order, segment_starts, segment_routes, num_segments)`` of :class:`RoutePlan`; static shapes, no sync."""
    num_rows = a_idx.shape[0]
    device = a_idx.device
    active = a_idx >= 0
    a_key = _sort_key(a_idx, active)
    u_key = _sort_key(u_idx, active) if u_idx is not None else torch.zeros_like(a_key)
    b_key = _sort_key(b_idx, active)
    # Lexicographic sort on (a, u, b) through three stable sorts, least significant key first.
    row_order = torch.arange(num_rows, device=device)
    for key in (b_key, u_key, a_key):
        order = torch.sort(key[row_order], stable=True).indices
        row_order = row_order[order]
    routes = torch.stack([a_key[row_order], u_key[row_order], b_key[row_order]], dim=1)
    sorted_active = active[row_order]
    is_start = sorted_active.clone()
    if num_rows > 1:
        is_start[1:] &= (routes[1:] != routes[:-1]).any(dim=1)
    num_active = sorted_active.sum()
    segment_of_start = torch.cumsum(is_start.long(), 0) - 1
    # Scatter each start into its segment slot; non-starts go to a dump slot at the end.
    target = torch.where(is_start, segment_of_start, num_rows + 1)
    starts = num_active.expand(num_rows + 2).clone()
    starts.scatter_(0, target, torch.arange(num_rows, device=device))
    segment_starts = starts[: num_rows + 1].contiguous()
    segment_routes = torch.full((num_rows + 1, 3), -1, dtype=torch.int64, device=device)
    segment_routes.index_copy_(0, torch.where(is_start, segment_of_start, num_rows), routes.where(is_start[:, None], -1))
    return row_order, segment_starts, segment_routes[:num_rows].contiguous(), is_start.sum()


def check_route_consistency(a_idx: Tensor, b_idx: Tensor, u_idx: Tensor | None) -> None:
    """Raise ValueError where a row is -1 in one index tensor but not in another, or below -1 (synchronises)."""
    for name, index in (("a_idx", a_idx), ("b_idx", b_idx), ("u_idx", u_idx)):
        if index is not None and index.numel() and int(index.min()) < -1:
            raise ValueError(f"{name} holds {int(index.min())}; bank indices are >= 0, or -1 for 'no adapter'")
    active = a_idx >= 0
    for name, index in (("b_idx", b_idx), ("u_idx", u_idx)):
        if index is not None and bool(((index >= 0) != active).any()):
            row = int(((index >= 0) != active).nonzero()[0])
            raise ValueError(
                f"row {row}: a_idx is {int(a_idx[row])} but {name} is {int(index[row])}; "
                "a row without adapter has -1 in every index tensor"
            )


def plan_routes(a_idx: Tensor, b_idx: Tensor | None = None, u_idx: Tensor | None = None) -> RoutePlan:
    """Group rows by route. ``a_idx``, ``b_idx``, ``u_idx``: (T,) int bank indices, -1 = no adapter.

    ``b_idx`` defaults to ``a_idx`` (one bank index per row, as in plain LoRA / MoLoRA). Validates the indices and
    records their bounds (one host synchronisation) so that later calls that reuse the plan need none.
    """
    b_idx = a_idx if b_idx is None else b_idx
    check_index("a_idx", a_idx)
    check_index("b_idx", b_idx, a_idx.shape[0])
    if u_idx is not None:
        check_index("u_idx", u_idx, a_idx.shape[0])
    for name, index in (("b_idx", b_idx), ("u_idx", u_idx)):
        if index is not None and index.device != a_idx.device:
            raise ValueError(f"{name} is on {index.device} but a_idx is on {a_idx.device}")
    check_route_consistency(a_idx, b_idx, u_idx)
    row_order, segment_starts, segment_routes, num_segments = build_plan_tensors(a_idx, b_idx, u_idx)
    indices = (a_idx, b_idx, u_idx)
    return RoutePlan(row_order, segment_starts, segment_routes, num_segments, _index_bounds(a_idx, b_idx, u_idx),
                     indices, _versions(indices))


def _versions(indices: tuple[Tensor | None, ...]) -> tuple[int, ...]:
    return tuple(-1 if t is None or t.is_inference() else t._version for t in indices)


def _index_bounds(a_idx: Tensor, b_idx: Tensor, u_idx: Tensor | None):
    active = a_idx >= 0
    if not bool(active.any()):
        return ((0, -1), (0, -1), (0, -1))
    u_values = u_idx[active] if u_idx is not None else a_idx.new_zeros(1)
    values = torch.stack(
        [a_idx[active].min(), a_idx[active].max(), b_idx[active].min(), b_idx[active].max(), u_values.min(), u_values.max()]
    ).tolist()
    return ((values[0], values[1]), (values[2], values[3]), (values[4], values[5]))
