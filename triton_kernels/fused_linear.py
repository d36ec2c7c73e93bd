"""The frozen linear layer and its routed LoRA adapters in one GEMM: the ``triton_fused`` backend.

The unfused layer (``F.linear`` + :func:`.routed_lora.routed_forward`) writes the base output, then re-reads and
re-writes all of it to add the adapter delta. Here the delta is added in the epilogue of the base GEMM, before the
one store of each output tile:

forward   1. ``_shrink_kernel`` (routed_lora)       z = A[a]·x, zc = U[u]·z (fp32)              grid (row tiles,)
          2. ``_fused_linear_kernel``               out = x·W0^T (+ bias) + s·zc·B[b]^T          grid (T/BM · d_out/BN,)
backward  3. ``_grad_shrink_kernel`` (routed_lora)  k = U^T·s·B^T·dy, zc, h, d_row_scale (fp32)
          4. ``_fused_linear_kernel``               dx = dy·W0 + k·A[a]                          grid (T/BM · d_in/BN,)
          5-7. ``_bank_grad_kernel`` (routed_lora)  dA, dB, dU (deterministic, see routed_lora)

The GEMM tiles rows in their natural order, not the plan's sorted order: a sequence's tokens share a route, so a
row tile mostly holds one or two routes. The adapter term of a tile is summed over the *runs* that intersect it
(maximal spans of consecutive rows with the same bank index): each run loads its bank tile (r × BLOCK_N, in
RANK_CHUNK-wide slices) once and adds ``tl.dot(small, bank_tile)`` into the GEMM's fp32 accumulator, with the rows
outside the run masked to zero in ``small``. Runs are derived from the per-row bank index with a few device ops (no
host sync, static shapes) and cached with the plan (:func:`_natural_runs`). Runs of index -1 (rows without adapter)
add nothing, so those rows get the base GEMM alone. The run loop has no branch, so on decode tiles (up to a run per
row) Triton software-pipelines its loads (``TileConfig.run_stages``).

Numerics follow routed_lora: operands in the input dtype (fp16/bf16 on tensor cores, fp32 in IEEE fp32 through
``_dot``), fp32 accumulation, rank-space values rounded to the input dtype before their product. The per-row scale
``scale·row_scale`` multiplies the fp32 zc before that rounding (one rounding of ``s·zc`` instead of one of ``zc``
followed by an fp32 product: the same accuracy, and the delta then accumulates straight into the GEMM's accumulator
without a second BLOCK_M × BLOCK_N fp32 tile, 64 more registers per thread at 128 × 128 tiles where sm_80 code is at
~190 without it). The delta is added to the fp32 base before the single rounding to the output dtype (the unfused
path rounds the base first).

Tile sizes come from :data:`FUSED_CONFIGS`, chosen for an H100 and kept within sm_80's 99 KiB of shared memory per
block so the same code runs on Ampere; ``tests/kernels/fused_cubins.py`` compiles every launch for sm_80 / sm_90.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import routed_lora
from .routed_lora import (
    MAX_RANK,
    MIN_DOT_EXTENT,
    ROUTE_A,
    ROUTE_B,
    SegmentPlan,
    _cdiv,
    _check_operands,
    _derived,
    _dot,
    _multiprocessors,
    _next_power_of_2,
    _num_routes,
    _num_warps,
    _row_tiles,
    _upcast_dots,
    interpreting,
)

__all__ = ["fused_linear_forward", "fused_linear_backward", "fused_unsupported_reason", "fused_config",
           "FUSED_CONFIGS", "TileConfig", "DECODE_ROWS"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GROUP_M = 8  # row tiles per group of the program order: 8 row tiles sweep the same W columns while they sit in L2
DECODE_ROWS = 64  # batches of up to this many rows take the decode configs
RANK_CHUNK = 16  # the epilogue multiplies the rank in slices this wide (32 spills registers at rank 128 on sm_80)


class TileConfig(NamedTuple):
    """Tiles and launch options of one ``_fused_linear_kernel`` launch."""

    block_m: int  # rows per tile (decode configs: the cap; the launcher takes next_power_of_2(T), at least 16)
    block_n: int  # output columns per tile
    block_k: int  # reduction chunk per pipeline stage
    num_warps: int
    num_stages: int  # software-pipeline depth of the reduction loop (shared memory = stages · (BM + BN) · BK · bytes)
    run_stages: int  # software-pipeline depth of the epilogue's loop over runs (1: not pipelined)


# (row class, operand class) -> tiles. The rank does not enter: the epilogue multiplies it in RANK_CHUNK-wide slices,
# so its live tiles are (BM × 32) and (32 × BN) at any rank up to MAX_RANK. The reduction pipeline takes at most
# 96 KiB of shared memory (sm_80 allows 99 KiB per block, sm_90 227 KiB); every fp16/bf16 launch compiles without
# register spills for sm_80 and sm_90 (tests/kernels/fused_cubins.py).
FUSED_CONFIGS: dict[tuple[str, str], TileConfig] = {
    # Decode: the GEMM streams W0 once (memory bound) and the few rows fit one row tile (BM = next_power_of_2(T),
    # 16..64). 64-wide column tiles give d_out / 64 programs; the launcher halves BN to 32 when that leaves SMs idle
    # (d_out = 4096: 128 programs for 132 SMs). BK = 64 with 4 stages keeps 4 · 64 · 64 · 2 B = 32 KiB of W0 in
    # flight per program (<= 64 KiB of shared memory with the x tiles at BM = 64).
    # A decode tile can hold a run per row (every sequence its own adapter): the loop over runs is pipelined 3 deep
    # so that the bank tiles of the next runs load while the current one multiplies.
    ("decode", "half"): TileConfig(64, 64, 64, 4, 4, 3),
    # Prefill / training: 128 × 128 tiles (arithmetic intensity 64 FLOP/B of operands loaded) with 8 warps: 64 fp32
    # accumulator registers per thread, two m64 warpgroups of wgmma on sm_90. BK = 64 is one 128-byte swizzle row of
    # bf16; 3 stages · (128 + 128) · 64 · 2 B = 96 KiB of shared memory, the deepest pipeline within sm_80's 99 KiB.
    # A prefill tile holds one or two runs (sequences of many tokens): the run loop is not pipelined, which would
    # buffer a 128 × r fp32 zc tile per stage in shared memory.
    ("large", "half"): TileConfig(128, 128, 64, 8, 3, 1),
    # fp32 multiplies on FMA units in IEEE fp32 (the reference-precision path, not the fast one): operands go through
    # registers, so smaller tiles, and 8 warps on the 64 × 64 tile (at most ~200 registers per thread on sm_80).
    ("decode", "fp32"): TileConfig(32, 64, 32, 4, 2, 2),
    ("large", "fp32"): TileConfig(64, 64, 32, 8, 2, 1),
}


# ------------------------------------------------------------------------------------------------------- kernel
@triton.jit
def _fused_linear_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    small_ptr, bank_ptr, row_scale_ptr, scale, z_ptr,
    row_bank_ptr, run_starts_ptr, run_bank_ptr, tile_first_run_ptr, tile_last_run_ptr,
    num_rows, n_cols, d_red, rank,
    stride_w_red, stride_w_col, stride_bank, stride_bank_col, stride_bank_rank,
    HAS_BIAS: tl.constexpr, HAS_ADAPTER: tl.constexpr, HAS_ROW_SCALE: tl.constexpr, ZERO_Z_ROWS: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr, RANK_CHUNK: tl.constexpr, RUN_STAGES: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One (row tile, column tile) of out = x·W (+ bias) + s·small·bank[idx] over rows in natural order.

    x: (T, d_red) contiguous; W addressed as (d_red, n_cols) by strides (W0^T forward, W0 for dx); out (T, n_cols);
    small: fp32 (T, r) workspace (zc forward, k for dx); bank addressed as (n, r, n_cols) by strides (B^T forward,
    A for dx); s = scale·row_scale[row]. row_bank (T,): each row's bank index (-1: no adapter); the runs of equal
    consecutive row_bank: run_starts (T + 1,; padded with T), run_bank (T,); tile_first_run / tile_last_run
    (row tiles,): the first and last run each row tile intersects (see :func:`_natural_runs`).
    ZERO_Z_ROWS: column-tile-0 programs write zeros to z (T, r) on rows without adapter (the shrink skips them).
    """
    # Grouped program order: GROUP_M row tiles run over the same column tiles together (W0 tiles reused from L2).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(num_rows, BLOCK_M)
    num_pid_n = tl.cdiv(n_cols, BLOCK_N)
    programs_per_group = GROUP_M * num_pid_n
    first_m = (pid // programs_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % programs_per_group) % group_rows
    pid_n = (pid % programs_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < num_rows
    row_offs = offs_m.to(tl.int64)  # T·n_cols may pass 2^31
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_cols
    x_rows = x_ptr + row_offs[:, None] * d_red
    w_cols = w_ptr + offs_n[None, :] * stride_w_col

    # Base GEMM: fp32 accumulator over BLOCK_K chunks of the reduction.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d_red, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < d_red
        x_tile = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w_tile = tl.load(w_cols + offs_k[:, None] * stride_w_red, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = _dot(x_tile, w_tile, acc, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]

    if HAS_ADAPTER:
        offs_rc = tl.arange(0, RANK_CHUNK)
        if ZERO_Z_ROWS:
            if pid_n == 0:  # z of rows without adapter (the shrink writes only the others)
                idle = m_mask & (tl.load(row_bank_ptr + offs_m, mask=m_mask, other=0) < 0)
                for r0 in tl.static_range(0, BLOCK_R, RANK_CHUNK):
                    offs_r = r0 + offs_rc
                    tl.store(z_ptr + row_offs[:, None] * rank + offs_r[None, :],
                             tl.zeros((BLOCK_M, RANK_CHUNK), dtype=z_ptr.dtype.element_ty),
                             mask=idle[:, None] & (offs_r < rank)[None, :])
        # The runs that intersect the tile, in row order. The loop body has no branch and no dependence on the
        # previous run but the accumulator, so the compiler can pipeline the run loads; a run of rows without adapter
        # (bank -1) masks everything to zero and adds nothing.
        for run in tl.range(tl.load(tile_first_run_ptr + pid_m), tl.load(tile_last_run_ptr + pid_m) + 1,
                            num_stages=RUN_STAGES):
            bank = tl.load(run_bank_ptr + run)
            in_run = (offs_m >= tl.load(run_starts_ptr + run)) & (offs_m < tl.load(run_starts_ptr + run + 1)) \
                & (bank >= 0)
            run_scale = tl.full((BLOCK_M,), scale, dtype=tl.float32)
            if HAS_ROW_SCALE:
                run_scale = run_scale * tl.load(row_scale_ptr + offs_m, mask=in_run, other=0.0).to(tl.float32)
            bank_run = bank_ptr + tl.maximum(bank, 0) * stride_bank
            # The rank in RANK_CHUNK-wide slices (small live tiles at rank 128): s·small on the run's rows (zeros
            # elsewhere), scaled in fp32 and rounded once to the operand dtype, times the bank's slice.
            for r0 in tl.static_range(0, BLOCK_R, RANK_CHUNK):
                offs_r = r0 + offs_rc
                r_mask = offs_r < rank
                small = tl.load(small_ptr + row_offs[:, None] * rank + offs_r[None, :],
                                mask=in_run[:, None] & r_mask[None, :], other=0.0)
                bank_tile = tl.load(bank_run + offs_r[:, None] * stride_bank_rank + offs_n[None, :] * stride_bank_col,
                                    mask=(r_mask & (bank >= 0))[:, None] & n_mask[None, :], other=0.0)
                acc = _dot((small * run_scale[:, None]).to(bank_tile.dtype), bank_tile, acc, UPCAST)

    tl.store(out_ptr + row_offs[:, None] * n_cols + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


# ----------------------------------------------------------------------------------------------------- launchers
def fused_config(num_rows: int, dtype: torch.dtype, n_cols: int, device: torch.device) -> TileConfig:
    """The :data:`FUSED_CONFIGS` entry of a launch, with decode tiles fitted to the batch: BLOCK_M =
    next_power_of_2(T) (at least 16, at most the entry's), BLOCK_N halved to 32 while the grid has fewer programs
    than the device has SMs (a decode GEMM streams W0 and needs every SM loading)."""
    rows = "decode" if num_rows <= DECODE_ROWS else "large"
    config = FUSED_CONFIGS[(rows, "fp32" if dtype == torch.float32 else "half")]
    if rows == "decode":
        block_m = min(config.block_m, max(MIN_DOT_EXTENT, _next_power_of_2(num_rows)))
        block_n = config.block_n
        if _cdiv(n_cols, block_n) < _multiprocessors(device) and block_n > 32:
            block_n = 32
        config = config._replace(block_m=block_m, block_n=block_n)
    return config


def _natural_runs(index: torch.Tensor, block_m: int) -> tuple[torch.Tensor, ...]:
    """``(row_bank, run_starts, run_bank, tile_first_run, tile_last_run)``: the runs of equal consecutive entries of
    ``index`` (T,) and the runs each row tile of ``block_m`` rows intersects. Device ops only, static shapes.

    row_bank (T,): ``index`` as int64; run_starts (T + 1,): first row of each run, T past the last run; run_bank
    (T,): each run's index (-1 past the last run); tile_first_run / tile_last_run (cdiv(T, block_m),): the runs
    holding each row tile's first and last row.
    """
    num_rows = index.shape[0]
    device = index.device
    row_bank = index.long().contiguous()
    is_start = torch.ones(num_rows, dtype=torch.bool, device=device)
    is_start[1:] = row_bank[1:] != row_bank[:-1]
    run_of_row = torch.cumsum(is_start, 0) - 1
    slot = torch.where(is_start, run_of_row, num_rows + 1)  # rows inside a run go to a dump slot
    run_starts = torch.full((num_rows + 2,), num_rows, dtype=torch.int64, device=device)
    run_starts.scatter_(0, slot, torch.arange(num_rows, device=device))
    run_bank = torch.full((num_rows + 2,), -1, dtype=torch.int64, device=device)
    run_bank.scatter_(0, slot, row_bank)
    tile_last_row = torch.arange(block_m - 1, num_rows + block_m - 1, block_m, device=device).clamp(max=num_rows - 1)
    return (row_bank, run_starts[: num_rows + 1], run_bank[:num_rows], run_of_row[::block_m].contiguous(),
            run_of_row[tile_last_row])


def _runs(plan: SegmentPlan, column: int, index: torch.Tensor, block_m: int):
    """:func:`_natural_runs` of ``index`` (the plan's ``column`` in natural row order), cached with the plan."""
    return _derived(plan, ("runs", column, block_m), lambda: _natural_runs(index, block_m))


def _operand_reason(x: torch.Tensor, weight: torch.Tensor, rank: int | None) -> str | None:
    """Why the operands' dtypes, devices or rank do not fit the fused kernels (whatever the device); None if they do."""
    if x.dtype not in KERNEL_DTYPES:
        return f"the fused Triton kernels take fp32/fp16/bf16 inputs, got {x.dtype}"
    if weight.dtype != x.dtype:
        return f"the fused Triton kernels need the weight in x's dtype {x.dtype}, got {weight.dtype}"
    if weight.device != x.device:
        return f"the weight is on {weight.device} but x is on {x.device}"
    if rank is not None and rank > MAX_RANK:
        return f"the fused Triton kernels take ranks up to {MAX_RANK}, got r={rank}"
    return None


def fused_unsupported_reason(x: torch.Tensor, weight: torch.Tensor, rank: int | None = None) -> str | None:
    """Why the fused kernels cannot serve a layer on ``x`` (T, d_in) with ``weight`` (d_out, d_in) and adapters of
    rank ``rank``, in one line; None when they can."""
    reason = _operand_reason(x, weight, rank)
    if reason is not None or x.device.type == "cuda" or (x.device.type == "cpu" and interpreting()):
        return reason
    return f"the fused Triton kernels need a CUDA tensor (CPU only under TRITON_INTERPRET=1), got {x.device}"


def _check_layer(x, weight, bias, A, B, U, row_scale, index_name, index, **row_major) -> None:
    """Raise ValueError (one line naming the problem) unless the layer's operands fit the fused kernels."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (T, d_in), got shape {tuple(x.shape)}")
    if A.dim() != 3 or B.dim() != 3 or (U is not None and U.dim() != 3):
        raise ValueError("A, B and U must be 3-D banks (n, r, d_in), (n, d_out, r), (n, r, r)")
    reason = _operand_reason(x, weight, A.shape[1])
    if reason is not None:
        raise ValueError(reason)
    if weight.dim() != 2 or weight.shape != (B.shape[1], x.shape[1]):
        raise ValueError(f"weight must be (d_out, d_in) = ({B.shape[1]}, {x.shape[1]}), got {tuple(weight.shape)}")
    if bias is not None and (bias.shape != (B.shape[1],) or bias.dtype != x.dtype or bias.device != x.device):
        raise ValueError(f"bias must be a ({B.shape[1]},) {x.dtype} tensor on {x.device}, got "
                         f"{tuple(bias.shape)} {bias.dtype} on {bias.device}")
    for name, bank in (("A", A), ("B", B), ("U", U)):
        if bank is not None and bank.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {bank.dtype}")
    if index.dtype not in (torch.int32, torch.int64) or index.shape != (x.shape[0],) or index.device != x.device:
        raise ValueError(f"{index_name} must be a ({x.shape[0]},) int32/int64 tensor on {x.device}, got "
                         f"{tuple(index.shape)} {index.dtype} on {index.device}")
    _check_operands(x, A, B, U, row_scale, **row_major)


def _launch_fused(x, weight, weight_strides, bias, out, small, bank, bank_strides, row_scale, scale, z, runs, rank,
                  config) -> None:
    """``out`` (T, n_cols) = x (T, d_red)·W (+ bias) + s·small·bank[idx] in one ``_fused_linear_kernel`` launch.

    W is ``weight`` read with ``weight_strides`` (along d_red, along n_cols); the bank is read with ``bank_strides``
    (bank, n_cols, rank); ``small`` None launches the base GEMM alone; ``z`` (forward only) gets its zero rows.
    """
    num_rows, d_red = x.shape
    n_cols = out.shape[1]
    if num_rows == 0 or n_cols == 0:
        return
    grid = (_cdiv(num_rows, config.block_m) * _cdiv(n_cols, config.block_n),)
    block_r = max(MIN_DOT_EXTENT, _next_power_of_2(rank))
    placeholder = out  # pointer argument of an operand the constexprs switch off
    _fused_linear_kernel[grid](
        x, weight, bias if bias is not None else placeholder, out,
        small if small is not None else placeholder, bank, row_scale if row_scale is not None else placeholder,
        float(scale), z if z is not None else placeholder, *runs,
        num_rows, n_cols, d_red, rank, *weight_strides, *bank_strides,
        HAS_BIAS=bias is not None, HAS_ADAPTER=small is not None, HAS_ROW_SCALE=row_scale is not None,
        ZERO_Z_ROWS=z is not None, UPCAST=_upcast_dots(x.dtype),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, BLOCK_R=block_r,
        RANK_CHUNK=min(RANK_CHUNK, block_r), RUN_STAGES=config.run_stages, GROUP_M=GROUP_M,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def _row_plan(plan: SegmentPlan, num_rows: int, rank: int, num_routes: int):
    """Row tiles of the plan for the rank-space kernels of routed_lora: ``(block_m, block_k, block_r, plan_args)``."""
    block_m, block_k, block_r = routed_lora._block_sizes(num_rows, rank)
    tile_segment, tile_start = _derived(plan, ("tiles", block_m, num_routes),
                                        lambda: _row_tiles(plan, block_m, num_routes))
    return block_m, block_k, block_r, (plan.row_order, plan.segment_starts, plan.segment_routes, tile_segment,
                                       tile_start)


def fused_linear_forward(x, weight, bias, A, B, U, row_scale, scale, plan, b_idx):
    """``(out, z)`` of the layer ``out = x·W0^T (+ bias) + s·B[b]·U[u]·A[a]·x`` with s = scale·row_scale.

    x: (T, d_in) contiguous; weight: (d_out, d_in) (any strides); bias: (d_out,) or None; A: (n_a, r, d_in);
    B: (n_b, d_out, r); U: (n_u, r, r) or None; row_scale: (T,) or None; scale: float; plan: the rows'
    :class:`SegmentPlan` (or its four tensors); b_idx: (T,) the b index of each row (-1: no adapter), the plan's.
    out: (T, d_out) in x's dtype, F.linear alone on rows without adapter; z = A[a]·x (T, r) in x's dtype, zero on
    rows without adapter. Two launches (shrink, fused GEMM).
    """
    plan = SegmentPlan(*plan)
    _check_layer(x, weight, bias, A, B, U, row_scale, "b_idx", b_idx)
    num_rows, d_in = x.shape
    rank, d_out = A.shape[1], weight.shape[0]
    out = torch.empty((num_rows, d_out), dtype=x.dtype, device=x.device)
    # The fused GEMM zeroes z on rows without adapter; without output columns it does not run.
    z = (torch.zeros if d_out == 0 else torch.empty)((num_rows, rank), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out, z
    has_adapter = rank > 0
    row_scale = row_scale.contiguous() if row_scale is not None else None
    bias = bias.contiguous() if bias is not None else None
    zc = torch.empty((num_rows, rank), dtype=torch.float32, device=x.device) if has_adapter else None
    if has_adapter:
        block_m, block_k, block_r, plan_args = _row_plan(plan, num_rows, rank, _num_routes(A, B, U))
        routed_lora._shrink_kernel[(plan_args[3].shape[0],)](
            x, A, U if U is not None else A, z, zc, *plan_args, d_in, rank,
            HAS_U=U is not None, UPCAST=_upcast_dots(x.dtype),
            BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_R=block_r, num_warps=_num_warps(block_r),
        )
    config = fused_config(num_rows, x.dtype, d_out, x.device)
    # out = x·W0^T + s·zc·B[b]^T: W0 (d_out, d_in) read along d_in by stride(1), B[b] (d_out, r) read as (r, d_out).
    _launch_fused(x, weight, (weight.stride(1), weight.stride(0)), bias, out, zc, B,
                  (B.stride(0), B.stride(1), B.stride(2)), row_scale, scale, z if has_adapter else None,
                  _runs(plan, ROUTE_B, b_idx, config.block_m), rank, config)
    return out, z


def fused_linear_backward(grad_out, x, z, weight, A, B, U, row_scale, scale, plan, a_idx, needs):
    """``(dx, dA, dB, dU, d_row_scale)`` of :func:`fused_linear_forward`; None where ``needs`` (5 bools) says no.

    grad_out: (T, d_out) contiguous; z: (T, r) from the forward; a_idx: (T,) the a index of each row (-1: no
    adapter), the plan's. dx = dy·W0 + A[a]^T·U^T·s·B[b]^T·dy is the layer's full input gradient (the base term
    too: dy·W0 alone on rows without adapter); bank gradients have the full bank shapes and are deterministic;
    the frozen weight and bias get no gradient. Launches: grad shrink, fused dx GEMM, up to three bank gradients.
    """
    plan = SegmentPlan(*plan)
    need_dx, need_dA, need_dB, need_dU, need_ds = (bool(n) for n in needs)
    need_dU = need_dU and U is not None
    need_ds = need_ds and row_scale is not None
    _check_layer(x, weight, None, A, B, U, row_scale, "a_idx", a_idx, grad_out=grad_out, z=z)
    num_rows, d_in = x.shape
    rank, d_out = A.shape[1], weight.shape[0]
    if not (need_dx or need_dA or need_dB or need_dU or need_ds):
        return None, None, None, None, None
    dx = torch.empty_like(x) if need_dx else None
    d_row_scale = torch.zeros((num_rows,), dtype=row_scale.dtype, device=x.device) if need_ds else None
    if num_rows == 0 or rank == 0:  # no adapter term: dx = dy·W0, zero bank gradients
        if need_dx:
            config = fused_config(num_rows, x.dtype, d_in, x.device)
            _launch_fused(grad_out, weight, (weight.stride(0), weight.stride(1)), None, dx, None, A,
                          (A.stride(0), A.stride(2), A.stride(1)), None, 1.0, None,
                          _runs(plan, ROUTE_A, a_idx, config.block_m), rank, config)
        return (dx, torch.zeros_like(A) if need_dA else None, torch.zeros_like(B) if need_dB else None,
                torch.zeros_like(U) if need_dU else None, d_row_scale)
    row_scale = row_scale.contiguous() if row_scale is not None else None
    block_m, block_k, block_r, plan_args = _row_plan(plan, num_rows, rank, _num_routes(A, B, U))
    workspace = torch.empty((3, num_rows, rank), dtype=torch.float32, device=x.device)
    zc, h, k = workspace[0], workspace[1], workspace[2]
    routed_lora._grad_shrink_kernel[(plan_args[3].shape[0],)](
        grad_out, B, z, U if U is not None else B, row_scale if row_scale is not None else zc, float(scale),
        zc, h, k, d_row_scale if d_row_scale is not None else zc, *plan_args, d_out, rank,
        HAS_U=U is not None, HAS_ROW_SCALE=row_scale is not None, STORE_ZC=need_dB, STORE_H=need_dU,
        STORE_K=need_dx or need_dA, STORE_D_ROW_SCALE=need_ds, UPCAST=_upcast_dots(x.dtype),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_R=block_r, num_warps=_num_warps(block_r),
    )
    if need_dx:
        # k already carries s and U^T: dx = dy·W0 + k·A[a], with W0 (d_out, d_in) read as is and A[a] as (r, d_in).
        config = fused_config(num_rows, x.dtype, d_in, x.device)
        _launch_fused(grad_out, weight, (weight.stride(0), weight.stride(1)), None, dx, k, A,
                      (A.stride(0), A.stride(2), A.stride(1)), None, 1.0, None,
                      _runs(plan, ROUTE_A, a_idx, config.block_m), rank, config)
    bank_grad = routed_lora._bank_grad
    dA = bank_grad(k, x, None, 1.0, plan, ROUTE_A, A.shape, A.dtype, False, block_r) if need_dA else None
    dB = bank_grad(zc, grad_out, row_scale, scale, plan, ROUTE_B, B.shape, B.dtype, True, block_r) if need_dB else None
    dU = bank_grad(h, z, None, 1.0, plan, routed_lora.ROUTE_U, U.shape, U.dtype, False, block_r) if need_dU else None
    return dx, dA, dB, dU, d_row_scale
