"""Triton kernels of the routed LoRA operation (forward and backward) and their launchers.

Rows are grouped by route with a segment plan (:class:`SegmentPlan`: rows sorted by ``(a, u, b)``, segment starts,
the route of each segment; ``lora_route.plan_routes`` builds one); every launch below covers all adapters at once, so
the number of launches per call is fixed:

forward   1. ``_shrink_kernel``       z = A[a]·x per row tile, core zc = U[u]·z fused        grid (tiles,)
          2. ``_expand_kernel``       out[rows] += s·B[b]·zc per (row tile, d_out tile)       grid (tiles, d_out/BN)
backward  3. ``_grad_shrink_kernel``  g = B[b]^T·dy, h = s·g, k = U^T·h, zc, d_row_scale      grid (tiles,)
          4. ``_expand_kernel``       dx[rows] = A[a]^T·k per (row tile, d_in tile)          grid (tiles, d_in/BN)
          5-7. ``_bank_grad_kernel``  dA[a] = Σ k x^T, dB[b] = Σ s dy zc^T, dU[u] = Σ h z^T    grid (bank, cols/BN,
                                      row splits), + a fixed-order sum over splits when there are several

A *row tile* is up to ``BLOCK_M`` consecutive rows of one segment. The tile list is derived from the plan with a few
device ops (no host sync); its length is bounded by ``min(T, n_a·n_u·n_b) + cdiv(T, BLOCK_M)`` and programs past the
last real tile exit at once. The bank-gradient kernels are deterministic without atomics: one program owns one
(bank index, column tile) of the gradient and loops, in a fixed order, over every row routed to that bank index
(rows gathered through a stable sort of the plan's rows by that index), so no two programs write the same element;
unused bank entries come out as zeros. When the banks are too few to fill the device (plain LoRA: one adapter), each
bank's rows are cut into a fixed number of BLOCK_M-aligned splits whose fp32 partial sums are added by
``torch.sum`` over the split axis, again in a fixed order. Accumulation is fp32 throughout; rank-space
intermediates (zc, h, k) live in fp32 workspaces of (T, r). Every product takes its operands in the input dtype
(rank-space values are rounded to it first, as the torch backend's matmuls do), so fp16/bf16 products run on tensor
cores; fp32 inputs multiply in IEEE fp32.

Tile sizes are chosen for an H100: 64-row tiles (32 at rank 128), 64-wide reduction chunks over d_in / d_out,
128-wide output column tiles, the rank padded to a power of two >= 16 (the smallest ``tl.dot`` extent) and held whole
in one tile, which limits the rank to ``MAX_RANK``. ``tests/triton_cubins.py`` compiles every launch for sm_80 and
sm_90 without a GPU and reads registers, spills and shared memory from the cubins.
"""
from __future__ import annotations

import functools
import os
import weakref
from typing import NamedTuple

import torch
import triton
import triton.language as tl

# ------------------------------------------------------------------------------------------------------ constants
MAX_RANK = 128  # the rank is held whole in one register tile (needed to fuse the core U)
MIN_DOT_EXTENT = 16  # tl.dot needs every block extent >= 16
BLOCK_M_MAX = 64  # rows per row tile; half of it at rank 128, where 64 rows spill registers in the backward
BLOCK_K = 64  # reduction chunk over d_in (shrink) or d_out (grad shrink); 32 once the padded rank is 128
BLOCK_N = 128  # output columns per program (expand, dx, bank gradients)
NUM_WARPS = 4  # 8 once the padded rank reaches 128 (128 x 128 core tiles)
ROUTE_A, ROUTE_U, ROUTE_B = 0, 1, 2  # columns of SegmentPlan.segment_routes
MIN_ROWS_PER_SPLIT = 256  # bank gradients split a bank's rows only into chunks of at least this many rows
H100_SMS = 132


class SegmentPlan(NamedTuple):
    """Rows grouped by route, as the launchers read them (every tensor int64, on the rows' device).

    row_order:      (T,) row ids sorted by route ``(a, u, b)``; rows without adapter last.
    segment_starts: (T + 1,) segment ``s`` is ``row_order[segment_starts[s]:segment_starts[s + 1]]``; entries past the
                    last segment equal the number of rows with an adapter.
    segment_routes: (T, 3) ``(a, u, b)`` of segment ``s`` in row ``s``; -1 past the last segment.
    num_segments:   () the number of segments.
    """

    row_order: torch.Tensor
    segment_starts: torch.Tensor
    segment_routes: torch.Tensor
    num_segments: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.row_order.shape[0]


# ------------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    """acc + a·b with fp32 accumulation; ``UPCAST`` multiplies in fp32 (Triton's interpreter cannot multiply
    bfloat16 blocks: triton-lang/triton#11584)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _tile_rows(tile, tile_segment_ptr, tile_start_ptr, segment_starts_ptr, row_order_ptr, BLOCK_M: tl.constexpr):
    """Segment id (-1 past the last tile), row ids and row mask of one row tile."""
    seg = tl.load(tile_segment_ptr + tile)
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(segment_starts_ptr + tl.maximum(seg, 0) + 1)
    positions = start + tl.arange(0, BLOCK_M)
    row_mask = (positions < end) & (seg >= 0)
    rows = tl.load(row_order_ptr + positions, mask=row_mask, other=0)
    return seg, rows, row_mask


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, u_ptr, z_ptr, zc_ptr,
    row_order_ptr, segment_starts_ptr, segment_routes_ptr, tile_segment_ptr, tile_start_ptr,
    d_in, rank,
    HAS_U: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One row tile: z = x[rows]·A[a]^T (BLOCK_M, r) stored in x's dtype; zc = z·U[u]^T (or z) stored in fp32."""
    seg, rows, row_mask = _tile_rows(
        tl.program_id(0), tile_segment_ptr, tile_start_ptr, segment_starts_ptr, row_order_ptr, BLOCK_M
    )
    if seg < 0:
        return
    a = tl.load(segment_routes_ptr + seg * 3 + 0)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < d_in
        x_tile = tl.load(x_ptr + rows[:, None] * d_in + offs_k[None, :], mask=row_mask[:, None] & k_mask[None, :],
                         other=0.0)
        a_tile = tl.load(a_ptr + a * rank * d_in + offs_r[None, :] * d_in + offs_k[:, None],
                         mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        acc = _dot(x_tile, a_tile, acc, UPCAST)
    out_offs = rows[:, None] * rank + offs_r[None, :]
    out_mask = row_mask[:, None] & r_mask[None, :]
    tl.store(z_ptr + out_offs, acc.to(z_ptr.dtype.element_ty), mask=out_mask)
    if HAS_U:
        u = tl.load(segment_routes_ptr + seg * 3 + 1)
        # (j, q) tile of U[u]: zc[m, q] = sum_j z[m, j] U[q, j], from z as stored (the backward recomputes zc so)
        u_t = tl.load(u_ptr + u * rank * rank + offs_r[None, :] * rank + offs_r[:, None],
                      mask=r_mask[:, None] & r_mask[None, :], other=0.0)
        acc = _dot(acc.to(u_t.dtype), u_t, tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32), UPCAST)
    tl.store(zc_ptr + out_offs, acc, mask=out_mask)


@triton.jit
def _expand_kernel(
    in_ptr, w_ptr, out_ptr, row_scale_ptr, scale,
    row_order_ptr, segment_starts_ptr, segment_routes_ptr, tile_segment_ptr, tile_start_ptr,
    n_cols, rank, stride_w_bank, stride_w_col, stride_w_rank,
    ROUTE_COLUMN: tl.constexpr, HAS_ROW_SCALE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One (row tile, column tile): out[rows, n] += scale·row_scale[rows]·sum_q in[rows, q]·W[idx, n, q].

    ``in`` is an fp32 (T, r) workspace; ``W`` a bank addressed by strides (B for the forward expand, A^T for dx).
    """
    seg, rows, row_mask = _tile_rows(
        tl.program_id(0), tile_segment_ptr, tile_start_ptr, segment_starts_ptr, row_order_ptr, BLOCK_M
    )
    if seg < 0:
        return
    idx = tl.load(segment_routes_ptr + seg * 3 + ROUTE_COLUMN)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_cols
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    small = tl.load(in_ptr + rows[:, None] * rank + offs_r[None, :], mask=row_mask[:, None] & r_mask[None, :],
                    other=0.0)
    w_tile = tl.load(w_ptr + idx * stride_w_bank + offs_r[:, None] * stride_w_rank + offs_n[None, :] * stride_w_col,
                     mask=r_mask[:, None] & n_mask[None, :], other=0.0)
    acc = _dot(small.to(w_tile.dtype), w_tile, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), UPCAST) * scale
    if HAS_ROW_SCALE:
        acc = acc * tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    out_offs = rows[:, None] * n_cols + offs_n[None, :]
    out_mask = row_mask[:, None] & n_mask[None, :]
    base = tl.load(out_ptr + out_offs, mask=out_mask, other=0.0)
    tl.store(out_ptr + out_offs, (base.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _grad_shrink_kernel(
    dy_ptr, b_ptr, z_ptr, u_ptr, row_scale_ptr, scale,
    zc_ptr, h_ptr, k_ptr, d_row_scale_ptr,
    row_order_ptr, segment_starts_ptr, segment_routes_ptr, tile_segment_ptr, tile_start_ptr,
    d_out, rank,
    HAS_U: tl.constexpr, HAS_ROW_SCALE: tl.constexpr, STORE_ZC: tl.constexpr, STORE_H: tl.constexpr,
    STORE_K: tl.constexpr, STORE_D_ROW_SCALE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One row tile of the rank-space backward, with s = scale·row_scale[rows]:

    g = dy[rows]·B[b] (BLOCK_M, r); zc = z·U[u]^T; d_row_scale = scale·sum_q g·zc; h = s·g; k = h·U[u].
    zc, h, k go to fp32 (T, r) workspaces for the dx / dA / dB / dU launches.
    """
    seg, rows, row_mask = _tile_rows(
        tl.program_id(0), tile_segment_ptr, tile_start_ptr, segment_starts_ptr, row_order_ptr, BLOCK_M
    )
    if seg < 0:
        return
    b = tl.load(segment_routes_ptr + seg * 3 + 2)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    g = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, d_out, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < d_out
        dy_tile = tl.load(dy_ptr + rows[:, None] * d_out + offs_k[None, :],
                          mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b_tile = tl.load(b_ptr + b * d_out * rank + offs_k[:, None] * rank + offs_r[None, :],
                         mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        g = _dot(dy_tile, b_tile, g, UPCAST)
    rank_offs = rows[:, None] * rank + offs_r[None, :]
    rank_mask = row_mask[:, None] & r_mask[None, :]
    z = tl.load(z_ptr + rank_offs, mask=rank_mask, other=0.0)
    zc = z.to(tl.float32)
    if HAS_U:
        u = tl.load(segment_routes_ptr + seg * 3 + 1)
        u_t = tl.load(u_ptr + u * rank * rank + offs_r[None, :] * rank + offs_r[:, None],
                      mask=r_mask[:, None] & r_mask[None, :], other=0.0)
        zc = _dot(z, u_t, tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32), UPCAST)
    if STORE_ZC:
        tl.store(zc_ptr + rank_offs, zc, mask=rank_mask)
    row_scale = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
    if HAS_ROW_SCALE:
        row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    if STORE_D_ROW_SCALE:
        d_row_scale = tl.sum(g * zc, axis=1) * scale
        tl.store(d_row_scale_ptr + rows, d_row_scale.to(d_row_scale_ptr.dtype.element_ty), mask=row_mask)
    h = g * (row_scale * scale)[:, None]
    if STORE_H:
        tl.store(h_ptr + rank_offs, h, mask=rank_mask)
    if STORE_K:
        if HAS_U:
            u = tl.load(segment_routes_ptr + seg * 3 + 1)
            u_tile = tl.load(u_ptr + u * rank * rank + offs_r[:, None] * rank + offs_r[None, :],
                             mask=r_mask[:, None] & r_mask[None, :], other=0.0)
            h = _dot(h.to(u_tile.dtype), u_tile, tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32), UPCAST)
        tl.store(k_ptr + rank_offs, h, mask=rank_mask)


@triton.jit
def _bank_grad_kernel(
    small_ptr, big_ptr, out_ptr, row_scale_ptr, scale,
    bank_rows_ptr, bank_starts_ptr,
    n_cols, rank, num_splits, stride_out_split, stride_out_bank, stride_out_rank, stride_out_col,
    HAS_ROW_SCALE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One (bank index, column tile, row split): out[split, bank, q, n] = sum over the split's share of the bank's
    rows of s·small[row, q]·big[row, n].

    ``bank_rows[bank_starts[i]:bank_starts[i + 1]]`` are the rows routed to bank index ``i``; split ``j`` of
    ``num_splits`` takes the j-th BLOCK_M-aligned chunk of them. The loop has a fixed order, so the result is
    deterministic. ``small`` is an fp32 (T, r) workspace, ``big`` (T, n_cols).
    """
    bank = tl.program_id(0)
    split = tl.program_id(2)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_cols
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    lo = tl.load(bank_starts_ptr + bank)
    hi = tl.load(bank_starts_ptr + bank + 1)
    chunk = tl.cdiv(tl.cdiv(hi - lo, num_splits), BLOCK_M) * BLOCK_M
    start = lo + split * chunk
    stop = tl.minimum(hi, start + chunk)
    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    for p0 in range(start, stop, BLOCK_M):
        positions = p0 + tl.arange(0, BLOCK_M)
        row_mask = positions < stop
        rows = tl.load(bank_rows_ptr + positions, mask=row_mask, other=0)
        small = tl.load(small_ptr + rows[:, None] * rank + offs_r[None, :], mask=row_mask[:, None] & r_mask[None, :],
                        other=0.0) * scale
        if HAS_ROW_SCALE:
            small = small * tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
        big = tl.load(big_ptr + rows[:, None] * n_cols + offs_n[None, :], mask=row_mask[:, None] & n_mask[None, :],
                      other=0.0)
        acc = _dot(tl.trans(small.to(big.dtype)), big, acc, UPCAST)
    out_offs = (split * stride_out_split + bank * stride_out_bank + offs_r[:, None] * stride_out_rank
                + offs_n[None, :] * stride_out_col)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=r_mask[:, None] & n_mask[None, :])


# ------------------------------------------------------------------------------------------------------ launchers
def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ``triton.jit`` reads TRITON_INTERPRET when it decorates a kernel, i.e. when this module is imported: kernels
# imported without it cannot run on CPU tensors later in the process, whatever the variable says by then.
INTERPRETED_KERNELS = interpreting()


# Launch arithmetic on the host, once or more per launch, in plain integers: ``triton.cdiv`` and
# ``triton.next_power_of_2`` cost microseconds per host call in Triton versions that make them constexpr functions.
def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) of non-negative ``a`` and positive ``b``."""
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (0 for ``n`` <= 0, as ``triton.next_power_of_2``)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (an H100's 132 where no CUDA device is queried), read once per device."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H100_SMS


def _upcast_dots(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and interpreting()


def _block_sizes(num_rows: int, rank: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_K, BLOCK_R)``: row-tile height (smaller for decode-sized batches), reduction chunk and the
    padded rank."""
    block_r = max(MIN_DOT_EXTENT, _next_power_of_2(rank))
    block_m = min(BLOCK_M_MAX if block_r < 128 else BLOCK_M_MAX // 2,
                  max(MIN_DOT_EXTENT, _next_power_of_2(num_rows)))
    return block_m, BLOCK_K if block_r < 128 else BLOCK_K // 2, block_r


# Tile lists and bank row orders derived from a plan, kept while the plan's tensors live (one plan serves every layer
# of a model forward and its backward). Keyed by the plan's segment_starts tensor and the versions of its tensors
# (an in-place update re-derives; inference tensors carry no version); bypassed while a CUDA graph is being captured
# so that the graph records the derivation.
_PLAN_DERIVED: dict[int, dict] = {}


def _derived(plan: SegmentPlan, key: tuple, build):
    """``build()``, cached per plan under ``key``."""
    starts = plan.segment_starts
    if starts.is_cuda and torch.cuda.is_current_stream_capturing():
        return build()
    versions = tuple(-1 if t.is_inference() else t._version for t in plan)
    entry = _PLAN_DERIVED.get(id(starts))
    if entry is None or entry["starts"]() is not starts or entry["versions"] != versions \
            or entry["row_order"] is not plan.row_order:
        if entry is None or entry["starts"]() is not starts:
            weakref.finalize(starts, _PLAN_DERIVED.pop, id(starts), None)
        entry = {"starts": weakref.ref(starts), "versions": versions, "row_order": plan.row_order}
        _PLAN_DERIVED[id(starts)] = entry
    if key not in entry:
        entry[key] = build()
    return entry[key]


def _row_tiles(plan: SegmentPlan, block_m: int, num_routes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tile_segment, tile_start)``: segment id (-1 = no tile) and first sorted position of every row tile.

    Static length ``min(T, num_routes) + cdiv(T, block_m)``, an upper bound of sum_s cdiv(len_s, block_m).
    """
    num_rows = plan.num_rows
    starts = plan.segment_starts
    tiles_per_segment = (starts[1:] - starts[:-1] + block_m - 1) // block_m
    tiles_end = torch.cumsum(tiles_per_segment, 0)
    tile_ids = torch.arange(min(num_rows, num_routes) + _cdiv(num_rows, block_m), device=starts.device)
    segment = torch.searchsorted(tiles_end, tile_ids, right=True)
    clamped = segment.clamp(max=num_rows - 1)
    first_tile = tiles_end[clamped] - tiles_per_segment[clamped]
    tile_start = starts[clamped] + (tile_ids - first_tile) * block_m
    return torch.where(segment < num_rows, segment, -1), tile_start


def _bank_rows(plan: SegmentPlan, column: int, bank_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bank_rows, bank_starts)``: active rows stably sorted by their bank index in route ``column``, and the
    (bank_size + 1,) offsets where each bank index's rows begin. Device ops only."""
    num_rows = plan.num_rows
    positions = torch.arange(num_rows, device=plan.row_order.device)
    num_active = plan.segment_starts[num_rows]
    segment = (torch.searchsorted(plan.segment_starts, positions, right=True) - 1).clamp(0, num_rows - 1)
    key = torch.where(positions < num_active, plan.segment_routes[segment, column], bank_size)
    sorted_key, order = torch.sort(key, stable=True)
    bank_ids = torch.arange(bank_size + 1, device=key.device)
    return plan.row_order[order], torch.searchsorted(sorted_key, bank_ids)


def _num_warps(block_r: int) -> int:
    return NUM_WARPS * 2 if block_r >= 128 else NUM_WARPS


def _check_operands(x, A, B, U, row_scale, **row_major) -> None:
    """Raise ValueError unless the operands have the shapes of the operation and the kernels' memory layout
    (contiguous, one device); ``row_major`` names further (T, ...) tensors addressed as contiguous rows."""
    num_rows, d_in = x.shape
    rank = A.shape[1]
    if rank > MAX_RANK:
        raise ValueError(f"the Triton kernels hold the rank in one tile and take r <= {MAX_RANK}, got r={rank}; "
                         "use backend='torch' or 'cuda' for larger ranks")
    if A.shape[2] != d_in or B.shape[2] != rank or (U is not None and U.shape[1:] != (rank, rank)):
        raise ValueError(f"bank shapes disagree: x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"U {tuple(U.shape) if U is not None else None}")
    named = {"x": x, "A": A, "B": B, "U": U, "row_scale": row_scale, **row_major}
    for name, tensor in named.items():
        if tensor is None:
            continue
        if tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
        if name in row_major and (tensor.shape[0] != num_rows or not tensor.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous ({num_rows}, ...) tensor, got shape {tuple(tensor.shape)}")
        if name in ("x", "A", "B", "U") and not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous for the Triton kernels")


def _num_routes(A: torch.Tensor, B: torch.Tensor, U: torch.Tensor | None) -> int:
    return A.shape[0] * B.shape[0] * (U.shape[0] if U is not None else 1)


def routed_forward(x, A, B, U, row_scale, scale, plan, out):
    """Accumulate the adapter delta into ``out`` (T, d_out) in place; return z = A[a]·x (T, r) in x's dtype.

    x: (T, d_in); A: (n_a, r, d_in); B: (n_b, d_out, r); U: (n_u, r, r) or None; row_scale: (T,) or None;
    scale: float; plan: the rows' :class:`SegmentPlan` (or its four tensors in that order). Rows without adapter
    keep ``out`` bit for bit and get z = 0. Two launches.
    """
    plan = SegmentPlan(*plan)
    _check_operands(x, A, B, U, row_scale, out=out)
    num_rows, d_in = x.shape
    rank, d_out = A.shape[1], B.shape[1]
    z = torch.zeros((num_rows, rank), dtype=x.dtype, device=x.device)
    if num_rows == 0 or rank == 0:
        return z
    block_m, block_k, block_r = _block_sizes(num_rows, rank)
    num_routes = _num_routes(A, B, U)
    tile_segment, tile_start = _derived(plan, ("tiles", block_m, num_routes),
                                        lambda: _row_tiles(plan, block_m, num_routes))
    plan_args = (plan.row_order, plan.segment_starts, plan.segment_routes, tile_segment, tile_start)
    zc = torch.empty((num_rows, rank), dtype=torch.float32, device=x.device)
    num_tiles = tile_segment.shape[0]
    _shrink_kernel[(num_tiles,)](
        x, A, U if U is not None else A, z, zc, *plan_args, d_in, rank,
        HAS_U=U is not None, UPCAST=_upcast_dots(x.dtype),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_R=block_r, num_warps=_num_warps(block_r),
    )
    if d_out > 0:
        row_scale = row_scale.contiguous() if row_scale is not None else None
        _expand_kernel[(num_tiles, _cdiv(d_out, BLOCK_N))](
            zc, B, out, row_scale if row_scale is not None else zc, float(scale), *plan_args,
            d_out, rank, B.stride(0), B.stride(1), B.stride(2),
            ROUTE_COLUMN=ROUTE_B, HAS_ROW_SCALE=row_scale is not None, UPCAST=_upcast_dots(x.dtype),
            BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_R=block_r, num_warps=_num_warps(block_r),
        )
    return z


def _target_programs(device: torch.device) -> int:
    """Programs that fill the device twice over (H100's 132 SMs where no CUDA device is queried)."""
    return 2 * _multiprocessors(device)


def _row_splits(num_rows: int, programs: int, device: torch.device) -> int:
    """How many row splits the bank-gradient launch uses so that few banks still fill the device."""
    target = _target_programs(device)
    if programs >= target:
        return 1
    return max(1, min(_cdiv(num_rows, MIN_ROWS_PER_SPLIT), _cdiv(target, programs)))


def _bank_grad(small, big, row_scale, scale, plan, column, bank_shape, dtype, transpose_out, block_r):
    """Launch ``_bank_grad_kernel`` for one bank; ``transpose_out`` stores (bank, n_cols, r) instead of
    (bank, r, n_cols). Returns the full bank gradient (zeros for bank entries no row uses). With more than one row
    split the partial sums go to an fp32 (splits, *bank_shape) workspace summed over splits in a fixed order."""
    bank_size = bank_shape[0]
    n_cols = big.shape[1]
    if bank_size * n_cols * small.shape[1] == 0:
        return torch.zeros(bank_shape, dtype=dtype, device=big.device)
    bank_rows, bank_starts = _derived(plan, ("bank", column, bank_size), lambda: _bank_rows(plan, column, bank_size))
    block_m = _block_sizes(plan.num_rows, 1)[0]
    block_n = min(BLOCK_N, max(MIN_DOT_EXTENT, _next_power_of_2(n_cols)))
    grid = (bank_size, _cdiv(n_cols, block_n))
    splits = _row_splits(plan.num_rows, grid[0] * grid[1], big.device)
    if splits == 1:
        out = torch.empty(bank_shape, dtype=dtype, device=big.device).unsqueeze(0)
    else:
        out = torch.empty((splits, *bank_shape), dtype=torch.float32, device=big.device)
    strides = (out.stride(0), out.stride(1), out.stride(3), out.stride(2)) if transpose_out else out.stride()
    _bank_grad_kernel[(*grid, splits)](
        small, big, out, row_scale if row_scale is not None else small, float(scale), bank_rows, bank_starts,
        n_cols, small.shape[1], splits, *strides,
        HAS_ROW_SCALE=row_scale is not None, UPCAST=_upcast_dots(big.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r, num_warps=_num_warps(block_r),
    )
    return out[0] if splits == 1 else out.sum(0).to(dtype)


def routed_backward(grad_out, x, z, A, B, U, row_scale, scale, plan, needs):
    """``(dx, dA, dB, dU, d_row_scale)`` of :func:`routed_forward`'s delta; None where ``needs`` (5 bools) says no.

    grad_out: (T, d_out); z: (T, r) from the forward; plan as in :func:`routed_forward`. Bank gradients have the full
    bank shapes; dx is zero on rows without adapter. Deterministic (no atomics): at most five launches.
    """
    plan = SegmentPlan(*plan)
    need_dx, need_dA, need_dB, need_dU, need_ds = (bool(n) for n in needs)
    need_dU = need_dU and U is not None
    need_ds = need_ds and row_scale is not None
    _check_operands(x, A, B, U, row_scale, grad_out=grad_out, z=z)
    num_rows, d_in = x.shape
    rank, d_out = A.shape[1], B.shape[1]
    dx = torch.zeros_like(x) if need_dx else None
    d_row_scale = torch.zeros((num_rows,), dtype=row_scale.dtype, device=x.device) if need_ds else None
    if num_rows == 0 or rank == 0 or not (need_dx or need_dA or need_dB or need_dU or need_ds):
        return (dx, torch.zeros_like(A) if need_dA else None, torch.zeros_like(B) if need_dB else None,
                torch.zeros_like(U) if need_dU else None, d_row_scale)
    row_scale = row_scale.contiguous() if row_scale is not None else None
    block_m, block_k, block_r = _block_sizes(num_rows, rank)
    num_routes = _num_routes(A, B, U)
    tile_segment, tile_start = _derived(plan, ("tiles", block_m, num_routes),
                                        lambda: _row_tiles(plan, block_m, num_routes))
    plan_args = (plan.row_order, plan.segment_starts, plan.segment_routes, tile_segment, tile_start)
    num_tiles = tile_segment.shape[0]
    workspace = torch.empty((3, num_rows, rank), dtype=torch.float32, device=x.device)
    zc, h, k = workspace[0], workspace[1], workspace[2]
    _grad_shrink_kernel[(num_tiles,)](
        grad_out, B, z, U if U is not None else B, row_scale if row_scale is not None else zc, float(scale),
        zc, h, k, d_row_scale if d_row_scale is not None else zc, *plan_args, d_out, rank,
        HAS_U=U is not None, HAS_ROW_SCALE=row_scale is not None, STORE_ZC=need_dB, STORE_H=need_dU,
        STORE_K=need_dx or need_dA, STORE_D_ROW_SCALE=need_ds, UPCAST=_upcast_dots(x.dtype),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_R=block_r, num_warps=_num_warps(block_r),
    )
    if need_dx and d_in > 0:
        _expand_kernel[(num_tiles, _cdiv(d_in, BLOCK_N))](
            k, A, dx, zc, 1.0, *plan_args, d_in, rank, A.stride(0), A.stride(2), A.stride(1),
            ROUTE_COLUMN=ROUTE_A, HAS_ROW_SCALE=False, UPCAST=_upcast_dots(x.dtype),
            BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_R=block_r, num_warps=_num_warps(block_r),
        )
    dA = _bank_grad(k, x, None, 1.0, plan, ROUTE_A, A.shape, A.dtype, False, block_r) if need_dA else None
    dB = (_bank_grad(zc, grad_out, row_scale, scale, plan, ROUTE_B, B.shape, B.dtype, True, block_r)
          if need_dB else None)
    dU = _bank_grad(h, z, None, 1.0, plan, ROUTE_U, U.shape, U.dtype, False, block_r) if need_dU else None
    return dx, dA, dB, dU, d_row_scale
