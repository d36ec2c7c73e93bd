// Python entry points of lora_route._C: validate every argument (TORCH_CHECK naming the offending tensor, its
// shape, dtype or device) and hand the call to the CUDA kernels (routed_lora_kernels.cu) or the CPU kernels
// (routed_lora_cpu.cpp). A build without CUDA (LORA_ROUTE_CPU_ONLY) has the CPU entry point alone.
#include <torch/extension.h>

#include <vector>

#include "routed_lora.h"

namespace lora_route {
namespace {

constexpr const char* kCpuName = "lora_route._C.routed_forward_cpu";

#ifndef LORA_ROUTE_CPU_ONLY
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
#endif  // LORA_ROUTE_CPU_ONLY

// A (T,) int64 CPU index into a bank of ``bank`` entries: every entry in [-1, bank), -1 exactly where a_idx is -1.
void check_cpu_index(const at::Tensor& index, const char* name, int64_t bank, const at::Tensor& a_idx, int64_t T) {
  TORCH_CHECK(index.scalar_type() == at::kLong && index.device().is_cpu() && index.is_contiguous() &&
                  index.sizes() == at::IntArrayRef{T},
              kCpuName, ": ", name, " must be a contiguous (T,) = (", T, ",) int64 CPU tensor, got ",
              index.scalar_type(), " ", index.sizes(), " on ", index.device());
  const int64_t* values = index.data_ptr<int64_t>();
  const int64_t* rows = a_idx.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(values[t] >= -1 && values[t] < bank, kCpuName, ": ", name, "[", t, "] = ", values[t],
                " is outside its bank of ", bank, " entries");
    TORCH_CHECK((values[t] < 0) == (rows[t] < 0), kCpuName, ": row ", t, " has a_idx ", rows[t], " but ", name, " ",
                values[t], "; -1 must mark the same rows in every index");
  }
}

// ``order``: every active row (a_idx >= 0) once, sorted by ``index``.
void check_cpu_order(const at::Tensor& order, const char* name, const at::Tensor& index, const at::Tensor& a_idx,
                     int64_t T) {
  const int64_t* rows = a_idx.data_ptr<int64_t>();
  int64_t active = 0;
  for (int64_t t = 0; t < T; ++t) active += rows[t] >= 0;
  TORCH_CHECK(order.scalar_type() == at::kLong && order.device().is_cpu() && order.is_contiguous() &&
                  order.sizes() == at::IntArrayRef{active},
              kCpuName, ": ", name, " must be a contiguous (", active, ",) int64 CPU tensor (one entry per active row), "
              "got ", order.scalar_type(), " ", order.sizes(), " on ", order.device());
  const int64_t* values = order.data_ptr<int64_t>();
  const int64_t* keys = index.data_ptr<int64_t>();
  std::vector<bool> seen(T, false);
  for (int64_t i = 0; i < active; ++i) {
    const int64_t t = values[i];
    TORCH_CHECK(t >= 0 && t < T && rows[t] >= 0 && !seen[t], kCpuName, ": ", name, "[", i, "] = ", t,
                " is not an active row, or repeats a row listed before it");
    seen[t] = true;
    TORCH_CHECK(i == 0 || keys[values[i - 1]] <= keys[t], kCpuName, ": ", name, " is not sorted by its index at ", i);
  }
}

void check_cpu_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), kCpuName, ": ", name, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, kCpuName, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), kCpuName, ": ", name, " must be contiguous");
}

void check_cpu_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected, const char* layout) {
  TORCH_CHECK(t.sizes() == expected, kCpuName, ": ", name, " must be ", layout, " = ", expected, ", got ", t.sizes());
}

}  // namespace

at::Tensor routed_forward_cpu(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B_t,
                              const std::optional<at::Tensor>& U, const std::optional<at::Tensor>& row_scale,
                              double scale, const at::Tensor& a_idx, const at::Tensor& b_idx,
                              const std::optional<at::Tensor>& u_idx, const at::Tensor& order_a,
                              const at::Tensor& order_b, at::Tensor out) {
  check_cpu_tensor(x, "x");
  TORCH_CHECK(x.dim() == 2, kCpuName, ": x must be (T, d_in), got shape ", x.sizes());
  check_cpu_tensor(A, "A");
  TORCH_CHECK(A.dim() == 3 && A.size(0) > 0 && A.size(1) > 0 && A.size(2) == x.size(1), kCpuName,
              ": A must be a non-empty (n_a, r, d_in) with d_in = ", x.size(1), ", got shape ", A.sizes());
  const int64_t T = x.size(0), r = A.size(1);
  check_cpu_tensor(B_t, "B_t");
  TORCH_CHECK(B_t.dim() == 3 && B_t.size(0) > 0 && B_t.size(1) == r, kCpuName,
              ": B_t must be a non-empty (n_b, r, d_out) with r = ", r, ", got shape ", B_t.sizes());
  check_cpu_tensor(out, "out");
  check_cpu_shape(out, "out", {T, B_t.size(2)}, "(T, d_out)");
  TORCH_CHECK(U.has_value() == u_idx.has_value(), kCpuName, ": U and u_idx must be given together");
  if (U.has_value()) {
    check_cpu_tensor(*U, "U");
    TORCH_CHECK(U->dim() == 3 && U->size(0) > 0 && U->size(1) == r && U->size(2) == r, kCpuName,
                ": U must be a non-empty (n_u, r, r) with r = ", r, ", got shape ", U->sizes());
  }
  if (row_scale.has_value()) {
    check_cpu_tensor(*row_scale, "row_scale");
    check_cpu_shape(*row_scale, "row_scale", {T}, "(T,)");
  }
  check_cpu_index(a_idx, "a_idx", A.size(0), a_idx, T);
  check_cpu_index(b_idx, "b_idx", B_t.size(0), a_idx, T);
  if (u_idx.has_value()) check_cpu_index(*u_idx, "u_idx", U->size(0), a_idx, T);
  check_cpu_order(order_a, "order_a", a_idx, a_idx, T);
  check_cpu_order(order_b, "order_b", b_idx, a_idx, T);
  return routed_forward_cpu_kernels(
      CpuForwardInputs{x, A, B_t, U, row_scale, scale, a_idx, b_idx, u_idx, order_a, order_b, out});
}

#ifndef LORA_ROUTE_CPU_ONLY
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

#endif  // LORA_ROUTE_CPU_ONLY

}  // namespace lora_route

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lora_route kernels: the routed LoRA forward on CUDA (segment-gathered SGMV and per-row gather BGMV) and on "
            "CPU (bank-shared row groups).";
#ifndef LORA_ROUTE_CPU_ONLY
  m.def("routed_forward", &lora_route::routed_forward,
        "Adds scale·row_scale_t·B[b]·U[u]·A[a]·x_t into out (T, d_out) in place for every active row of the plan "
        "and returns z = A[a]·x (T, r), zero on inactive rows. gather=True runs the per-row (decode) kernels, "
        "gather=False the segment-tiled (prefill/training) kernels.",
        py::arg("x"), py::arg("A"), py::arg("B"), py::arg("U"), py::arg("row_scale"), py::arg("scale"),
        py::arg("row_order"), py::arg("segment_starts"), py::arg("segment_routes"), py::arg("out"),
        py::arg("gather"));
#endif
  m.def("routed_forward_cpu", &lora_route::routed_forward_cpu,
        "Adds scale·row_scale_t·B[b]·U[u]·A[a]·x_t into out (T, d_out) in place for every active row (float32 CPU "
        "tensors) and returns z = A[a]·x (T, r), zero on inactive rows. B_t is B transposed to (n_b, r, d_out); "
        "order_a and order_b list the active rows sorted by a_idx and by b_idx.",
        py::arg("x"), py::arg("A"), py::arg("B_t"), py::arg("U"), py::arg("row_scale"), py::arg("scale"),
        py::arg("a_idx"), py::arg("b_idx"), py::arg("u_idx"), py::arg("order_a"), py::arg("order_b"),
        py::arg("out"));
}
