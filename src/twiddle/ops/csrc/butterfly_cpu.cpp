// Fused CPU butterfly multiply for twiddle.
//
// One batch tile of kLanes rows is transposed into a buffer buf[position][lane] that stays in cache while
// every factor is applied to it, so memory is read and written once instead of once per factor. Each 2x2 block
// updates kLanes rows with the same four scalars: the lane loop is a plain vector loop for any stride.
// Tiles are spread over threads with at::parallel_for (it honours torch.set_num_threads).
//
// Twiddles arrive "prepared" by the Python wrapper: the factors of every stack in application order, already
// reversed/transposed/conjugated as the call requires, in structure-of-arrays layout
//   real:    (nstacks, F, 4, n/2)      entries a, b, c, d of block i at [k, f, 0..3, i]
//   complex: (nstacks, F, 4, 2, n/2)   real and imaginary parts split
// Complex data arrive as real views (..., 2). Input modes: shared (every stack reads the same zero-padded x)
// or split (stack k reads columns [k n, (k+1) n)). Output modes: concat (stack k writes columns [k n, (k+1) n))
// or sum (all stacks add into columns [0, n)). The first out_size columns are returned.
//
// The backward recomputes each tile's per-factor activations in a per-thread buffer (nothing is kept between
// forward and backward) and returns the input gradient and the twiddle gradient in one pass.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

namespace twiddle_cpu {

constexpr int64_t kLanes = 16;

struct Plan {
  int64_t nstacks, F, n, half;
  bool complex;
  int64_t comps;          // 1 (real) or 2 (complex): numbers per entry
  int64_t tw_factor;      // numbers per factor in the twiddle tensor
  bool split_input, sum_output;
  int64_t in_size, out_size, batch;
  std::vector<int64_t> strides;
};

// ------------------------------------------------------------------------------------------------ factors
template <typename T>
inline void factor_real(T* __restrict buf, const T* __restrict tw, int64_t n, int64_t s) {
  const int64_t h = n / 2;
  const T* A = tw;
  const T* B = tw + h;
  const T* C = tw + 2 * h;
  const T* D = tw + 3 * h;
  int64_t i = 0;
  for (int64_t g = 0; g < n; g += 2 * s) {
    for (int64_t r = 0; r < s; ++r, ++i) {
      T* __restrict xp = buf + (g + r) * kLanes;
      T* __restrict xq = xp + s * kLanes;
      const T a = A[i], b = B[i], c = C[i], d = D[i];
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const T u = xp[l], v = xq[l];
        xp[l] = a * u + b * v;
        xq[l] = c * u + d * v;
      }
    }
  }
}

// complex buffer: position p holds kLanes real parts then kLanes imaginary parts.
template <typename T>
inline void factor_complex(T* __restrict buf, const T* __restrict tw, int64_t n, int64_t s) {
  const int64_t h = n / 2;
  const T *Ar = tw, *Ai = tw + h, *Br = tw + 2 * h, *Bi = tw + 3 * h;
  const T *Cr = tw + 4 * h, *Ci = tw + 5 * h, *Dr = tw + 6 * h, *Di = tw + 7 * h;
  int64_t i = 0;
  for (int64_t g = 0; g < n; g += 2 * s) {
    for (int64_t r = 0; r < s; ++r, ++i) {
      T* __restrict pr = buf + (g + r) * 2 * kLanes;
      T* __restrict pi = pr + kLanes;
      T* __restrict qr = pr + s * 2 * kLanes;
      T* __restrict qi = qr + kLanes;
      const T ar = Ar[i], ai = Ai[i], br = Br[i], bi = Bi[i];
      const T cr = Cr[i], ci = Ci[i], dr = Dr[i], di = Di[i];
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const T ur = pr[l], ui = pi[l], vr = qr[l], vi = qi[l];
        pr[l] = ar * ur - ai * ui + br * vr - bi * vi;
        pi[l] = ar * ui + ai * ur + br * vi + bi * vr;
        qr[l] = cr * ur - ci * ui + dr * vr - di * vi;
        qi[l] = cr * ui + ci * ur + dr * vi + di * vr;
      }
    }
  }
}

// Backward through one factor: g (gradient w.r.t. its output) becomes the gradient w.r.t. its input u, and
// the twiddle gradient accumulates g * conj(u) summed over lanes.
template <typename T>
inline void factor_real_backward(T* __restrict g, const T* __restrict u, const T* __restrict tw,
                                 T* __restrict dtw, int64_t n, int64_t s) {
  const int64_t h = n / 2;
  const T *A = tw, *B = tw + h, *C = tw + 2 * h, *D = tw + 3 * h;
  T *dA = dtw, *dB = dtw + h, *dC = dtw + 2 * h, *dD = dtw + 3 * h;
  int64_t i = 0;
  for (int64_t gg = 0; gg < n; gg += 2 * s) {
    for (int64_t r = 0; r < s; ++r, ++i) {
      T* __restrict gp = g + (gg + r) * kLanes;
      T* __restrict gq = gp + s * kLanes;
      const T* __restrict up = u + (gg + r) * kLanes;
      const T* __restrict uq = up + s * kLanes;
      const T a = A[i], b = B[i], c = C[i], d = D[i];
      T sa = 0, sb = 0, sc = 0, sd = 0;
#pragma omp simd reduction(+ : sa, sb, sc, sd)
      for (int64_t l = 0; l < kLanes; ++l) {
        const T x0 = up[l], x1 = uq[l], g0 = gp[l], g1 = gq[l];
        sa += g0 * x0;
        sb += g0 * x1;
        sc += g1 * x0;
        sd += g1 * x1;
        gp[l] = a * g0 + c * g1;
        gq[l] = b * g0 + d * g1;
      }
      dA[i] += sa;
      dB[i] += sb;
      dC[i] += sc;
      dD[i] += sd;
    }
  }
}

template <typename T>
inline void factor_complex_backward(T* __restrict g, const T* __restrict u, const T* __restrict tw,
                                    T* __restrict dtw, int64_t n, int64_t s) {
  const int64_t h = n / 2;
  const T *Ar = tw, *Ai = tw + h, *Br = tw + 2 * h, *Bi = tw + 3 * h;
  const T *Cr = tw + 4 * h, *Ci = tw + 5 * h, *Dr = tw + 6 * h, *Di = tw + 7 * h;
  int64_t i = 0;
  for (int64_t gg = 0; gg < n; gg += 2 * s) {
    for (int64_t r = 0; r < s; ++r, ++i) {
      T* __restrict gpr = g + (gg + r) * 2 * kLanes;
      T* __restrict gpi = gpr + kLanes;
      T* __restrict gqr = gpr + s * 2 * kLanes;
      T* __restrict gqi = gqr + kLanes;
      const T* __restrict upr = u + (gg + r) * 2 * kLanes;
      const T* __restrict upi = upr + kLanes;
      const T* __restrict uqr = upr + s * 2 * kLanes;
      const T* __restrict uqi = uqr + kLanes;
      const T ar = Ar[i], ai = Ai[i], br = Br[i], bi = Bi[i];
      const T cr = Cr[i], ci = Ci[i], dr = Dr[i], di = Di[i];
      T sar = 0, sai = 0, sbr = 0, sbi = 0, scr = 0, sci = 0, sdr = 0, sdi = 0;
#pragma omp simd reduction(+ : sar, sai, sbr, sbi, scr, sci, sdr, sdi)
      for (int64_t l = 0; l < kLanes; ++l) {
        const T xr0 = upr[l], xi0 = upi[l], xr1 = uqr[l], xi1 = uqi[l];
        const T g0r = gpr[l], g0i = gpi[l], g1r = gqr[l], g1i = gqi[l];
        // dT += g * conj(x)
        sar += g0r * xr0 + g0i * xi0;
        sai += g0i * xr0 - g0r * xi0;
        sbr += g0r * xr1 + g0i * xi1;
        sbi += g0i * xr1 - g0r * xi1;
        scr += g1r * xr0 + g1i * xi0;
        sci += g1i * xr0 - g1r * xi0;
        sdr += g1r * xr1 + g1i * xi1;
        sdi += g1i * xr1 - g1r * xi1;
        // g_in = conj(T)^T g_out
        gpr[l] = ar * g0r + ai * g0i + cr * g1r + ci * g1i;
        gpi[l] = ar * g0i - ai * g0r + cr * g1i - ci * g1r;
        gqr[l] = br * g0r + bi * g0i + dr * g1r + di * g1i;
        gqi[l] = br * g0i - bi * g0r + dr * g1i - di * g1r;
      }
      dtw[i] += sar;
      dtw[h + i] += sai;
      dtw[2 * h + i] += sbr;
      dtw[3 * h + i] += sbi;
      dtw[4 * h + i] += scr;
      dtw[5 * h + i] += sci;
      dtw[6 * h + i] += sdr;
      dtw[7 * h + i] += sdi;
    }
  }
}

// ------------------------------------------------------------------------------------------------ tiles
// Load columns [col0, col0 + count) of rows [row0, row0 + rows) of `src` (row stride ld, comps numbers per
// entry) into buf positions [0, count); every other position and lane is zero. The transpose runs in
// kLanes x kLanes blocks so that source and destination lines stay in L1.
template <typename T>
inline void load_tile(T* __restrict buf, const T* __restrict src, int64_t ld, int64_t row0, int64_t rows,
                      int64_t col0, int64_t count, const Plan& P) {
  const int64_t width = P.comps * kLanes;
  if (count < P.n) std::memset(buf + count * width, 0, sizeof(T) * (P.n - count) * width);
  if (rows < kLanes) {
    for (int64_t p = 0; p < count; ++p)
      for (int64_t c = 0; c < P.comps; ++c)
        std::memset(buf + p * width + c * kLanes + rows, 0, sizeof(T) * (kLanes - rows));
  }
  for (int64_t p0 = 0; p0 < count; p0 += kLanes) {
    const int64_t pc = std::min(kLanes, count - p0);
    T* __restrict blk = buf + p0 * width;
    for (int64_t l = 0; l < rows; ++l) {
      const T* __restrict row = src + ((row0 + l) * ld + col0 + p0) * P.comps;
      if (P.comps == 1) {
        for (int64_t j = 0; j < pc; ++j) blk[j * kLanes + l] = row[j];
      } else {
        for (int64_t j = 0; j < pc; ++j) {
          blk[j * width + l] = row[2 * j];
          blk[j * width + kLanes + l] = row[2 * j + 1];
        }
      }
    }
  }
}

// Write (or add) buf positions [0, count) to columns [col0, col0 + count) of rows [row0, row0 + rows).
template <typename T>
inline void store_tile(const T* __restrict buf, T* __restrict dst, int64_t ld, int64_t row0, int64_t rows,
                       int64_t col0, int64_t count, bool add, const Plan& P) {
  const int64_t width = P.comps * kLanes;
  for (int64_t p0 = 0; p0 < count; p0 += kLanes) {
    const int64_t pc = std::min(kLanes, count - p0);
    const T* __restrict blk = buf + p0 * width;
    for (int64_t l = 0; l < rows; ++l) {
      T* __restrict row = dst + ((row0 + l) * ld + col0 + p0) * P.comps;
      if (P.comps == 1) {
        if (add) {
          for (int64_t j = 0; j < pc; ++j) row[j] += blk[j * kLanes + l];
        } else {
          for (int64_t j = 0; j < pc; ++j) row[j] = blk[j * kLanes + l];
        }
      } else {
        for (int64_t j = 0; j < pc; ++j) {
          const T re = blk[j * width + l], im = blk[j * width + kLanes + l];
          if (add) {
            row[2 * j] += re;
            row[2 * j + 1] += im;
          } else {
            row[2 * j] = re;
            row[2 * j + 1] = im;
          }
        }
      }
    }
  }
}

// Columns of the input (ld = in_size) that stack k reads, and of the output (ld = out_size) it writes.
inline std::pair<int64_t, int64_t> input_cols(const Plan& P, int64_t k) {
  if (!P.split_input) return {0, std::min(P.in_size, P.n)};
  const int64_t c0 = k * P.n;
  return {c0, std::max<int64_t>(0, std::min(P.in_size, c0 + P.n) - c0)};
}
inline std::pair<int64_t, int64_t> output_cols(const Plan& P, int64_t k) {
  if (P.sum_output) return {0, std::min(P.out_size, P.n)};
  const int64_t c0 = k * P.n;
  return {c0, std::max<int64_t>(0, std::min(P.out_size, c0 + P.n) - c0)};
}

template <typename T>
inline void apply_all(T* buf, const T* tw, const Plan& P) {
  for (int64_t f = 0; f < P.F; ++f) {
    if (P.complex)
      factor_complex<T>(buf, tw + f * P.tw_factor, P.n, P.strides[f]);
    else
      factor_real<T>(buf, tw + f * P.tw_factor, P.n, P.strides[f]);
  }
}

template <typename T>
void forward_impl(const T* tw, const T* x, T* out, const Plan& P) {
  const int64_t ntiles = (P.batch + kLanes - 1) / kLanes;
  const int64_t buf_size = P.n * P.comps * kLanes;
  at::parallel_for(0, ntiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(buf_size);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row0 = t * kLanes, rows = std::min(kLanes, P.batch - row0);
      for (int64_t k = 0; k < P.nstacks; ++k) {
        auto [ic0, icount] = input_cols(P, k);
        auto [oc0, ocount] = output_cols(P, k);
        if (ocount == 0) continue;
        load_tile<T>(buf.data(), x, P.in_size, row0, rows, ic0, icount, P);
        apply_all<T>(buf.data(), tw + k * P.F * P.tw_factor, P);
        store_tile<T>(buf.data(), out, P.out_size, row0, rows, oc0, ocount, P.sum_output && k > 0, P);
      }
    }
  });
}

template <typename T>
void backward_impl(const T* tw, const T* x, const T* gy, T* gx, T* gtw, const Plan& P) {
  const int64_t ntiles = (P.batch + kLanes - 1) / kLanes;
  const int64_t buf_size = P.n * P.comps * kLanes;
  const int64_t tw_size = P.nstacks * P.F * P.tw_factor;
  const int nthreads = at::get_num_threads();
  std::vector<std::vector<T>> partial(nthreads);
  at::parallel_for(0, ntiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T>& acc = partial[at::get_thread_num()];
    if (acc.empty()) acc.assign(tw_size, T(0));
    std::vector<T> acts(std::max<int64_t>(P.F, 1) * buf_size);
    std::vector<T> g(buf_size);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row0 = t * kLanes, rows = std::min(kLanes, P.batch - row0);
      for (int64_t k = 0; k < P.nstacks; ++k) {
        auto [ic0, icount] = input_cols(P, k);
        auto [oc0, ocount] = output_cols(P, k);
        const T* twk = tw + k * P.F * P.tw_factor;
        // recompute the input of every factor
        load_tile<T>(acts.data(), x, P.in_size, row0, rows, ic0, icount, P);
        for (int64_t f = 0; f + 1 < P.F; ++f) {
          T* next = acts.data() + (f + 1) * buf_size;
          std::memcpy(next, acts.data() + f * buf_size, sizeof(T) * buf_size);
          if (P.complex)
            factor_complex<T>(next, twk + f * P.tw_factor, P.n, P.strides[f]);
          else
            factor_real<T>(next, twk + f * P.tw_factor, P.n, P.strides[f]);
        }
        load_tile<T>(g.data(), gy, P.out_size, row0, rows, oc0, ocount, P);
        for (int64_t f = P.F - 1; f >= 0; --f) {
          const T* u = acts.data() + f * buf_size;
          T* dtw = acc.data() + (k * P.F + f) * P.tw_factor;
          if (P.complex)
            factor_complex_backward<T>(g.data(), u, twk + f * P.tw_factor, dtw, P.n, P.strides[f]);
          else
            factor_real_backward<T>(g.data(), u, twk + f * P.tw_factor, dtw, P.n, P.strides[f]);
        }
        if (icount > 0)
          store_tile<T>(g.data(), gx, P.in_size, row0, rows, ic0, icount, !P.split_input && k > 0, P);
      }
    }
  });
  std::fill(gtw, gtw + tw_size, T(0));
  for (const auto& acc : partial) {
    if (acc.empty()) continue;
    for (int64_t j = 0; j < tw_size; ++j) gtw[j] += acc[j];
  }
}

// ------------------------------------------------------------------------------------------------ ops
Plan make_plan(const at::Tensor& twiddle, const at::Tensor& x, at::IntArrayRef strides, int64_t n,
               bool split_input, bool sum_output, int64_t out_size) {
  Plan P;
  P.complex = twiddle.dim() == 5;
  TORCH_CHECK(twiddle.dim() == 4 || twiddle.dim() == 5, "twiddle: expected the prepared 4-D or 5-D layout");
  TORCH_CHECK(x.dim() == (P.complex ? 3 : 2), "x: expected (batch, features", P.complex ? ", 2)" : ")");
  TORCH_CHECK(twiddle.scalar_type() == x.scalar_type(), "twiddle and x must have the same dtype");
  TORCH_CHECK(twiddle.device().is_cpu() && x.device().is_cpu(), "the fused CPU kernel needs CPU tensors");
  P.nstacks = twiddle.size(0);
  P.F = twiddle.size(1);
  P.n = n;
  P.half = n / 2;
  P.comps = P.complex ? 2 : 1;
  P.tw_factor = 4 * P.comps * P.half;
  TORCH_CHECK(twiddle.size(-1) == P.half, "twiddle: last dimension must be n/2");
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == P.F, "strides: one per factor expected");
  P.strides.assign(strides.begin(), strides.end());
  for (int64_t s : P.strides) TORCH_CHECK(s >= 1 && 2 * s <= n && (s & (s - 1)) == 0, "bad stride ", s);
  P.split_input = split_input;
  P.sum_output = sum_output;
  P.batch = x.size(0);
  P.in_size = x.size(1);
  P.out_size = out_size;
  TORCH_CHECK(P.in_size <= (split_input ? P.nstacks * n : n), "x: too many features");
  TORCH_CHECK(out_size >= 1 && out_size <= (sum_output ? n : P.nstacks * n), "out_size out of range");
  return P;
}

at::Tensor butterfly_apply(const at::Tensor& twiddle, const at::Tensor& x, at::IntArrayRef strides, int64_t n,
                           bool split_input, bool sum_output, int64_t out_size) {
  const Plan P = make_plan(twiddle, x, strides, n, split_input, sum_output, out_size);
  at::Tensor tw = twiddle.contiguous();
  at::Tensor xc = x.contiguous();
  std::vector<int64_t> shape = {P.batch, out_size};
  if (P.complex) shape.push_back(2);
  at::Tensor out = at::empty(shape, x.options());
  if (P.batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_butterfly_apply", [&] {
    forward_impl<scalar_t>(tw.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), P);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> butterfly_apply_backward(const at::Tensor& twiddle, const at::Tensor& x,
                                                            const at::Tensor& grad, at::IntArrayRef strides,
                                                            int64_t n, bool split_input, bool sum_output,
                                                            int64_t out_size) {
  const Plan P = make_plan(twiddle, x, strides, n, split_input, sum_output, out_size);
  TORCH_CHECK(grad.size(0) == P.batch && grad.size(1) == out_size, "grad: shape mismatch");
  at::Tensor tw = twiddle.contiguous();
  at::Tensor xc = x.contiguous();
  at::Tensor gc = grad.contiguous().to(x.scalar_type());
  at::Tensor gx = at::zeros_like(xc);
  at::Tensor gtw = at::zeros_like(tw);
  if (P.batch == 0) return {gtw, gx};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_butterfly_apply_backward", [&] {
    backward_impl<scalar_t>(tw.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                            gx.data_ptr<scalar_t>(), gtw.data_ptr<scalar_t>(), P);
  });
  return {gtw, gx};
}

}  // namespace twiddle_cpu

TORCH_LIBRARY(twiddle, m) {
  m.def("butterfly_apply(Tensor twiddle, Tensor x, int[] strides, int n, bool split_input, bool sum_output, "
        "int out_size) -> Tensor");
  m.def("butterfly_apply_backward(Tensor twiddle, Tensor x, Tensor grad, int[] strides, int n, "
        "bool split_input, bool sum_output, int out_size) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(twiddle, CPU, m) {
  m.impl("butterfly_apply", &twiddle_cpu::butterfly_apply);
  m.impl("butterfly_apply_backward", &twiddle_cpu::butterfly_apply_backward);
}
