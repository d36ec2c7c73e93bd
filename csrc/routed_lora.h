// Interface between the checked entry point (routed_lora.cpp) and the CUDA kernels (routed_lora_kernels.cu).
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

}  // namespace lora_route
