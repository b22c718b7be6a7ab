// The relaxed permutation of Dao et al. (2019), fused: forward and backward of one row at a time, every level in
// cache, instead of the dozen full-size temporaries (a separated copy, a flipped copy, two blends per level, and
// as many again in autograd's backward) that the PyTorch composition writes.
//
// x is (R, n) rows, probs (R / B, levels, 3) (trial t owns rows [t B, (t + 1) B)). Level l acts on blocks of size
// m = n / 2^l (m >= 4, h = m / 2) of every row, with the trial's probabilities (p0, p1, p2):
//   separate:  y = lerp(x, S x, p0),   (S x)[j] = x[2 j], (S x)[h + j] = x[2 j + 1]   (j < h)
//   reverse:   z[j]     = lerp(y[j], y[h - 1 - j], p1)
//              z[h + j] = lerp(y[h + j], y[m - 1 - j], p2)
// (lerp(a, b, w) = a + w (b - a), as torch.lerp). The backward recomputes each level's blend y from its input
// (kept per row), and sums the probability gradients in the working precision within a block, in double across
// blocks and then over the rows of a trial in row order (deterministic, whatever the thread count).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace twiddle_relaxed {

inline std::vector<int64_t> level_sizes(int64_t n) {
  std::vector<int64_t> sizes;
  for (int64_t m = n; m >= 4; m /= 2) sizes.push_back(m);
  return sizes;
}

// y = lerp(x, S x, p0) on one row (x and y distinct)
template <typename T>
inline void separate(const T* x, T* y, int64_t n, int64_t m, T p0) {
  const int64_t h = m / 2;
  for (int64_t o = 0; o < n; o += m) {
    const T* xb = x + o;
    T* yb = y + o;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      yb[j] = xb[j] + p0 * (xb[2 * j] - xb[j]);
      yb[h + j] = xb[h + j] + p0 * (xb[2 * j + 1] - xb[h + j]);
    }
  }
}

// z = the two half reversals of y, blended (y and z distinct)
template <typename T>
inline void reverse_halves(const T* y, T* z, int64_t n, int64_t m, T p1, T p2) {
  const int64_t h = m / 2;
  for (int64_t o = 0; o < n; o += m) {
    const T* yb = y + o;
    T* zb = z + o;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      zb[j] = yb[j] + p1 * (yb[h - 1 - j] - yb[j]);
      zb[h + j] = yb[h + j] + p2 * (yb[m - 1 - j] - yb[h + j]);
    }
  }
}

// One level on one row: out = reverse(separate(in)) (in and out may be the same row), y the row-sized scratch for
// the blend between
template <typename T>
inline void apply_level(const T* in, T* y, T* out, int64_t n, int64_t m, const T* p) {
  separate(in, y, n, m, p[0]);
  reverse_halves(y, out, n, m, p[1], p[2]);
}

template <typename T>
void forward_rows(const T* x, const T* probs, T* out, int64_t R, int64_t B, int64_t n) {
  const std::vector<int64_t> sizes = level_sizes(n);
  const int64_t levels = static_cast<int64_t>(sizes.size());
  at::parallel_for(0, R, std::max<int64_t>(1, 4096 / n), [&](int64_t begin, int64_t end) {
    std::vector<T> y(n);
    for (int64_t r = begin; r < end; ++r) {
      const T* p = probs + (r / B) * levels * 3;
      T* z = out + r * n;
      std::copy(x + r * n, x + (r + 1) * n, z);
      for (int64_t l = 0; l < levels; ++l) apply_level(z, y.data(), z, n, sizes[l], p + 3 * l);
    }
  });
}

template <typename T>
void backward_rows(const T* x, const T* probs, const T* grad, T* gx, T* gprobs, int64_t R, int64_t B, int64_t n) {
  const std::vector<int64_t> sizes = level_sizes(n);
  const int64_t levels = static_cast<int64_t>(sizes.size());
  std::vector<double> row_gp(R * levels * 3);  // per-row probability gradients
  at::parallel_for(0, R, std::max<int64_t>(1, 1024 / n), [&](int64_t begin, int64_t end) {
    std::vector<T> inputs(levels * n), y(n), gy(n);
    for (int64_t r = begin; r < end; ++r) {
      const T* p = probs + (r / B) * levels * 3;
      double* gp = row_gp.data() + r * levels * 3;
      // forward, keeping every level's input
      std::copy(x + r * n, x + (r + 1) * n, inputs.begin());
      for (int64_t l = 0; l + 1 < levels; ++l)
        apply_level(inputs.data() + l * n, y.data(), inputs.data() + (l + 1) * n, n, sizes[l], p + 3 * l);
      T* g = gx + r * n;  // the running gradient: w.r.t. the current level's output, then its input
      std::copy(grad + r * n, grad + (r + 1) * n, g);
      for (int64_t l = levels - 1; l >= 0; --l) {
        const int64_t m = sizes[l], h = m / 2;
        const T p0 = p[3 * l], p1 = p[3 * l + 1], p2 = p[3 * l + 2];
        const T* xl = inputs.data() + l * n;
        separate(xl, y.data(), n, m, p0);
        // sums in T within a block (vectorized), in double across blocks
        double s0 = 0, s1 = 0, s2 = 0;
        for (int64_t o = 0; o < n; o += m) {
          const T* yb = y.data() + o;
          const T* gb = g + o;
          T* gyb = gy.data() + o;
          T b1 = 0, b2 = 0;
#pragma omp simd reduction(+ : b1, b2)
          for (int64_t j = 0; j < h; ++j) {
            // z[j] = (1 - p1) y[j] + p1 y[h-1-j]: the reversal is its own transpose
            gyb[j] = gb[j] + p1 * (gb[h - 1 - j] - gb[j]);
            gyb[h + j] = gb[h + j] + p2 * (gb[m - 1 - j] - gb[h + j]);
            b1 += gb[j] * (yb[h - 1 - j] - yb[j]);
            b2 += gb[h + j] * (yb[m - 1 - j] - yb[h + j]);
          }
          s1 += b1;
          s2 += b2;
        }
        for (int64_t o = 0; o < n; o += m) {
          const T* xb = xl + o;
          const T* gyb = gy.data() + o;
          T* gb = g + o;
          T b0 = 0;
#pragma omp simd reduction(+ : b0)
          for (int64_t j = 0; j < h; ++j) {
            b0 += gyb[j] * (xb[2 * j] - xb[j]) + gyb[h + j] * (xb[2 * j + 1] - xb[h + j]);
            // (1 - p0) gy + p0 S^T gy: entry 2j takes gy[j], entry 2j+1 takes gy[h+j]
            gb[2 * j] = gyb[2 * j] + p0 * (gyb[j] - gyb[2 * j]);
            gb[2 * j + 1] = gyb[2 * j + 1] + p0 * (gyb[h + j] - gyb[2 * j + 1]);
          }
          s0 += b0;
        }
        gp[3 * l] = s0;
        gp[3 * l + 1] = s1;
        gp[3 * l + 2] = s2;
      }
    }
  });
  const int64_t trials = R / B;
  for (int64_t t = 0; t < trials; ++t)
    for (int64_t e = 0; e < levels * 3; ++e) {
      double s = 0;
      for (int64_t b = 0; b < B; ++b) s += row_gp[(t * B + b) * levels * 3 + e];
      gprobs[t * levels * 3 + e] = static_cast<T>(s);
    }
}

void check(const at::Tensor& x, const at::Tensor& probs) {
  TORCH_CHECK(x.dim() == 3, "x: expected (trials, rows, n), got ", x.dim(), " dimensions");
  const int64_t n = x.size(2);
  TORCH_CHECK(n >= 4 && (n & (n - 1)) == 0, "x: n must be a power of two >= 4, got ", n);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x: expected float32 or float64");
  TORCH_CHECK(probs.scalar_type() == x.scalar_type(), "probs must have the dtype of x");
  const int64_t levels = static_cast<int64_t>(level_sizes(n).size());
  TORCH_CHECK(probs.dim() == 3 && probs.size(0) == x.size(0) && probs.size(1) == levels && probs.size(2) == 3,
              "probs: expected (", x.size(0), ", ", levels, ", 3)");
  TORCH_CHECK(x.device().is_cpu() && probs.device().is_cpu(), "relaxed_permute: CPU tensors expected");
}

at::Tensor relaxed_permute(const at::Tensor& x, const at::Tensor& probs) {
  check(x, probs);
  const at::Tensor xc = x.contiguous(), pc = probs.contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t T = x.size(0), B = x.size(1), n = x.size(2);
  if (T * B == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_relaxed_permute", [&] {
    forward_rows<scalar_t>(xc.data_ptr<scalar_t>(), pc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), T * B, B,
                           n);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> relaxed_permute_backward(const at::Tensor& x, const at::Tensor& probs,
                                                            const at::Tensor& grad) {
  check(x, probs);
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad: expected the shape of x");
  const at::Tensor xc = x.contiguous(), pc = probs.contiguous(), gc = grad.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty_like(xc);
  at::Tensor gp = at::zeros_like(pc);
  const int64_t T = x.size(0), B = x.size(1), n = x.size(2);
  if (T * B == 0) return {gx, gp};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_relaxed_permute_backward", [&] {
    backward_rows<scalar_t>(xc.data_ptr<scalar_t>(), pc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                            gx.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), T * B, B, n);
  });
  return {gx, gp};
}

}  // namespace twiddle_relaxed

TORCH_LIBRARY_FRAGMENT(twiddle, m) {
  m.def("relaxed_permute(Tensor x, Tensor probs) -> Tensor");
  m.def("relaxed_permute_backward(Tensor x, Tensor probs, Tensor grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(twiddle, CPU, m) {
  m.impl("relaxed_permute", &twiddle_relaxed::relaxed_permute);
  m.impl("relaxed_permute_backward", &twiddle_relaxed::relaxed_permute_backward);
}
