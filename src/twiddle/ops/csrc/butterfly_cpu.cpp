// Fused CPU butterfly multiply for twiddle.
//
// One batch tile of kLanes rows is transposed into a buffer buf[position][lane] that stays in cache while
// every factor is applied to it, so memory is read and written once instead of once per factor. Each 2x2 block
// updates kLanes rows with the same four scalars: the lane loop is a plain vector loop for any stride.
// Tiles are spread over threads with at::parallel_for (it honours torch.set_num_threads).
//
// The ops (bottom of the file) first "prepare" the twiddles: the factors of every stack in application order,
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
#include <type_traits>
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

// Work items handed to one thread at least: small batches run inline, without waking the thread pool.
inline int64_t grain_for(const Plan& P, int64_t rows_per_item) {
  const int64_t work = std::max<int64_t>(1, P.nstacks * std::max<int64_t>(P.F, 1) * P.n * rows_per_item);
  return std::max<int64_t>(1, (int64_t(1) << 17) / work);
}

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


// ------------------------------------------------------------------------------------------------ AVX-512
// Row layout for real float32 (n >= 32): no transposes. A group of up to kRows rows is copied into a buffer
// of kRows x n floats (in L1) and every factor updates 16 blocks at a time with one set of twiddle vectors
// shared by all rows of the group. For stride >= 16 the two halves of 16 blocks are contiguous; for stride
// 1, 2, 4, 8 the 32 positions of 16 blocks are split into halves U, V with two-source permutes and merged back.
#if defined(__AVX512F__)
#include <immintrin.h>
#define TWIDDLE_HAVE_AVX512 1

constexpr int64_t kRows = 8;

struct SmallStridePerm {
  __m512i u, v, lo, hi;  // U = perm(X0, u, X1), V = perm(X0, v, X1); X0 = perm(Y0, lo, Y1), X1 = perm(Y0, hi, Y1)
};

inline SmallStridePerm small_stride_perm(int64_t s) {
  alignas(64) int32_t u[16], v[16], out[32];
  for (int j = 0; j < 16; ++j) {
    const int g = j / s, r = j % s;
    u[j] = static_cast<int32_t>(2 * s * g + r);
    v[j] = u[j] + static_cast<int32_t>(s);
    out[u[j]] = j;        // position u[j] comes from Y0[j]
    out[v[j]] = 16 + j;   // position v[j] comes from Y1[j]
  }
  SmallStridePerm P;
  P.u = _mm512_load_si512(u);
  P.v = _mm512_load_si512(v);
  P.lo = _mm512_load_si512(out);
  P.hi = _mm512_load_si512(out + 16);
  return P;
}

// Apply one factor to `rows` rows of length n stored `ld` floats apart.
inline void factor_rows_f32(float* buf, int64_t rows, int64_t ld, const float* tw, int64_t n, int64_t s) {
  const int64_t h = n / 2;
  const float *A = tw, *B = tw + h, *C = tw + 2 * h, *D = tw + 3 * h;
  if (s >= 16) {
    for (int64_t g = 0; g < n; g += 2 * s) {
      for (int64_t r = 0; r < s; r += 16) {
        const int64_t i = g / 2 + r;
        const __m512 a = _mm512_loadu_ps(A + i), b = _mm512_loadu_ps(B + i);
        const __m512 c = _mm512_loadu_ps(C + i), d = _mm512_loadu_ps(D + i);
        for (int64_t q = 0; q < rows; ++q) {
          float* xp = buf + q * ld + g + r;
          const __m512 u = _mm512_loadu_ps(xp), v = _mm512_loadu_ps(xp + s);
          _mm512_storeu_ps(xp, _mm512_fmadd_ps(a, u, _mm512_mul_ps(b, v)));
          _mm512_storeu_ps(xp + s, _mm512_fmadd_ps(c, u, _mm512_mul_ps(d, v)));
        }
      }
    }
    return;
  }
  const SmallStridePerm P = small_stride_perm(s);
  for (int64_t c0 = 0; c0 < n; c0 += 32) {
    const int64_t i = c0 / 2;
    const __m512 a = _mm512_loadu_ps(A + i), b = _mm512_loadu_ps(B + i);
    const __m512 c = _mm512_loadu_ps(C + i), d = _mm512_loadu_ps(D + i);
    for (int64_t q = 0; q < rows; ++q) {
      float* xp = buf + q * ld + c0;
      const __m512 x0 = _mm512_loadu_ps(xp), x1 = _mm512_loadu_ps(xp + 16);
      const __m512 u = _mm512_permutex2var_ps(x0, P.u, x1), v = _mm512_permutex2var_ps(x0, P.v, x1);
      const __m512 y0 = _mm512_fmadd_ps(a, u, _mm512_mul_ps(b, v));
      const __m512 y1 = _mm512_fmadd_ps(c, u, _mm512_mul_ps(d, v));
      _mm512_storeu_ps(xp, _mm512_permutex2var_ps(y0, P.lo, y1));
      _mm512_storeu_ps(xp + 16, _mm512_permutex2var_ps(y0, P.hi, y1));
    }
  }
}

// Backward through one factor for `rows` rows: g (rows x n, gradient w.r.t. the output) becomes the gradient
// w.r.t. the input u; dtw accumulates sum over rows of g * u.
inline void factor_rows_f32_backward(float* g, const float* u, int64_t rows, int64_t ld, const float* tw,
                                     float* dtw, int64_t n, int64_t s) {
  const int64_t h = n / 2;
  const float *A = tw, *B = tw + h, *C = tw + 2 * h, *D = tw + 3 * h;
  float *dA = dtw, *dB = dtw + h, *dC = dtw + 2 * h, *dD = dtw + 3 * h;
  const bool small = s < 16;
  const SmallStridePerm P = small_stride_perm(small ? s : 1);
  const int64_t groups = n / 32;
  for (int64_t k = 0; k < groups; ++k) {
    // block indices i..i+15 and the offsets of their U and V halves
    int64_t i, pu, pv;
    if (small) {
      i = 16 * k;
      pu = 32 * k;
      pv = pu + 16;
    } else {
      const int64_t per = s / 16;  // 16-block chunks per group of 2s positions
      const int64_t g = (k / per) * 2 * s, r = (k % per) * 16;
      i = g / 2 + r;
      pu = g + r;
      pv = pu + s;
    }
    const __m512 a = _mm512_loadu_ps(A + i), b = _mm512_loadu_ps(B + i);
    const __m512 c = _mm512_loadu_ps(C + i), d = _mm512_loadu_ps(D + i);
    __m512 sa = _mm512_setzero_ps(), sb = sa, sc = sa, sd = sa;
    for (int64_t q = 0; q < rows; ++q) {
      float* gq = g + q * ld;
      const float* uq = u + q * ld;
      __m512 g0 = _mm512_loadu_ps(gq + pu), g1 = _mm512_loadu_ps(gq + pv);
      __m512 x0 = _mm512_loadu_ps(uq + pu), x1 = _mm512_loadu_ps(uq + pv);
      if (small) {
        const __m512 gu = _mm512_permutex2var_ps(g0, P.u, g1), gv = _mm512_permutex2var_ps(g0, P.v, g1);
        const __m512 xu = _mm512_permutex2var_ps(x0, P.u, x1), xv = _mm512_permutex2var_ps(x0, P.v, x1);
        g0 = gu; g1 = gv; x0 = xu; x1 = xv;
      }
      sa = _mm512_fmadd_ps(g0, x0, sa);
      sb = _mm512_fmadd_ps(g0, x1, sb);
      sc = _mm512_fmadd_ps(g1, x0, sc);
      sd = _mm512_fmadd_ps(g1, x1, sd);
      __m512 n0 = _mm512_fmadd_ps(a, g0, _mm512_mul_ps(c, g1));
      __m512 n1 = _mm512_fmadd_ps(b, g0, _mm512_mul_ps(d, g1));
      if (small) {
        const __m512 lo = _mm512_permutex2var_ps(n0, P.lo, n1), hi = _mm512_permutex2var_ps(n0, P.hi, n1);
        n0 = lo; n1 = hi;
      }
      _mm512_storeu_ps(gq + pu, n0);
      _mm512_storeu_ps(gq + pv, n1);
    }
    _mm512_storeu_ps(dA + i, _mm512_add_ps(_mm512_loadu_ps(dA + i), sa));
    _mm512_storeu_ps(dB + i, _mm512_add_ps(_mm512_loadu_ps(dB + i), sb));
    _mm512_storeu_ps(dC + i, _mm512_add_ps(_mm512_loadu_ps(dC + i), sc));
    _mm512_storeu_ps(dD + i, _mm512_add_ps(_mm512_loadu_ps(dD + i), sd));
  }
}

// Copy columns [col0, col0 + count) of `rows` rows into buf (rows ld floats apart), zero the rest of each row.
// Buffers use ld = n + 16 so that consecutive rows do not alias in L1 (4 KiB aliasing at n = 1024).
inline void load_rows_f32(float* buf, int64_t ld, const float* src, int64_t ld_src, int64_t row0,
                          int64_t rows, int64_t col0, int64_t count, int64_t n) {
  for (int64_t q = 0; q < rows; ++q) {
    float* dst = buf + q * ld;
    if (count > 0) std::memcpy(dst, src + (row0 + q) * ld_src + col0, sizeof(float) * count);
    if (count < n) std::memset(dst + count, 0, sizeof(float) * (n - count));
  }
}

inline void store_rows_f32(const float* buf, int64_t ld, float* dst, int64_t ld_dst, int64_t row0,
                           int64_t rows, int64_t col0, int64_t count, bool add) {
  for (int64_t q = 0; q < rows; ++q) {
    float* out = dst + (row0 + q) * ld_dst + col0;
    const float* in = buf + q * ld;
    if (add) {
#pragma omp simd
      for (int64_t p = 0; p < count; ++p) out[p] += in[p];
    } else {
      std::memcpy(out, in, sizeof(float) * count);
    }
  }
}
#endif  // __AVX512F__

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


#if defined(TWIDDLE_HAVE_AVX512)
constexpr int64_t kRowsBackward = 8;

void forward_rows_f32(const float* tw, const float* x, float* out, const Plan& P) {
  const int64_t ngroups = (P.batch + kRows - 1) / kRows;
  at::parallel_for(0, ngroups, grain_for(P, kRows), [&](int64_t begin, int64_t end) {
    const int64_t ld = P.n + 16;
    std::vector<float> buf(kRows * ld);
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t row0 = grp * kRows, rows = std::min(kRows, P.batch - row0);
      for (int64_t k = 0; k < P.nstacks; ++k) {
        auto [ic0, icount] = input_cols(P, k);
        auto [oc0, ocount] = output_cols(P, k);
        if (ocount == 0) continue;
        load_rows_f32(buf.data(), ld, x, P.in_size, row0, rows, ic0, icount, P.n);
        for (int64_t f = 0; f < P.F; ++f)
          factor_rows_f32(buf.data(), rows, ld, tw + (k * P.F + f) * P.tw_factor, P.n, P.strides[f]);
        store_rows_f32(buf.data(), ld, out, P.out_size, row0, rows, oc0, ocount, P.sum_output && k > 0);
      }
    }
  });
}

void backward_rows_f32(const float* tw, const float* x, const float* gy, float* gx, float* gtw, const Plan& P) {
  const int64_t R = kRowsBackward;
  const int64_t ngroups = (P.batch + R - 1) / R;
  const int64_t ld = P.n + 16;
  const int64_t slot = R * ld;
  const int64_t tw_size = P.nstacks * P.F * P.tw_factor;
  std::vector<std::vector<float>> partial(at::get_num_threads());
  at::parallel_for(0, ngroups, grain_for(P, R), [&](int64_t begin, int64_t end) {
    std::vector<float>& acc = partial[at::get_thread_num()];
    if (acc.empty()) acc.assign(tw_size, 0.0f);
    std::vector<float> acts(std::max<int64_t>(P.F, 1) * slot);
    std::vector<float> g(slot);
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t row0 = grp * R, rows = std::min(R, P.batch - row0);
      for (int64_t k = 0; k < P.nstacks; ++k) {
        auto [ic0, icount] = input_cols(P, k);
        auto [oc0, ocount] = output_cols(P, k);
        const float* twk = tw + k * P.F * P.tw_factor;
        load_rows_f32(acts.data(), ld, x, P.in_size, row0, rows, ic0, icount, P.n);
        for (int64_t f = 0; f + 1 < P.F; ++f) {
          float* next = acts.data() + (f + 1) * slot;
          std::memcpy(next, acts.data() + f * slot, sizeof(float) * rows * ld);
          factor_rows_f32(next, rows, ld, twk + f * P.tw_factor, P.n, P.strides[f]);
        }
        load_rows_f32(g.data(), ld, gy, P.out_size, row0, rows, oc0, ocount, P.n);
        for (int64_t f = P.F - 1; f >= 0; --f)
          factor_rows_f32_backward(g.data(), acts.data() + f * slot, rows, ld, twk + f * P.tw_factor,
                                   acc.data() + (k * P.F + f) * P.tw_factor, P.n, P.strides[f]);
        if (icount > 0)
          store_rows_f32(g.data(), ld, gx, P.in_size, row0, rows, ic0, icount, !P.split_input && k > 0);
      }
    }
  });
  std::fill(gtw, gtw + tw_size, 0.0f);
  for (const auto& acc : partial)
    for (int64_t j = 0; j < static_cast<int64_t>(acc.size()); ++j) gtw[j] += acc[j];
}
#endif

// The row-layout AVX-512 path handles real float32 with n >= 32; everything else uses lane tiles.
template <typename T>
inline bool use_rows(const Plan& P) {
#if defined(TWIDDLE_HAVE_AVX512)
  return std::is_same_v<T, float> && !P.complex && P.n >= 32;
#else
  (void)P;
  return false;
#endif
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
#if defined(TWIDDLE_HAVE_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    if (use_rows<T>(P)) return forward_rows_f32(tw, x, out, P);
  }
#endif
  const int64_t ntiles = (P.batch + kLanes - 1) / kLanes;
  const int64_t buf_size = P.n * P.comps * kLanes;
  at::parallel_for(0, ntiles, grain_for(P, kLanes), [&](int64_t begin, int64_t end) {
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
#if defined(TWIDDLE_HAVE_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    if (use_rows<T>(P)) return backward_rows_f32(tw, x, gy, gx, gtw, P);
  }
#endif
  const int64_t ntiles = (P.batch + kLanes - 1) / kLanes;
  const int64_t buf_size = P.n * P.comps * kLanes;
  const int64_t tw_size = P.nstacks * P.F * P.tw_factor;
  const int nthreads = at::get_num_threads();
  std::vector<std::vector<T>> partial(nthreads);
  at::parallel_for(0, ntiles, grain_for(P, kLanes), [&](int64_t begin, int64_t end) {
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
// The ops take the twiddle in the user's layout (nstacks, nblocks, log_n, n/2, 2, 2), complex ones as real
// views (..., 2), and do the reordering for transpose/conjugate here, so one call from Python is all it takes.

std::vector<int64_t> factor_strides(int64_t nblocks, int64_t log_n, bool increasing, bool transpose) {
  std::vector<bool> dirs(nblocks);
  for (int64_t b = 0; b < nblocks; ++b) dirs[b] = (b % 2 == 0) ? increasing : !increasing;
  if (transpose) {
    const bool start = !dirs[nblocks - 1];
    for (int64_t b = 0; b < nblocks; ++b) dirs[b] = (b % 2 == 0) ? start : !start;
  }
  std::vector<int64_t> strides;
  for (int64_t b = 0; b < nblocks; ++b)
    for (int64_t f = 0; f < log_n; ++f) strides.push_back(int64_t(1) << (dirs[b] ? f : log_n - 1 - f));
  return strides;
}

// user layout -> factors in application order, structure of arrays: (K, F, 4, h) or (K, F, 4, 2, h)
at::Tensor to_soa(const at::Tensor& raw, bool complex, bool transpose, bool conjugate) {
  const int64_t K = raw.size(0), NB = raw.size(1), L = raw.size(2), h = raw.size(3);
  at::Tensor t = raw;
  if (transpose) t = t.flip({1, 2}).transpose(4, 5);
  if (complex) {
    t = t.reshape({K, NB * L, h, 4, 2}).permute({0, 1, 3, 4, 2}).contiguous();
    if (conjugate) t.select(3, 1).neg_();
  } else {
    t = t.reshape({K, NB * L, h, 4}).permute({0, 1, 3, 2}).contiguous();
  }
  return t;
}

// gradient w.r.t. the structure-of-arrays twiddle -> gradient w.r.t. the user's twiddle
at::Tensor from_soa(at::Tensor g, const at::Tensor& raw, bool complex, bool transpose, bool conjugate) {
  const int64_t K = raw.size(0), NB = raw.size(1), L = raw.size(2), h = raw.size(3);
  if (complex) {
    if (conjugate) g.select(3, 1).neg_();
    g = g.permute({0, 1, 4, 2, 3}).reshape({K, NB, L, h, 2, 2, 2});
  } else {
    g = g.permute({0, 1, 3, 2}).reshape({K, NB, L, h, 2, 2});
  }
  if (transpose) g = g.transpose(4, 5).flip({1, 2});
  return g.contiguous();
}

Plan make_plan(const at::Tensor& twiddle, const at::Tensor& x, bool increasing, bool transpose,
               int64_t out_size) {
  Plan P;
  TORCH_CHECK(twiddle.dim() == 6 || twiddle.dim() == 7,
              "twiddle: expected (nstacks, nblocks, log_n, n/2, 2, 2) or its complex real view (..., 2)");
  P.complex = twiddle.dim() == 7;
  TORCH_CHECK(twiddle.size(4) == 2 && twiddle.size(5) == 2 && (!P.complex || twiddle.size(6) == 2),
              "twiddle: trailing dimensions must be 2 x 2");
  TORCH_CHECK(x.dim() == (P.complex ? 3 : 2), "x: expected (batch, features", P.complex ? ", 2)" : ")");
  TORCH_CHECK(twiddle.scalar_type() == x.scalar_type(), "twiddle and x must have the same dtype");
  TORCH_CHECK(twiddle.device().is_cpu() && x.device().is_cpu(), "the fused CPU kernel needs CPU tensors");
  const int64_t log_n = twiddle.size(2);
  P.nstacks = twiddle.size(0);
  P.n = int64_t(1) << log_n;
  P.half = P.n / 2;
  TORCH_CHECK(twiddle.size(3) == P.half, "twiddle: 4th dimension must be n/2");
  P.F = twiddle.size(1) * log_n;
  P.comps = P.complex ? 2 : 1;
  P.tw_factor = 4 * P.comps * P.half;
  P.strides = factor_strides(twiddle.size(1), log_n, increasing, transpose);
  P.split_input = transpose;
  P.sum_output = transpose;
  P.batch = x.size(0);
  P.in_size = x.size(1);
  P.out_size = out_size;
  TORCH_CHECK(P.in_size <= (transpose ? P.nstacks * P.n : P.n), "x: too many features");
  TORCH_CHECK(out_size >= 1 && out_size <= (transpose ? P.n : P.nstacks * P.n), "out_size out of range");
  return P;
}

at::Tensor butterfly_multiply(const at::Tensor& twiddle, const at::Tensor& x, bool increasing_stride,
                              bool transpose, bool conjugate, int64_t out_size) {
  const Plan P = make_plan(twiddle, x, increasing_stride, transpose, out_size);
  at::Tensor tw = to_soa(twiddle, P.complex, transpose, conjugate);
  at::Tensor xc = x.contiguous();
  std::vector<int64_t> shape = {P.batch, out_size};
  if (P.complex) shape.push_back(2);
  at::Tensor out = at::empty(shape, x.options());
  if (P.batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_butterfly_multiply", [&] {
    forward_impl<scalar_t>(tw.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), P);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> butterfly_multiply_backward(const at::Tensor& twiddle, const at::Tensor& x,
                                                               const at::Tensor& grad, bool increasing_stride,
                                                               bool transpose, bool conjugate,
                                                               int64_t out_size) {
  const Plan P = make_plan(twiddle, x, increasing_stride, transpose, out_size);
  TORCH_CHECK(grad.size(0) == P.batch && grad.size(1) == out_size, "grad: shape mismatch");
  at::Tensor tw = to_soa(twiddle, P.complex, transpose, conjugate);
  at::Tensor xc = x.contiguous();
  at::Tensor gc = grad.contiguous().to(x.scalar_type());
  at::Tensor gx = at::zeros_like(xc);
  at::Tensor gtw = at::zeros_like(tw);
  if (P.batch > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_butterfly_multiply_backward", [&] {
      backward_impl<scalar_t>(tw.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                              gx.data_ptr<scalar_t>(), gtw.data_ptr<scalar_t>(), P);
    });
  }
  return {from_soa(gtw, twiddle, P.complex, transpose, conjugate), gx};
}

}  // namespace twiddle_cpu

TORCH_LIBRARY(twiddle, m) {
  m.def("butterfly_multiply(Tensor twiddle, Tensor x, bool increasing_stride, bool transpose, bool conjugate, "
        "int out_size) -> Tensor");
  m.def("butterfly_multiply_backward(Tensor twiddle, Tensor x, Tensor grad, bool increasing_stride, "
        "bool transpose, bool conjugate, int out_size) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(twiddle, CPU, m) {
  m.impl("butterfly_multiply", &twiddle_cpu::butterfly_multiply);
  m.impl("butterfly_multiply_backward", &twiddle_cpu::butterfly_multiply_backward);
}
