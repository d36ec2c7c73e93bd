// Routed LoRA forward kernels: delta_t = s_t · B[b_t] · U[u_t] · A[a_t] · x_t, accumulated into out in place.
//
// Every kernel walks the rows of a RoutePlan in sorted order ("positions" p = 0..T-1; row = row_order[p]).
// Positions [0, n_active) are grouped into segments that share one route (a, u, b); the segment of a position
// is found by binary search in segment_starts, so no kernel needs a host-side segment count.
//
// A forward pass is three launches:
//   1. shrink  : partial[split, p, j] = sum_{k in split} x[row, k] · A[a, j, k]          (fp32, per K split)
//   2. finish  : z[row, j] = round(sum_split partial);  core[p, i] = round(sum_j U[u, i, j] · z[row, j])
//   3. expand  : out[row, o] += s_row · sum_i core[p, i] · B[b, o, i]
// Shrink and expand come in two flavours:
//   segment (SGMV-style, prefill / training): one 64-position tile per block, a dense 64x64 GEMM tile per
//            segment that meets the tile; fp16/bf16 on tensor cores (WMMA 16x16x16, fp32 accumulate), fp32 on
//            CUDA cores.
//   gather  (BGMV-style, decode): one block per position; shrink dot products reduced with warp shuffles,
//            expand one output feature per thread.
// Every reduction runs in a fixed order (no atomics), so results are deterministic; rows without adapter are
// never read or written.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "routed_lora.h"

namespace lora_route {
namespace {

// ------------------------------------------------------------------------------------------------ dtype helpers
template <typename T> struct Native { using type = T; };
template <> struct Native<at::Half> { using type = __half; };
template <> struct Native<at::BFloat16> { using type = __nv_bfloat16; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T> __device__ __forceinline__ T zero_value() { return from_float<T>(0.f); }

// -------------------------------------------------------------------------------------------------- the plan
struct PlanView {
  const int64_t* row_order;       // (T,)
  const int64_t* segment_starts;  // (T + 1,); entries past the last segment equal n_active
  const int64_t* segment_routes;  // (T, 3) as (a, u, b)
  int64_t num_rows;               // T

  __device__ __forceinline__ int64_t num_active() const { return segment_starts[num_rows]; }

  // Segment s holding position p < n_active: the largest s with segment_starts[s] <= p.
  __device__ __forceinline__ int64_t segment_of(int64_t p) const {
    int64_t lo = 0, hi = num_rows;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (segment_starts[mid] <= p) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  __device__ __forceinline__ int64_t route(int64_t segment, int column) const {
    return segment_routes[segment * 3 + column];
  }
};

constexpr int kRouteA = 0;
constexpr int kRouteU = 1;
constexpr int kRouteB = 2;

__device__ __forceinline__ int64_t checked_bank(int64_t index, int64_t bank_size) {
  CUDA_KERNEL_ASSERT(index >= 0 && index < bank_size && "lora_route: route index outside its adapter bank");
  return index;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ------------------------------------------------------------------------------------ segment tile (SGMV-style)
constexpr int kTileM = 64;    // positions per tile
constexpr int kTileN = 64;    // output columns per tile
constexpr int kTileK = 32;    // reduction slice staged in shared memory
constexpr int kSkew = 8;      // row padding of the operand tiles (keeps WMMA pointers 32-byte aligned)
constexpr int kAccLd = kTileN + 4;
constexpr int kTileThreads = 128;

// One launch computes C[p, n] = sum_k X[p, k] · W[bank(p), n, k] for a 64x64 tile of (positions, columns) and a
// slice of k. Shrink: X = x gathered through row_order, W = A, result written as fp32 partial sums.
// Expand: X = core (stored by position), W = B, result scaled and added into out[row].
template <typename T>
struct TileArgs {
  const T* X;              // shrink: x (T, K) indexed by row; expand: core (T, K) indexed by position
  const T* W;              // (n_bank, N, K)
  int64_t n_bank, N, K;
  int64_t k_per_split;     // multiple of kTileK
  float* partial;          // shrink: (splits, T, N)
  T* out;                  // expand: (T, N)
  const T* row_scale;      // expand: (T,) or nullptr
  float scale;
  PlanView plan;
};

template <typename T>
struct TileSmem {
  alignas(128) T x[kTileM][kTileK + kSkew];
  alignas(128) T w[kTileN][kTileK + kSkew];
  alignas(128) float acc[kTileM][kAccLd];
  int64_t row[kTileM];     // row of each tile position inside the current segment, -1 outside
  float row_scale[kTileM];
};

// Tensor-core tile product: 4 warps in a 2x2 grid, each owning a 32x32 block of the 64x64 tile.
template <typename T>
struct TensorCoreTile {
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::col_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  FragC c[2][2];
  int warp_m, warp_n;

  __device__ void zero() {
    const int warp = threadIdx.x / 32;
    warp_m = (warp / 2) * 32;
    warp_n = (warp % 2) * 32;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(c[i][j], 0.f);
  }

  __device__ void accumulate(const TileSmem<T>& s) {
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      FragA a[2];
      FragB b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(a[i], &s.x[warp_m + 16 * i][kk], kTileK + kSkew);
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(b[j], &s.w[warp_n + 16 * j][kk], kTileK + kSkew);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(c[i][j], a[i], b[j], c[i][j]);
    }
  }

  __device__ void store(TileSmem<T>& s) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(&s.acc[warp_m + 16 * i][warp_n + 16 * j], c[i][j], kAccLd,
                                        nvcuda::wmma::mem_row_major);
  }
};

// fp32 tile product on CUDA cores (full fp32, matching torch's default matmul precision): thread (ty, tx) of
// an 8x16 grid owns rows ty + 8i and columns tx + 16j.
struct SimtTile {
  float c[kTileM / 8][kTileN / 16];

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < kTileM / 8; ++i)
#pragma unroll
      for (int j = 0; j < kTileN / 16; ++j) c[i][j] = 0.f;
  }

  __device__ void accumulate(const TileSmem<float>& s) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll 4
    for (int k = 0; k < kTileK; ++k) {
      float a[kTileM / 8], b[kTileN / 16];
#pragma unroll
      for (int i = 0; i < kTileM / 8; ++i) a[i] = s.x[ty + 8 * i][k];
#pragma unroll
      for (int j = 0; j < kTileN / 16; ++j) b[j] = s.w[tx + 16 * j][k];
#pragma unroll
      for (int i = 0; i < kTileM / 8; ++i)
#pragma unroll
        for (int j = 0; j < kTileN / 16; ++j) c[i][j] = fmaf(a[i], b[j], c[i][j]);
    }
  }

  __device__ void store(TileSmem<float>& s) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < kTileM / 8; ++i)
#pragma unroll
      for (int j = 0; j < kTileN / 16; ++j) s.acc[ty + 8 * i][tx + 16 * j] = c[i][j];
  }
};

template <typename T>
using TileMath = typename std::conditional<std::is_same<T, float>::value, SimtTile, TensorCoreTile<T>>::type;

// grid: (ceil(T / 64), ceil(N / 64), splits); block: 128 threads.
template <typename T, bool kShrink>
__global__ void __launch_bounds__(kTileThreads) segment_tile_kernel(const TileArgs<T> args) {
  __shared__ TileSmem<T> s;
  const PlanView& plan = args.plan;
  const int64_t n_active = plan.num_active();
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  if (p0 >= n_active) return;
  const int64_t p_end = min(p0 + kTileM, n_active);
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * args.k_per_split;
  const int64_t k_end = min(k_begin + args.k_per_split, args.K);
  const int route_column = kShrink ? kRouteA : kRouteB;

  // Segments meeting [p0, p_end) are processed one after the other; each row belongs to exactly one of them,
  // so the writes of different passes never overlap.
  for (int64_t seg = plan.segment_of(p0); seg < plan.num_rows && plan.segment_starts[seg] < p_end; ++seg) {
    const int64_t lo = max(plan.segment_starts[seg], p0);
    const int64_t hi = min(plan.segment_starts[seg + 1], p_end);
    const int64_t bank = checked_bank(plan.route(seg, route_column), args.n_bank);
    const T* W = args.W + bank * args.N * args.K;

    __syncthreads();  // the previous pass is done with s.row / s.acc
    for (int m = threadIdx.x; m < kTileM; m += kTileThreads) {
      const int64_t p = p0 + m;
      const bool inside = p >= lo && p < hi;
      const int64_t row = inside ? plan.row_order[p] : -1;
      s.row[m] = row;
      if (!kShrink) {
        const float rs = (inside && args.row_scale != nullptr) ? to_float(args.row_scale[row]) : 1.f;
        s.row_scale[m] = args.scale * rs;
      }
    }
    __syncthreads();

    TileMath<T> math;
    math.zero();
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
      for (int e = threadIdx.x; e < kTileM * kTileK; e += kTileThreads) {
        const int m = e / kTileK, k = e % kTileK;
        const int64_t row = s.row[m];
        const int64_t x_row = kShrink ? row : p0 + m;  // expand reads core by position
        const bool valid = row >= 0 && k0 + k < k_end;
        s.x[m][k] = valid ? args.X[x_row * args.K + k0 + k] : zero_value<T>();
      }
      for (int e = threadIdx.x; e < kTileN * kTileK; e += kTileThreads) {
        const int n = e / kTileK, k = e % kTileK;
        const bool valid = n0 + n < args.N && k0 + k < k_end;
        s.w[n][k] = valid ? W[(n0 + n) * args.K + k0 + k] : zero_value<T>();
      }
      __syncthreads();
      math.accumulate(s);
      __syncthreads();
    }
    math.store(s);
    __syncthreads();

    for (int e = threadIdx.x; e < kTileM * kTileN; e += kTileThreads) {
      const int m = e / kTileN, n = e % kTileN;
      const int64_t row = s.row[m];
      if (row < 0 || n0 + n >= args.N) continue;
      const int64_t p = p0 + m;
      if (kShrink) {
        args.partial[(static_cast<int64_t>(blockIdx.z) * plan.num_rows + p) * args.N + n0 + n] = s.acc[m][n];
      } else {
        T* target = args.out + row * args.N + n0 + n;
        *target = from_float<T>(to_float(*target) + s.row_scale[m] * s.acc[m][n]);
      }
    }
  }
}

// --------------------------------------------------------------------------------------- gather (BGMV-style)
constexpr int kGatherThreads = 256;

// grid: (T, splits); block: 256 threads = 8 warps. Warp w computes the dot products j = w, w + 8, ... of one
// position's row of x with A[a] over its K split; lanes stride over k and meet in a shuffle reduction.
template <typename T>
__global__ void __launch_bounds__(kGatherThreads) gather_shrink_kernel(
    const T* __restrict__ x, const T* __restrict__ A, int64_t n_a, int64_t r, int64_t d_in, int64_t k_per_split,
    float* __restrict__ partial, const PlanView plan) {
  const int64_t p = blockIdx.x;
  if (p >= plan.num_active()) return;
  const int64_t row = plan.row_order[p];
  const int64_t a = checked_bank(plan.route(plan.segment_of(p), kRouteA), n_a);
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * k_per_split;
  const int64_t k_end = min(k_begin + k_per_split, d_in);
  const T* x_row = x + row * d_in;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t j = warp; j < r; j += kGatherThreads / 32) {
    const T* a_row = A + (a * r + j) * d_in;
    float acc = 0.f;
    for (int64_t k = k_begin + lane; k < k_end; k += 32) acc = fmaf(to_float(x_row[k]), to_float(a_row[k]), acc);
    acc = warp_sum(acc);
    if (lane == 0) partial[(static_cast<int64_t>(blockIdx.y) * plan.num_rows + p) * r + j] = acc;
  }
}

// grid: (T, ceil(d_out / 256)); block: 256 threads, one output feature each; dynamic smem: r floats of core.
template <typename T>
__global__ void __launch_bounds__(kGatherThreads) gather_expand_kernel(
    const T* __restrict__ core, const T* __restrict__ B, int64_t n_b, int64_t r, int64_t d_out,
    const T* __restrict__ row_scale, float scale, T* __restrict__ out, const PlanView plan) {
  extern __shared__ float core_row[];
  const int64_t p = blockIdx.x;
  if (p >= plan.num_active()) return;
  const int64_t row = plan.row_order[p];
  const int64_t b = checked_bank(plan.route(plan.segment_of(p), kRouteB), n_b);
  for (int64_t i = threadIdx.x; i < r; i += kGatherThreads) core_row[i] = to_float(core[p * r + i]);
  __syncthreads();
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kGatherThreads + threadIdx.x;
  if (o >= d_out) return;
  const T* b_row = B + (b * d_out + o) * r;
  float acc = 0.f;
  for (int64_t i = 0; i < r; ++i) acc = fmaf(core_row[i], to_float(b_row[i]), acc);
  const float s = scale * (row_scale != nullptr ? to_float(row_scale[row]) : 1.f);
  T* target = out + row * d_out + o;
  *target = from_float<T>(to_float(*target) + s * acc);
}

// ------------------------------------------------------------------------------------------------ finish
constexpr int kFinishThreads = 128;

// grid: (T,); block: 128 threads; dynamic smem: r floats. Sums the K-split partials of one position in split
// order, rounds z to the input dtype (z is what backward sees), and applies the core U[u] to the rounded z.
template <typename T>
__global__ void __launch_bounds__(kFinishThreads) finish_shrink_kernel(
    const float* __restrict__ partial, int64_t splits, int64_t r, const T* __restrict__ U, int64_t n_u,
    T* __restrict__ z, T* __restrict__ core, const PlanView plan) {
  extern __shared__ float z_row[];
  const int64_t p = blockIdx.x;
  if (p >= plan.num_active()) return;
  const int64_t row = plan.row_order[p];
  for (int64_t j = threadIdx.x; j < r; j += kFinishThreads) {
    float acc = 0.f;
    for (int64_t split = 0; split < splits; ++split) acc += partial[(split * plan.num_rows + p) * r + j];
    const T rounded = from_float<T>(acc);
    z[row * r + j] = rounded;
    if (U == nullptr) core[p * r + j] = rounded;
    z_row[j] = to_float(rounded);
  }
  if (U == nullptr) return;
  const int64_t u = checked_bank(plan.route(plan.segment_of(p), kRouteU), n_u);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < r; i += kFinishThreads) {
    const T* u_row = U + (u * r + i) * r;
    float acc = 0.f;
    for (int64_t j = 0; j < r; ++j) acc = fmaf(to_float(u_row[j]), z_row[j], acc);
    core[p * r + i] = from_float<T>(acc);
  }
}

// ------------------------------------------------------------------------------------------------- launch
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of K splits: enough blocks to cover every SM about twice, each split at least min_chunk long.
int64_t choose_splits(int64_t blocks, int64_t k, int64_t min_chunk, int sm_count) {
  const int64_t wanted = ceil_div(2 * static_cast<int64_t>(sm_count), std::max<int64_t>(blocks, 1));
  const int64_t most = std::max<int64_t>(1, k / min_chunk);
  return std::min<int64_t>({wanted, most, 32});
}

template <typename Scalar>
void launch_forward(const ForwardInputs& in, at::Tensor& z) {
  using T = typename Native<Scalar>::type;
  const int64_t num_rows = in.x.size(0), d_in = in.x.size(1), r = in.A.size(1), d_out = in.B.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, in.x.get_device()));
  const PlanView plan{in.row_order.data_ptr<int64_t>(), in.segment_starts.data_ptr<int64_t>(),
                      in.segment_routes.data_ptr<int64_t>(), num_rows};
  const T* x = reinterpret_cast<const T*>(in.x.data_ptr<Scalar>());
  const T* A = reinterpret_cast<const T*>(in.A.data_ptr<Scalar>());
  const T* B = reinterpret_cast<const T*>(in.B.data_ptr<Scalar>());
  const T* U = in.U.has_value() ? reinterpret_cast<const T*>(in.U->data_ptr<Scalar>()) : nullptr;
  const int64_t n_u = in.U.has_value() ? in.U->size(0) : 0;
  const T* row_scale = in.row_scale.has_value() ? reinterpret_cast<const T*>(in.row_scale->data_ptr<Scalar>())
                                                : nullptr;
  T* out = reinterpret_cast<T*>(in.out.data_ptr<Scalar>());
  T* z_ptr = reinterpret_cast<T*>(z.data_ptr<Scalar>());
  const auto float_options = in.x.options().dtype(at::kFloat);
  at::Tensor core = at::empty({num_rows, r}, in.x.options());
  T* core_ptr = reinterpret_cast<T*>(core.data_ptr<Scalar>());
  const size_t row_smem = static_cast<size_t>(r) * sizeof(float);

  int64_t splits;
  at::Tensor partial;
  if (in.gather) {
    splits = choose_splits(num_rows, d_in, 512, sm_count);
    const int64_t k_per_split = ceil_div(d_in, splits);
    partial = at::empty({splits, num_rows, r}, float_options);
    gather_shrink_kernel<T><<<dim3(num_rows, splits), kGatherThreads, 0, stream>>>(
        x, A, in.A.size(0), r, d_in, k_per_split, partial.data_ptr<float>(), plan);
  } else {
    const int64_t tiles = ceil_div(num_rows, kTileM) * ceil_div(r, kTileN);
    splits = choose_splits(tiles, d_in, 4 * kTileK, sm_count);
    const int64_t k_per_split = ceil_div(ceil_div(d_in, splits), kTileK) * kTileK;
    splits = ceil_div(d_in, k_per_split);
    partial = at::empty({splits, num_rows, r}, float_options);
    const TileArgs<T> args{x, A, in.A.size(0), r, d_in, k_per_split, partial.data_ptr<float>(), nullptr, nullptr,
                           0.f, plan};
    segment_tile_kernel<T, true><<<dim3(ceil_div(num_rows, kTileM), ceil_div(r, kTileN), splits), kTileThreads,
                                   0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  finish_shrink_kernel<T><<<num_rows, kFinishThreads, row_smem, stream>>>(
      partial.data_ptr<float>(), splits, r, U, n_u, z_ptr, core_ptr, plan);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  if (d_out == 0) return;
  if (in.gather) {
    gather_expand_kernel<T><<<dim3(num_rows, ceil_div(d_out, kGatherThreads)), kGatherThreads, row_smem, stream>>>(
        core_ptr, B, in.B.size(0), r, d_out, row_scale, static_cast<float>(in.scale), out, plan);
  } else {
    const TileArgs<T> args{core_ptr, B, in.B.size(0), d_out, r, ceil_div(r, kTileK) * kTileK, nullptr, out,
                           row_scale, static_cast<float>(in.scale), plan};
    segment_tile_kernel<T, false><<<dim3(ceil_div(num_rows, kTileM), ceil_div(d_out, kTileN), 1), kTileThreads,
                                    0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor routed_forward_cuda(const ForwardInputs& in) {
  const c10::cuda::CUDAGuard device_guard(in.x.device());
  at::Tensor z = at::zeros({in.x.size(0), in.A.size(1)}, in.x.options());
  if (in.x.size(0) == 0) return z;
  AT_DISPATCH_SWITCH(in.x.scalar_type(), "lora_route.routed_forward",
                     AT_DISPATCH_CASE(at::kFloat, [&] { launch_forward<scalar_t>(in, z); })
                     AT_DISPATCH_CASE(at::kHalf, [&] { launch_forward<scalar_t>(in, z); })
                     AT_DISPATCH_CASE(at::kBFloat16, [&] { launch_forward<scalar_t>(in, z); }));
  return z;
}

}  // namespace lora_route
