// Python entry point of lora_route._C: validates every argument (TORCH_CHECK naming the offending tensor, its
// shape, dtype or device) and hands the call to the CUDA kernels in routed_lora_kernels.cu.
#include <torch/extension.h>

#include "routed_lora.h"

namespace lora_route {
namespace {

constexpr const char* kName = "lora_route._C.routed_forward";

void check_on_device(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), kName, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.is_contiguous(), kName, ": ", name, " must be contiguous");
}

void check_dtype(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), kName, ": ", name, " has dtype ", t.scalar_type(), " but x has ",
              x.scalar_type());
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected, const char* layout) {
  TORCH_CHECK(t.sizes() == expected, kName, ": ", name, " must be ", layout, " = ", expected, ", got ", t.sizes());
}

void check_index(const at::Tensor& t, const char* name, at::IntArrayRef expected, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == at::kLong, kName, ": plan tensor ", name, " must be int64, got ", t.scalar_type());
  check_shape(t, name, expected, "the plan's layout");
  check_on_device(t, name, x);
}

}  // namespace

at::Tensor routed_forward(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                          const std::optional<at::Tensor>& U, const std::optional<at::Tensor>& row_scale,
                          double scale, const at::Tensor& row_order, const at::Tensor& segment_starts,
                          const at::Tensor& segment_routes, at::Tensor out, bool gather) {
  TORCH_CHECK(x.is_cuda(), kName, ": x must be a CUDA tensor, got a tensor on ", x.device());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, kName,
              ": x has dtype ", dtype, "; supported: float32, float16, bfloat16");
  TORCH_CHECK(x.dim() == 2, kName, ": x must be (T, d_in), got shape ", x.sizes());
  check_on_device(x, "x", x);
  TORCH_CHECK(A.dim() == 3, kName, ": A must be (n_a, r, d_in), got shape ", A.sizes());
  TORCH_CHECK(B.dim() == 3, kName, ": B must be (n_b, d_out, r), got shape ", B.sizes());
  const int64_t T = x.size(0), d_in = x.size(1), r = A.size(1), d_out = B.size(1);
  TORCH_CHECK(d_in > 0 && r > 0, kName, ": d_in and the rank must be positive, got x ", x.sizes(), " and A ",
              A.sizes());
  TORCH_CHECK(r <= 8192, kName, ": rank ", r, " exceeds the supported maximum of 8192");
  TORCH_CHECK(A.size(2) == d_in, kName, ": A is ", A.sizes(), " but x has d_in=", d_in);
  TORCH_CHECK(B.size(2) == r, kName, ": B is ", B.sizes(), " but A has rank r=", r);
  check_dtype(A, "A", x);
  check_on_device(A, "A", x);
  check_dtype(B, "B", x);
  check_on_device(B, "B", x);
  check_dtype(out, "out", x);
  check_on_device(out, "out", x);
  TORCH_CHECK(A.size(0) > 0 && B.size(0) > 0, kName, ": the adapter banks are empty: A ", A.sizes(), ", B ",
              B.sizes());
  if (U.has_value()) {
    check_shape(*U, "U", {U->size(0), r, r}, "(n_u, r, r)");
    TORCH_CHECK(U->size(0) > 0, kName, ": the core bank U is empty");
    check_dtype(*U, "U", x);
    check_on_device(*U, "U", x);
  }
  if (row_scale.has_value()) {
    check_shape(*row_scale, "row_scale", {T}, "(T,)");
    check_dtype(*row_scale, "row_scale", x);
    check_on_device(*row_scale, "row_scale", x);
  }
  check_shape(out, "out", {T, d_out}, "(T, d_out)");
  check_index(row_order, "row_order", {T}, x);
  check_index(segment_starts, "segment_starts", {T + 1}, x);
  check_index(segment_routes, "segment_routes", {T, 3}, x);
  return routed_forward_cuda(
      ForwardInputs{x, A, B, U, row_scale, scale, row_order, segment_starts, segment_routes, out, gather});
}

}  // namespace lora_route

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lora_route CUDA kernels: segment-gathered (SGMV) and per-row gather (BGMV) routed LoRA forward.";
  m.def("routed_forward", &lora_route::routed_forward,
        "Adds scale·row_scale_t·B[b]·U[u]·A[a]·x_t into out (T, d_out) in place for every active row of the plan "
        "and returns z = A[a]·x (T, r), zero on inactive rows. gather=True runs the per-row (decode) kernels, "
        "gather=False the segment-tiled (prefill/training) kernels.",
        py::arg("x"), py::arg("A"), py::arg("B"), py::arg("U"), py::arg("row_scale"), py::arg("scale"),
        py::arg("row_order"), py::arg("segment_starts"), py::arg("segment_routes"), py::arg("out"),
        py::arg("gather"));
}
