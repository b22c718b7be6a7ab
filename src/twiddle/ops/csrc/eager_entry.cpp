// The extension's Python module: the butterfly op, called through the dispatcher from C++.
//
// torch.ops.twiddle.butterfly_multiply binds its arguments against the op's schema on every call (about 2 us on the
// development machine, a quarter of a batch-1 call at n = 1024). This entry takes typed arguments through pybind11
// and calls the same op through the same dispatcher, so autograd (the C++ autograd kernel), the profiler, the JIT
// tracer and __torch_dispatch__ modes see the same op. It does not look for __torch_function__ overrides and is
// opaque to torch.compile: twiddle/ops/fused_cpu.py calls it only outside compilation and when no argument or mode
// overrides torch functions, and torch.ops otherwise.
#include <torch/extension.h>

namespace {

at::Tensor butterfly_multiply(const at::Tensor& twiddle, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                              bool increasing_stride, bool transpose, bool conjugate, int64_t out_size) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("twiddle::butterfly_multiply", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               bool, bool, bool, int64_t)>();
  return op.call(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("butterfly_multiply", &butterfly_multiply,
        "torch.ops.twiddle.butterfly_multiply(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size), "
        "for eager calls",
        py::arg("twiddle"), py::arg("x"), py::arg("bias"), py::arg("increasing_stride"), py::arg("transpose"),
        py::arg("conjugate"), py::arg("out_size"), py::call_guard<py::gil_scoped_release>());
}
