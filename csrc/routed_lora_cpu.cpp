// CPU kernels of the routed LoRA forward (float32). Rows that share a bank are served by one pass over it: the
// shrink reads A[a] once for up to kMaxGroup rows of the same a, the expand reads each column block of B[b] once for
// up to kMaxGroup rows of the same b. The caller passes the active rows sorted by a and by b (built once per row plan),
// so the groups are runs of equal index in those orders. Vectors are GCC/Clang vector extensions; on x86-64 with GCC
// the two hot functions are compiled for AVX-512, AVX2+FMA and the baseline and the loader picks one for the CPU.
// Every output element is summed by one thread in a fixed order, so results do not depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "routed_lora.h"

namespace lora_route {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define LORA_ROUTE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LORA_ROUTE_CPU_CLONES
#endif
#define LORA_ROUTE_INLINE __attribute__((always_inline)) inline
// Vec values cross only always-inlined functions, so the ABI of passing them (which -Wpsabi warns of) never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

constexpr int kLanes = 16;          // floats per vector
constexpr int kMaxGroup = 4;        // rows served by one pass over a bank
constexpr int kRowsPerPass = 4;     // rows of A per pass of the shrink over x
constexpr int kBlocksPerPass = 4;   // vectors of each output row per pass of the expand over B
constexpr int64_t kColumnChunk = 256;  // output columns per task of the expand
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float)), may_alias));

LORA_ROUTE_INLINE Vec load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
LORA_ROUTE_INLINE void store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }

// z[g][k] = A[k, :] · x[g] for the R rows of A (R, n) and G input rows x[g] (n,), one pass over A.
template <int G, int R>
LORA_ROUTE_INLINE void dot_block(const float* A, const float* const* x, float* const* z, int64_t n) {
  Vec acc[G][R] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Vec a[R];
    for (int k = 0; k < R; ++k) a[k] = load(A + k * n + i);
    for (int g = 0; g < G; ++g) {
      const Vec xv = load(x[g] + i);
      for (int k = 0; k < R; ++k) acc[g][k] += a[k] * xv;
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < R; ++k) {
      float total = 0;
      for (int j = 0; j < kLanes; ++j) total += acc[g][k][j];
      for (int64_t tail = i; tail < n; ++tail) total += A[k * n + tail] * x[g][tail];
      z[g][k] = total;
    }
  }
}

template <int G>
LORA_ROUTE_INLINE void shrink_group(const float* A, const float* const* x, float* const* z, int64_t r, int64_t n) {
  float* z_rows[G];
  int64_t k = 0;
  for (; k + kRowsPerPass <= r; k += kRowsPerPass) {
    for (int g = 0; g < G; ++g) z_rows[g] = z[g] + k;
    dot_block<G, kRowsPerPass>(A + k * n, x, z_rows, n);
  }
  for (; k < r; ++k) {
    for (int g = 0; g < G; ++g) z_rows[g] = z[g] + k;
    dot_block<G, 1>(A + k * n, x, z_rows, n);
  }
}

// z[g] = A · x[g] (r,) for g < rows: A (r, n).
LORA_ROUTE_CPU_CLONES void shrink(const float* A, const float* const* x, float* const* z, int rows, int64_t r,
                                  int64_t n) {
  switch (rows) {
    case 1: return shrink_group<1>(A, x, z, r, n);
    case 2: return shrink_group<2>(A, x, z, r, n);
    case 3: return shrink_group<3>(A, x, z, r, n);
    default: return shrink_group<4>(A, x, z, r, n);
  }
}

template <int G>
LORA_ROUTE_INLINE void expand_group(float* const* out, const float* Bt, const float* const* w, int64_t r, int64_t ld,
                                    int64_t begin, int64_t end) {
  constexpr int64_t kWidth = kLanes * kBlocksPerPass;
  int64_t o = begin;
  for (; o + kWidth <= end; o += kWidth) {
    Vec acc[G][kBlocksPerPass];
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < kBlocksPerPass; ++j) acc[g][j] = load(out[g] + o + j * kLanes);
    for (int64_t k = 0; k < r; ++k) {
      Vec b[kBlocksPerPass];
      for (int j = 0; j < kBlocksPerPass; ++j) b[j] = load(Bt + k * ld + o + j * kLanes);
      for (int g = 0; g < G; ++g) {
        const float weight = w[g][k];
        for (int j = 0; j < kBlocksPerPass; ++j) acc[g][j] += weight * b[j];
      }
    }
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < kBlocksPerPass; ++j) store(out[g] + o + j * kLanes, acc[g][j]);
  }
  for (; o < end; ++o) {
    for (int g = 0; g < G; ++g) {
      float total = out[g][o];
      for (int64_t k = 0; k < r; ++k) total += w[g][k] * Bt[k * ld + o];
      out[g][o] = total;
    }
  }
}

// out[g][o] += Σ_k w[g][k] · Bt[k, o] for o in [begin, end) and g < rows: Bt (r, ld), B[b] transposed.
LORA_ROUTE_CPU_CLONES void expand(float* const* out, const float* Bt, const float* const* w, int rows, int64_t r,
                                  int64_t ld, int64_t begin, int64_t end) {
  switch (rows) {
    case 1: return expand_group<1>(out, Bt, w, r, ld, begin, end);
    case 2: return expand_group<2>(out, Bt, w, r, ld, begin, end);
    case 3: return expand_group<3>(out, Bt, w, r, ld, begin, end);
    default: return expand_group<4>(out, Bt, w, r, ld, begin, end);
  }
}

// Runs of at most kMaxGroup rows of ``order`` with equal ``index``: (first position in order, number of rows).
std::vector<std::pair<int64_t, int>> groups_of(const int64_t* order, int64_t count, const int64_t* index) {
  std::vector<std::pair<int64_t, int>> groups;
  for (int64_t first = 0; first < count;) {
    int size = 1;
    while (size < kMaxGroup && first + size < count && index[order[first + size]] == index[order[first]]) ++size;
    groups.emplace_back(first, size);
    first += size;
  }
  return groups;
}

}  // namespace

at::Tensor routed_forward_cpu_kernels(const CpuForwardInputs& in) {
  const int64_t T = in.x.size(0), d_in = in.x.size(1), r = in.A.size(1), d_out = in.out.size(1);
  const int64_t active = in.order_a.size(0);
  auto z = at::zeros({T, r}, in.x.options());
  auto weighted = at::empty({T, r}, in.x.options());  // scale_t · U[u_t] · z_t, the expand's input
  const float* x = in.x.data_ptr<float>();
  const float* A = in.A.data_ptr<float>();
  const float* Bt = in.B_t.data_ptr<float>();
  const float* U = in.U.has_value() ? in.U->data_ptr<float>() : nullptr;
  const float* row_scale = in.row_scale.has_value() ? in.row_scale->data_ptr<float>() : nullptr;
  const int64_t* a_idx = in.a_idx.data_ptr<int64_t>();
  const int64_t* b_idx = in.b_idx.data_ptr<int64_t>();
  const int64_t* u_idx = in.u_idx.has_value() ? in.u_idx->data_ptr<int64_t>() : nullptr;
  const int64_t* order_a = in.order_a.data_ptr<int64_t>();
  const int64_t* order_b = in.order_b.data_ptr<int64_t>();
  float* z_data = z.data_ptr<float>();
  float* w_data = weighted.data_ptr<float>();
  float* out = in.out.data_ptr<float>();
  const float scale = static_cast<float>(in.scale);

  const auto groups_a = groups_of(order_a, active, a_idx);
  at::parallel_for(0, static_cast<int64_t>(groups_a.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const auto [first, size] = groups_a[group];
      const float* x_rows[kMaxGroup];
      float* z_rows[kMaxGroup];
      for (int g = 0; g < size; ++g) {
        x_rows[g] = x + order_a[first + g] * d_in;
        z_rows[g] = z_data + order_a[first + g] * r;
      }
      shrink(A + a_idx[order_a[first]] * r * d_in, x_rows, z_rows, size, r, d_in);
      for (int g = 0; g < size; ++g) {
        const int64_t t = order_a[first + g];
        const float s = row_scale != nullptr ? scale * row_scale[t] : scale;
        float* w = w_data + t * r;
        if (U == nullptr) {
          for (int64_t k = 0; k < r; ++k) w[k] = s * z_rows[g][k];
          continue;
        }
        const float* core = U + u_idx[t] * r * r;
        for (int64_t i = 0; i < r; ++i) {
          float total = 0;
          for (int64_t j = 0; j < r; ++j) total += core[i * r + j] * z_rows[g][j];
          w[i] = s * total;
        }
      }
    }
  });

  const auto groups_b = groups_of(order_b, active, b_idx);
  const int64_t chunks = (d_out + kColumnChunk - 1) / kColumnChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t first_column = begin * kColumnChunk, last_column = std::min(end * kColumnChunk, d_out);
    for (const auto& [first, size] : groups_b) {
      float* out_rows[kMaxGroup];
      const float* w_rows[kMaxGroup];
      for (int g = 0; g < size; ++g) {
        out_rows[g] = out + order_b[first + g] * d_out;
        w_rows[g] = w_data + order_b[first + g] * r;
      }
      expand(out_rows, Bt + b_idx[order_b[first]] * r * d_out, w_rows, size, r, d_out, first_column, last_column);
    }
  });
  return z;
}

}  // namespace lora_route
