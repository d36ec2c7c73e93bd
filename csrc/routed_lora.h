// Interface between the checked entry points (routed_lora.cpp) and the kernels: CUDA (routed_lora_kernels.cu) and
// CPU (routed_lora_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lora_route {

// Arguments of one routed LoRA forward; routed_lora.cpp has validated every shape, dtype and device.
struct ForwardInputs {
  at::Tensor x;                         // (T, d_in)
  at::Tensor A;                         // (n_a, r, d_in)
  at::Tensor B;                         // (n_b, d_out, r)
  std::optional<at::Tensor> U;          // (n_u, r, r)
  std::optional<at::Tensor> row_scale;  // (T,)
  double scale;
  at::Tensor row_order;                 // (T,) int64
  at::Tensor segment_starts;            // (T + 1,) int64
  at::Tensor segment_routes;            // (T, 3) int64
  at::Tensor out;                       // (T, d_out), accumulated in place
  bool gather;                          // true: per-row gather kernels (decode); false: segment tiles
};

// Launches shrink, finish and expand on the current stream; returns z = A[a]·x (T, r), zero on inactive rows.
at::Tensor routed_forward_cuda(const ForwardInputs& inputs);

// Arguments of one routed LoRA forward on CPU tensors (float32); routed_lora.cpp has validated every shape, dtype,
// index and order.
struct CpuForwardInputs {
  at::Tensor x;                         // (T, d_in)
  at::Tensor A;                         // (n_a, r, d_in)
  at::Tensor B_t;                       // (n_b, r, d_out): B[b] transposed
  std::optional<at::Tensor> U;          // (n_u, r, r)
  std::optional<at::Tensor> row_scale;  // (T,)
  double scale;
  at::Tensor a_idx;                     // (T,) int64, -1 = no adapter
  at::Tensor b_idx;                     // (T,) int64
  std::optional<at::Tensor> u_idx;      // (T,) int64, with U
  at::Tensor order_a;                   // (active,) int64: the active rows, sorted by a_idx
  at::Tensor order_b;                   // (active,) int64: the same rows, sorted by b_idx
  at::Tensor out;                       // (T, d_out), accumulated in place
};

// Adds the delta into out; returns z = A[a]·x (T, r), zero on inactive rows.
at::Tensor routed_forward_cpu_kernels(const CpuForwardInputs& inputs);

}  // namespace lora_route
