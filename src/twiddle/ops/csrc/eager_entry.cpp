// The extension's Python module: the butterfly op, called through the dispatcher from C++.
//
// torch.ops.twiddle.butterfly_multiply binds its arguments against the op's schema on every call (about 2 us on the
// development machine, a quarter of a batch-1 call at n = 1024). This entry takes typed arguments through pybind11
// and calls the same op through the same dispatcher, so autograd (the C++ autograd kernel), the profiler, the JIT
// tracer and __torch_dispatch__ modes see the same op. It does not look for __torch_function__ overrides and is
// opaque to torch.compile: twiddle/ops/fused_cpu.py calls it only outside compilation and when no argument or mode
// overrides torch functions, and torch.ops otherwise.
//
// Complex tensors (complex twiddles, x complex or real of the same precision, a complex bias) are handed to the op
// as their real views and the result viewed back as complex here, with the same at::view_as_real /
// at::view_as_complex calls (autograd records them as it would from Python) but without a Python round trip for
// each (about 10 us less per complex call at batch 1).
#include <torch/extension.h>

namespace twiddle_cpu {
int64_t set_blocked_backward_bytes(int64_t bytes);  // butterfly_cpu.cpp
}  // namespace twiddle_cpu

namespace {

at::Tensor call_op(const at::Tensor& twiddle, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                   bool increasing_stride, bool transpose, bool conjugate, int64_t out_size,
                   const std::optional<at::Tensor>& in_perm, const std::optional<at::Tensor>& out_perm) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("twiddle::butterfly_multiply", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               bool, bool, bool, int64_t, const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&)>();
  return op.call(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm, out_perm);
}

// A complex tensor's (..., 2) real view; a conjugate view is materialized first (view_as_real refuses it).
at::Tensor real_view(const at::Tensor& t) { return at::view_as_real(t.is_conj() ? t.resolve_conj() : t); }

at::Tensor butterfly_multiply(const at::Tensor& twiddle, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                              bool increasing_stride, bool transpose, bool conjugate, int64_t out_size,
                              const std::optional<at::Tensor>& in_perm, const std::optional<at::Tensor>& out_perm) {
  if (!twiddle.is_complex()) {
    return call_op(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm, out_perm);
  }
  TORCH_CHECK(!bias.has_value() || !bias->defined() || bias->is_complex(),
              "complex twiddles need a complex bias (the caller promotes it)");
  std::optional<at::Tensor> bias_view;
  if (bias.has_value() && bias->defined()) bias_view = real_view(*bias);
  // a real x of the twiddles' precision goes in as it is (the kernel reads it as x + 0i)
  return at::view_as_complex(call_op(real_view(twiddle), x.is_complex() ? real_view(x) : x, bias_view,
                                     increasing_stride, transpose, conjugate, out_size, in_perm, out_perm));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("butterfly_multiply", &butterfly_multiply,
        "torch.ops.twiddle.butterfly_multiply(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, "
        "in_perm, out_perm), for eager calls; complex tensors are passed as their real views and the result viewed "
        "back",
        py::arg("twiddle"), py::arg("x"), py::arg("bias"), py::arg("increasing_stride"), py::arg("transpose"),
        py::arg("conjugate"), py::arg("out_size"), py::arg("in_perm") = py::none(), py::arg("out_perm") = py::none(),
        py::call_guard<py::gil_scoped_release>());
  m.def("_set_blocked_backward_bytes", &twiddle_cpu::set_blocked_backward_bytes,
        "Backward calls whose plain lane tiles would keep more bytes of activations than this run blocked (in "
        "cache-sized phases); returns the previous threshold. For tests and benchmarks: the results are the same "
        "bit for bit either way.",
        py::arg("bytes"));
}
