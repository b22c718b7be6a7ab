// Fused CPU butterfly multiply for twiddle.
//
// The twiddle stays in the user's layout (nstacks, nblocks, log_n, n/2, 2, 2) — complex twiddles and data as
// real views with a trailing (re, im) pair — and is read in place: the transpose (reverse the factors, swap
// the off-diagonal entries) and the conjugate (negate imaginary parts) are index changes, not copies.
//
// Two layouts of the working set:
//  * rows (real float32: n >= 32 on AVX-512 machines; n >= 16 and at most kRows rows on AVX2 + FMA, where the
//    lane tile is faster for larger batches; see use_rows): a group of rows is worked on in
//    an L1-resident buffer (the first pass reads the caller's rows, the last writes the output's, so nothing is
//    copied through it) and each factor updates kW blocks at a time (a vector: 16 on AVX-512, 8 on AVX2) with
//    vector twiddles shared by all rows of the group; strides below kW use in-register permutes.
//  * lanes (everything else: float64, complex, small n, machines with neither): a tile of kLanes rows (4 or 8
//    for batches of at most that many rows; 8 in the real float64 forward from n = 2048) is transposed into
//    buf[position][lane] so that every 2x2 block updates the tile's rows with four scalars.
//    Its backward sums each block's twiddle gradient over the lanes; with AVX2 + FMA the float32 and complex64
//    versions reduce a block's 4 or 8 sums together (a transposed hadd tree) instead of one by one, and the real
//    float32 one takes tiles of 32 rows for batches in multiples of 128 (use_wide_backward), its forward at n = 1024
//    and 2048 for batches in multiples of 32 (use_wide_forward).
//  * single rows (AVX2 + FMA, batch 1: complex64, complex128 and float64, whose narrowest lane tile would compute
//    three lanes of padding): the row itself, blocks side by side in the vectors (the complex forward; float64
//    forward and backward), with the lane tile's arithmetic bit for bit.
// Either way the data are read and written once for all factors. Work is spread over threads with
// at::parallel_for (which honours torch.set_num_threads); small batches run on the calling thread.
//
// Input modes: shared (every stack reads the same zero-padded x; the plain multiply) or split (stack k reads
// columns [k n, (k+1) n); the transpose). Output modes: concat (stack k writes columns [k n, (k+1) n)) or sum
// (all stacks add into columns [0, n); the transpose). The first out_size columns are kept. An optional input
// permutation (in_perm: the kernel reads x[:, in_perm]) is applied while x is loaded and undone while the input
// gradient is stored, an output permutation (out_perm: y = z[:, out_perm] + bias) while the output is stored and
// the incoming gradient loaded; a real x with complex twiddles is loaded as x + 0i and gets the real part of its
// gradient.
//
// The backward recomputes each group's activations (the input of every pass, or every factor in the lanes
// layout) in a per-thread buffer (nothing is stored between forward and backward; its row groups are sized to
// L2) and returns the input gradient, the twiddle gradient and (when asked) the bias gradient in one pass.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define TWIDDLE_INLINE inline __attribute__((always_inline))
// One compiled body for every call: the backward's sums leave the compiler free to contract a multiply and an add
// into one rounding, and it decides that per inlined copy, so that the plain and the blocked tiles' twiddle gradients
// differed in the last bit where each inlined its own copy. (noclone: nor a copy specialized on constant arguments.)
#if defined(__clang__)
#define TWIDDLE_ONE_BODY __attribute__((noinline))
#else
#define TWIDDLE_ONE_BODY __attribute__((noinline, noclone))
#endif

namespace twiddle_cpu {

constexpr int64_t kLanes = 16;

struct Plan {
  int64_t nstacks, nblocks, log_n, F, n, half;
  bool complex, transpose, conjugate;
  int64_t comps;        // numbers per entry: 1 (real) or 2 (complex)
  // x (and its gradient) hold real numbers while the twiddles are complex: read as (x, 0), the gradient's real part
  // written (a real input to a complex transform, without a complex copy of it). x_comps: x's numbers per entry.
  bool real_input = false;
  int64_t x_comps = 1;
  int64_t factor_size;  // numbers per factor: 4 * comps * n/2
  bool split_input, sum_output;
  int64_t in_size, out_size, batch;
  std::vector<int64_t> strides;  // stride of the f-th applied factor
  std::vector<int64_t> offsets;  // offset of the f-th applied factor of stack 0 in the twiddle tensor
  // element strides (row, column, real/imag) of the incoming gradient; it is read in place, without a
  // contiguous copy (autograd often hands over an expanded tensor, e.g. the gradient of y.sum())
  int64_t g_row = 0, g_col = 1, g_comp = 1;
  bool g_contiguous = true;
  // The input permutation (null: none): the kernel's input column c is x's column in_perm[c] (a permutation of
  // 0..in_size-1), gathered by the loads of x and scattered by the stores of the input gradient, so that a
  // permute-then-multiply (a transform's bit reversal, a BP model) makes no permuted copy.
  const int32_t* in_perm = nullptr;
  // The output permutation (null: none) as its inverse: the result's column out_inv[c] gets the butterfly's output
  // column c (y[:, j] = z[:, out_perm[j]] + bias[j]), scattered by the output's store and gathered back by the
  // incoming gradient's load.
  const int32_t* out_inv = nullptr;

  int64_t stack_size() const { return nblocks * log_n * factor_size; }
};

// Entry e (0: t00, 1: t01, 2: t10, 3: t11) of the applied block sits at raw entry raw_entry(e): the
// transpose swaps t01 and t10.
inline int64_t raw_entry(const Plan& P, int e) {
  if (!P.transpose || e == 0 || e == 3) return e;
  return 3 - e;
}

// Work items handed to one thread at least: small batches run inline, without waking the thread pool. A call
// is split once it has more than 2^17 factor-position-row updates (~10 us of work on each of two threads); the
// backward does ~4x the work per item and divides the grain by 4. Measured on a 2-core AMD EPYC (Zen 3) against
// 2^20: forward n = 1024 batch 32 50 -> 30 us, n = 512 batch 64 34 -> 21 us, n = 128 batch 256 24 -> 20 us;
// backward n = 256 batch 128 87 -> 51 us; no case slower (smaller grains were: n = 64 batch 64 backward
// 20 -> 25 us at 2^16). A complex update counts as four.
inline int64_t grain_for(const Plan& P, int64_t rows_per_item) {
  const int64_t per_update = P.complex ? 4 : 1;
  const int64_t work =
      std::max<int64_t>(1, per_update * P.nstacks * std::max<int64_t>(P.F, 1) * P.n * rows_per_item);
  return std::max<int64_t>(1, (int64_t(1) << 17) / work);
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

// Scratch memory for one thread, aligned to a cache line (64 bytes) so that whole-vector loads and stores of
// 64-byte aligned rows never straddle two lines. Up to kCachedScratchBytes it is a per-thread buffer kept from call
// to call (grow-only; Slot tells apart buffers in use at the same time): a fresh allocation of more than ~128 KB
// is mapped anew by malloc and page-faulted on first touch, which cost as much as the work itself for the
// backward's activations at n = 1024. Larger requests get their own allocation, freed at the end of the scope.
// Slots: 0 the forward's tile or row group, 1 the backward's activations, 2 the SoA twiddles, 3 the spare tile of
// permuted loads and stores, 4 the twiddle gradient's per-chunk sums, 5 the blocked tiles' reordered twiddles (and
// twiddle gradient).
constexpr size_t kCachedScratchBytes = size_t(8) << 20;

inline void* aligned_or_throw(size_t bytes) {
  void* ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (ptr == nullptr) throw std::bad_alloc();
  return ptr;
}

template <typename T, int Slot>
class ThreadScratch {
 public:
  explicit ThreadScratch(int64_t count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    if (bytes > kCachedScratchBytes) {
      ptr_ = static_cast<T*>(aligned_or_throw(bytes));
      owned_ = true;
      return;
    }
    static thread_local Cache cache;
    if (cache.bytes < bytes) {
      std::free(cache.ptr);
      cache.ptr = nullptr;
      cache.bytes = 0;
      cache.ptr = aligned_or_throw(bytes);
      cache.bytes = bytes;
    }
    ptr_ = static_cast<T*>(cache.ptr);
  }
  ~ThreadScratch() {
    if (owned_) std::free(ptr_);
  }
  ThreadScratch(const ThreadScratch&) = delete;
  ThreadScratch& operator=(const ThreadScratch&) = delete;
  T* data() const { return ptr_; }

 private:
  struct Cache {
    void* ptr = nullptr;
    size_t bytes = 0;
    ~Cache() { std::free(ptr); }
  };
  T* ptr_ = nullptr;
  bool owned_ = false;
};

// Deterministic parallel reduction for the twiddle gradient: the groups of rows are cut into at most
// kMaxChunks chunks that depend on the batch size only; each chunk accumulates into its own buffer and the
// buffers are summed in a fixed order, so the result does not depend on the number of threads.
// body(group_begin, group_end, acc) processes a range of groups.
// min_per_chunk (groups) keeps the per-chunk buffers small against the work.
constexpr int64_t kMaxChunks = 64;

// The least number of groups per chunk for a batch of ngroups groups: at most max_per, and few enough that the
// batch makes kMinChunks chunks when it has that many groups, so that a moderate batch keeps several threads busy
// (with a fixed 8, a batch of 128 rows was one chunk: the whole backward on one thread). Measured on 2 cores,
// n = 4096 batch 64: 1.10 -> 0.59 ms; batch 256 (4 chunks instead of 2): ~3 % more for the extra buffers.
constexpr int64_t kMinChunks = 4;
inline int64_t min_groups_per_chunk(int64_t ngroups, int64_t max_per) {
  return std::clamp<int64_t>((ngroups + kMinChunks - 1) / kMinChunks, 1, max_per);
}

// A lane-tile backward's chunks hold at most 8 tiles of 16 rows, or as many rows in wider tiles (kWideLanes).
inline int64_t max_tiles_per_chunk(int64_t lanes) {
  return std::max<int64_t>(1, 8 * kLanes / std::max(lanes, kLanes));
}

// How a batch of ngroups groups is cut into chunks: `per` groups each (the last may have fewer), `count` chunks.
struct Chunking {
  int64_t per, count;
};
inline Chunking chunking(int64_t ngroups, int64_t min_per_chunk) {
  const int64_t per = std::max<int64_t>(min_per_chunk, (ngroups + kMaxChunks - 1) / kMaxChunks);
  return {per, (ngroups + per - 1) / per};
}

// The per-chunk buffers in one array, chunk c's (partial + c acc_size, acc_size numbers) zero-filled and then
// holding the sum over groups [c per, (c + 1) per). The array comes from the calling thread's ThreadScratch slot 4
// (kept from call to call: a fresh allocation of a large twiddle's gradient, 1.8 MB at n = 16384, was page-faulted
// anew by every call, a tenth of a batch-1 backward's time).
template <typename T, typename Body>
void chunked_partials(int64_t ngroups, const Chunking& ch, int64_t grain_groups, int64_t acc_size, T* partial,
                      const Body& body) {
  const int64_t grain = std::max<int64_t>(1, grain_groups / ch.per);
  at::parallel_for(0, ch.count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      T* acc = partial + c * acc_size;
      std::fill(acc, acc + acc_size, T(0));
      body(c * ch.per, std::min(ngroups, (c + 1) * ch.per), acc);
    }
  });
}

// total += the sum of the chunks' buffers, entries [0, split) into total and [split, acc_size) into
// total_rest[j - split] (the buffers' two parts: the twiddle gradient, then the bias gradient).
template <typename T, typename Body>
void chunked_reduce(int64_t ngroups, int64_t min_per_chunk, int64_t grain_groups, int64_t acc_size, int64_t split,
                    T* total, T* total_rest, const Body& body) {
  const Chunking ch = chunking(ngroups, min_per_chunk);
  ThreadScratch<T, 4> scratch(ch.count * acc_size);
  T* const partial = scratch.data();
  chunked_partials<T>(ngroups, ch, grain_groups, acc_size, partial, body);
  // every entry sums the chunks in chunk order, whichever thread does it
  at::parallel_for(0, acc_size, 16384, [&](int64_t begin, int64_t end) {
    const int64_t mid = std::clamp(split, begin, end);  // [begin, mid) -> total, [mid, end) -> total_rest
    T* __restrict lo = total;
    T* __restrict hi = mid < end ? total_rest - split : nullptr;  // total_rest is null without a bias
    for (int64_t c = 0; c < ch.count; ++c) {
      const T* __restrict a = partial + c * acc_size;
      for (int64_t j = begin; j < mid; ++j) lo[j] += a[j];
      for (int64_t j = mid; j < end; ++j) hi[j] += a[j];
    }
  });
}

// The bias gradient's share of rows [row0, row0 + rows): acc[c] += Σ_rows grad(row, col0 + c / comps, c % comps)
// for c < count * comps (numbers in output-column order). Rows are read where they lie (they were just loaded
// into a tile, so they come from cache); rows that are all one row (stride 0: the gradient of y.sum(), or any
// expanded gradient) are counted by one multiply.
template <typename T>
inline void add_gradient_column_sums(T* __restrict acc, const T* __restrict gy, int64_t row0, int64_t rows,
                                     int64_t col0, int64_t count, const Plan& P) {
  if (P.g_row == 0) {
    const T times = static_cast<T>(rows);
    for (int64_t p = 0; p < count; ++p)
      for (int64_t c = 0; c < P.comps; ++c) acc[p * P.comps + c] += times * gy[(col0 + p) * P.g_col + c * P.g_comp];
    return;
  }
  if (P.g_col == P.comps && P.g_comp == 1) {  // each row's numbers contiguous
    const int64_t w = count * P.comps;
    for (int64_t r = 0; r < rows; ++r) {
      const T* __restrict row = gy + (row0 + r) * P.g_row + col0 * P.comps;
      for (int64_t c = 0; c < w; ++c) acc[c] += row[c];
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t p = 0; p < count; ++p)
      for (int64_t c = 0; c < P.comps; ++c)
        acc[p * P.comps + c] += gy[(row0 + r) * P.g_row + (col0 + p) * P.g_col + c * P.g_comp];
}

// Whether stack k's output columns add to the bias gradient: every column once (with summed stacks, all stacks
// write the same columns: count them for stack 0 only).
inline bool counts_bias(const Plan& P, int64_t k, int64_t ocount) { return ocount > 0 && !(P.sum_output && k > 0); }
// The output columns [first, first + count) whose bias gradient stack k adds: its own (see counts_bias), or, under an
// output permutation (whose stacks' columns are scattered over the result), all of them at stack 0.
inline std::pair<int64_t, int64_t> bias_gradient_cols(const Plan& P, int64_t k, int64_t oc0, int64_t ocount) {
  if (P.out_inv) return {0, k == 0 ? P.out_size : 0};
  return {oc0, counts_bias(P, k, ocount) ? ocount : 0};
}

// ================================================================================================ lanes
// Block of a stride-s factor (s a power of two) whose first member is position p: (p / 2s) s + p mod s, without
// the divisions.
inline int64_t block_index(int64_t p, int64_t s) { return (p & (s - 1)) | ((p >> 1) & ~(s - 1)); }

// Calls body(i, p) for every block i of a stride-s factor on n positions; p is its first member (p + s the second).
template <typename Body>
inline void for_each_block(int64_t n, int64_t s, const Body& body) {
  int64_t i = 0;
  for (int64_t g = 0; g < n; g += 2 * s)
    for (int64_t r = 0; r < s; ++r, ++i) body(i, g + r);
}

// The applied entries of complex block i (raw layout: re/im pairs of t00 t01 t10 t11): eb/ec locate t01/t10
// (swapped by the transpose), sign = -1 conjugates.
template <typename T>
struct ComplexBlock {
  T ar, ai, br, bi, cr, ci, dr, di;
};

template <typename T>
inline ComplexBlock<T> complex_block(const T* tw, int64_t i, int eb, int ec, T sign) {
  const T* t = tw + 8 * i;
  return {t[0], sign * t[1], t[2 * eb], sign * t[2 * eb + 1], t[2 * ec], sign * t[2 * ec + 1], t[6], sign * t[7]};
}

// a b + c in one rounding where the machine has FMA instructions (std::fma is a slow library call without them,
// where the row paths that must match it are not built either)
template <typename T>
TWIDDLE_INLINE T fused(T a, T b, T c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// Real factor on a lane tile (position p holds L values): dst = factor(src). dst == src (in place) or the two do
// not overlap; each lane is read before it is written, so in place is safe under the simd loop.
template <typename T, int64_t L = kLanes>
inline void lanes_factor_real(T* dst, const T* src, const T* __restrict tw, int64_t n, int64_t s, int eb, int ec) {
  for_each_block(n, s, [&](int64_t i, int64_t p) {
    const T* xp = src + p * L;
    const T* xq = xp + s * L;
    T* yp = dst + p * L;
    T* yq = yp + s * L;
    const T* t = tw + 4 * i;
    const T a = t[0], b = t[eb], c = t[ec], d = t[3];
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const T u = xp[l], v = xq[l];
      yp[l] = fused(a, u, b * v);  // the order the real row path (rrow_apply) uses too
      yq[l] = fused(c, u, d * v);
    }
  });
}

// Complex factor on a lane tile: position p holds L real parts, then L imaginary parts.
template <typename T, int64_t L = kLanes>
inline void lanes_factor_complex(T* dst, const T* src, const T* __restrict tw, int64_t n, int64_t s, int eb,
                                 int ec, T sign) {
  for_each_block(n, s, [&](int64_t i, int64_t p) {
    const T* xr = src + p * 2 * L;
    const T* xi = xr + L;
    const T* yr = xr + s * 2 * L;
    const T* yi = yr + L;
    T* pr = dst + p * 2 * L;
    T* pi = pr + L;
    T* qr = pr + s * 2 * L;
    T* qi = qr + L;
    const auto [ar, ai, br, bi, cr, ci, dr, di] = complex_block(tw, i, eb, ec, sign);
    // the fused multiply-adds spelled out (not left to contraction), in the order the complex row path
    // (crow_factor) uses, so that a row's result does not depend on which code its batch size picks
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const T ur = xr[l], ui = xi[l], vr = yr[l], vi = yi[l];
      pr[l] = fused(-bi, vi, fused(br, vr, fused(ar, ur, -(ai * ui))));
      pi[l] = fused(bi, vr, fused(br, vi, fused(ar, ui, ai * ur)));
      qr[l] = fused(-di, vi, fused(dr, vr, fused(cr, ur, -(ci * ui))));
      qi[l] = fused(di, vr, fused(dr, vi, fused(cr, ui, ci * ur)));
    }
  });
}

// Backward through one real factor: g (gradient w.r.t. the factor's output) becomes the gradient w.r.t. its
// input u, and the twiddle gradient accumulates g u^T summed over lanes.
template <typename T, int64_t L = kLanes>
TWIDDLE_ONE_BODY void lanes_factor_real_backward(T* __restrict g, const T* __restrict u, const T* __restrict tw,
                                       T* __restrict dtw, int64_t n, int64_t s, int eb, int ec) {
  for_each_block(n, s, [&](int64_t i, int64_t p) {
    T* __restrict gp = g + p * L;
    T* __restrict gq = gp + s * L;
    const T* __restrict up = u + p * L;
    const T* __restrict uq = up + s * L;
    const T* t = tw + 4 * i;
    const T a = t[0], b = t[eb], c = t[ec], d = t[3];
    T sa = 0, sb = 0, sc = 0, sd = 0;
#pragma omp simd reduction(+ : sa, sb, sc, sd)
    for (int64_t l = 0; l < L; ++l) {
      const T x0 = up[l], x1 = uq[l], g0 = gp[l], g1 = gq[l];
      sa += g0 * x0;
      sb += g0 * x1;
      sc += g1 * x0;
      sd += g1 * x1;
      gp[l] = fused(a, g0, c * g1);  // the order the float64 row path (rrow_apply_backward) uses too
      gq[l] = fused(b, g0, d * g1);
    }
    T* dt = dtw + 4 * i;
    dt[0] += sa;
    dt[eb] += sb;
    dt[ec] += sc;
    dt[3] += sd;
  });
}

// Complex: g_in = conj(T)^T g_out, dT += g conj(u)^T; with `sign` = -1 (conjugated twiddles) the raw
// gradient is the conjugate of the gradient w.r.t. the applied twiddle.
template <typename T, int64_t L = kLanes>
TWIDDLE_ONE_BODY void lanes_factor_complex_backward(T* __restrict g, const T* __restrict u, const T* __restrict tw,
                                          T* __restrict dtw, int64_t n, int64_t s, int eb, int ec, T sign) {
  for_each_block(n, s, [&](int64_t i, int64_t p) {
    T* __restrict gpr = g + p * 2 * L;
    T* __restrict gpi = gpr + L;
    T* __restrict gqr = gpr + s * 2 * L;
    T* __restrict gqi = gqr + L;
    const T* __restrict upr = u + p * 2 * L;
    const T* __restrict upi = upr + L;
    const T* __restrict uqr = upr + s * 2 * L;
    const T* __restrict uqi = uqr + L;
    const auto [ar, ai, br, bi, cr, ci, dr, di] = complex_block(tw, i, eb, ec, sign);
    T sar = 0, sai = 0, sbr = 0, sbi = 0, scr = 0, sci = 0, sdr = 0, sdi = 0;
#pragma omp simd reduction(+ : sar, sai, sbr, sbi, scr, sci, sdr, sdi)
    for (int64_t l = 0; l < L; ++l) {
      const T xr0 = upr[l], xi0 = upi[l], xr1 = uqr[l], xi1 = uqi[l];
      const T g0r = gpr[l], g0i = gpi[l], g1r = gqr[l], g1i = gqi[l];
      // g_in = conj(T)^T g_out and each lane's terms of the gradient sums, every multiply-add spelled out in the
      // order of the float32 specialization and of the complex row path (crow_apply_backward), so that a row's
      // gradients do not depend on the code its batch size picks (the reverse order ran 1.5x slower here)
      sar += fused(g0i, xi0, g0r * xr0);
      sai += fused(-g0r, xi0, g0i * xr0);
      sbr += fused(g0i, xi1, g0r * xr1);
      sbi += fused(-g0r, xi1, g0i * xr1);
      scr += fused(g1i, xi0, g1r * xr0);
      sci += fused(-g1r, xi0, g1i * xr0);
      sdr += fused(g1i, xi1, g1r * xr1);
      sdi += fused(-g1r, xi1, g1i * xr1);
      gpr[l] = fused(ci, g1i, fused(cr, g1r, fused(ai, g0i, ar * g0r)));
      gpi[l] = fused(-ci, g1r, fused(cr, g1i, fused(-ai, g0r, ar * g0i)));
      gqr[l] = fused(di, g1i, fused(dr, g1r, fused(bi, g0i, br * g0r)));
      gqi[l] = fused(-di, g1r, fused(dr, g1i, fused(-bi, g0r, br * g0i)));
    }
    T* dt = dtw + 8 * i;
    dt[0] += sar;
    dt[1] += sign * sai;
    dt[2 * eb] += sbr;
    dt[2 * eb + 1] += sign * sbi;
    dt[2 * ec] += scr;
    dt[2 * ec + 1] += sign * sci;
    dt[6] += sdr;
    dt[7] += sign * sdi;
  });
}

#if defined(__AVX2__) && defined(__FMA__)

// float32 specializations of lanes_factor_real_backward and lanes_factor_complex_backward (above): the per-block
// sums over the 16 lanes (32 in the real one's wide tiles) are reduced together (add the 8-lane parts in order,
// then a transposed hadd tree that leaves all the block's sums in one vector) instead of as separate horizontal
// reductions, which were most of these functions' time. The order of the additions is fixed (deterministic).

// Real block i (members p, p + s) on a tile of L lanes: the input gradient in place, and the block's four sums as an
// unreduced vector [a b c d | a b c d] (each 128-bit half holds partial sums; the halves still have to be added).
template <int64_t L>
TWIDDLE_INLINE __m256 real_block_backward(float* __restrict g, const float* __restrict u, const float* __restrict tw,
                                          int64_t i, int64_t p, int64_t s, int eb, int ec) {
  float* __restrict gp = g + p * L;
  float* __restrict gq = gp + s * L;
  const float* __restrict up = u + p * L;
  const float* __restrict uq = up + s * L;
  const float* t = tw + 4 * i;
  const __m256 A = _mm256_set1_ps(t[0]), B = _mm256_set1_ps(t[eb]), C = _mm256_set1_ps(t[ec]);
  const __m256 D = _mm256_set1_ps(t[3]);
  __m256 acc[4];
  for (int h = 0; h < L / 8; ++h) {  // the 8-lane parts
    const int o = 8 * h;
    const __m256 x0 = _mm256_loadu_ps(up + o), x1 = _mm256_loadu_ps(uq + o);
    const __m256 g0 = _mm256_loadu_ps(gp + o), g1 = _mm256_loadu_ps(gq + o);
    const __m256 tt[4] = {_mm256_mul_ps(g0, x0), _mm256_mul_ps(g0, x1), _mm256_mul_ps(g1, x0), _mm256_mul_ps(g1, x1)};
    for (int j = 0; j < 4; ++j) acc[j] = h == 0 ? tt[j] : _mm256_add_ps(acc[j], tt[j]);
    _mm256_storeu_ps(gp + o, _mm256_fmadd_ps(A, g0, _mm256_mul_ps(C, g1)));
    _mm256_storeu_ps(gq + o, _mm256_fmadd_ps(B, g0, _mm256_mul_ps(D, g1)));
  }
  // [a b a b | a b a b] partial pairs, then [a b c d | a b c d]
  return _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
}

// Blocks are taken two at a time (i, i + 1: their gradient entries are adjacent), their sums finished together
// in one vector and added to the gradient by one load and store: 3-4 % less time than block by block (2-core
// AMD EPYC, Zen 3; bit-identical results, the additions are the same).
template <int64_t L>
TWIDDLE_INLINE void lanes_real_backward_avx2(float* __restrict g, const float* __restrict u,
                                              const float* __restrict tw, float* __restrict dtw, int64_t n,
                                              int64_t s, int eb, int ec) {
  static_assert(L % 16 == 0, "pairs of 8-float vectors per lane row");
  auto pair = [&](int64_t i, int64_t p0, int64_t p1) {
    const __m256 q0 = real_block_backward<L>(g, u, tw, i, p0, s, eb, ec);
    const __m256 q1 = real_block_backward<L>(g, u, tw, i + 1, p1, s, eb, ec);
    __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
    if (eb != 1) sums = _mm256_permute_ps(sums, _MM_SHUFFLE(3, 1, 2, 0));  // transposed: b, c trade places
    float* dt = dtw + 4 * i;
    _mm256_storeu_ps(dt, _mm256_add_ps(_mm256_loadu_ps(dt), sums));
  };
  if (n == 2) {  // one block
    const __m256 q = real_block_backward<L>(g, u, tw, 0, 0, 1, eb, ec);
    __m128 sums = _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
    if (eb != 1) sums = _mm_shuffle_ps(sums, sums, _MM_SHUFFLE(3, 1, 2, 0));
    _mm_storeu_ps(dtw, _mm_add_ps(_mm_loadu_ps(dtw), sums));
    return;
  }
  // n >= 4: blocks i, i + 1 sit at p, p + 1 within a group of 2 s positions (s >= 2), or in consecutive groups
  // at p, p + 2 (s = 1)
  int64_t i = 0;
  if (s == 1) {
    for (int64_t p = 0; p < n; p += 4, i += 2) pair(i, p, p + 2);
  } else {
    for (int64_t g0 = 0; g0 < n; g0 += 2 * s)
      for (int64_t r = 0; r < s; r += 2, i += 2) pair(i, g0 + r, g0 + r + 1);
  }
}

template <>
TWIDDLE_ONE_BODY void lanes_factor_real_backward<float, 16>(float* __restrict g, const float* __restrict u,
                                              const float* __restrict tw, float* __restrict dtw, int64_t n,
                                              int64_t s, int eb, int ec) {
  lanes_real_backward_avx2<16>(g, u, tw, dtw, n, s, eb, ec);
}
template <>
TWIDDLE_ONE_BODY void lanes_factor_real_backward<float, 32>(float* __restrict g, const float* __restrict u,
                                              const float* __restrict tw, float* __restrict dtw, int64_t n,
                                              int64_t s, int eb, int ec) {
  lanes_real_backward_avx2<32>(g, u, tw, dtw, n, s, eb, ec);
}

// complex64: eight sums per block (real and imaginary parts of a, b, c, d), one more hadd level.
template <>
TWIDDLE_ONE_BODY void lanes_factor_complex_backward<float, kLanes>(float* __restrict g, const float* __restrict u,
                                                 const float* __restrict tw, float* __restrict dtw, int64_t n,
                                                 int64_t s, int eb, int ec, float sign) {
  static_assert(kLanes == 16, "two 8-float vectors per lane row");
  const __m256 signs = _mm256_setr_ps(1.0f, sign, 1.0f, sign, 1.0f, sign, 1.0f, sign);
  for_each_block(n, s, [&](int64_t i, int64_t p) {
    float* __restrict gp = g + p * 2 * kLanes;  // re [0, 16), im [16, 32)
    float* __restrict gq = gp + s * 2 * kLanes;
    const float* __restrict up = u + p * 2 * kLanes;
    const float* __restrict uq = up + s * 2 * kLanes;
    const auto [ar, ai, br, bi, cr, ci, dr, di] = complex_block(tw, i, eb, ec, sign);
    const __m256 Ar = _mm256_set1_ps(ar), Ai = _mm256_set1_ps(ai), Br = _mm256_set1_ps(br), Bi = _mm256_set1_ps(bi);
    const __m256 Cr = _mm256_set1_ps(cr), Ci = _mm256_set1_ps(ci), Dr = _mm256_set1_ps(dr), Di = _mm256_set1_ps(di);
    __m256 acc[8];
    for (int h = 0; h < 2; ++h) {  // the two halves of the 16 lanes
      const int o = 8 * h;
      const __m256 xr0 = _mm256_loadu_ps(up + o), xi0 = _mm256_loadu_ps(up + kLanes + o);
      const __m256 xr1 = _mm256_loadu_ps(uq + o), xi1 = _mm256_loadu_ps(uq + kLanes + o);
      const __m256 g0r = _mm256_loadu_ps(gp + o), g0i = _mm256_loadu_ps(gp + kLanes + o);
      const __m256 g1r = _mm256_loadu_ps(gq + o), g1i = _mm256_loadu_ps(gq + kLanes + o);
      const __m256 t[8] = {  // the generic template's order
          _mm256_fmadd_ps(g0i, xi0, _mm256_mul_ps(g0r, xr0)), _mm256_fnmadd_ps(g0r, xi0, _mm256_mul_ps(g0i, xr0)),
          _mm256_fmadd_ps(g0i, xi1, _mm256_mul_ps(g0r, xr1)), _mm256_fnmadd_ps(g0r, xi1, _mm256_mul_ps(g0i, xr1)),
          _mm256_fmadd_ps(g1i, xi0, _mm256_mul_ps(g1r, xr0)), _mm256_fnmadd_ps(g1r, xi0, _mm256_mul_ps(g1i, xr0)),
          _mm256_fmadd_ps(g1i, xi1, _mm256_mul_ps(g1r, xr1)), _mm256_fnmadd_ps(g1r, xi1, _mm256_mul_ps(g1i, xr1))};
      for (int j = 0; j < 8; ++j) acc[j] = h == 0 ? t[j] : _mm256_add_ps(acc[j], t[j]);
      // g_in = conj(T)^T g_out
      const __m256 in_pr = _mm256_fmadd_ps(Ai, g0i, _mm256_mul_ps(Ar, g0r));
      const __m256 in_pi = _mm256_fnmadd_ps(Ai, g0r, _mm256_mul_ps(Ar, g0i));
      const __m256 in_qr = _mm256_fmadd_ps(Bi, g0i, _mm256_mul_ps(Br, g0r));
      const __m256 in_qi = _mm256_fnmadd_ps(Bi, g0r, _mm256_mul_ps(Br, g0i));
      _mm256_storeu_ps(gp + o, _mm256_fmadd_ps(Ci, g1i, _mm256_fmadd_ps(Cr, g1r, in_pr)));
      _mm256_storeu_ps(gp + kLanes + o, _mm256_fnmadd_ps(Ci, g1r, _mm256_fmadd_ps(Cr, g1i, in_pi)));
      _mm256_storeu_ps(gq + o, _mm256_fmadd_ps(Di, g1i, _mm256_fmadd_ps(Dr, g1r, in_qr)));
      _mm256_storeu_ps(gq + kLanes + o, _mm256_fnmadd_ps(Di, g1r, _mm256_fmadd_ps(Dr, g1i, in_qi)));
    }
    // transposed reduction: hadd pairs, then pairs of pairs; each 128-bit half then holds four partial sums
    const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
    // (re, im) of a, b, c, d; the imaginary parts times sign; transposed: b and c trade places
    __m256 sums = _mm256_mul_ps(
        _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31)), signs);
    if (eb != 1)
      sums = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(sums), _MM_SHUFFLE(3, 1, 2, 0)));
    float* dt = dtw + 8 * i;
    _mm256_storeu_ps(dt, _mm256_add_ps(_mm256_loadu_ps(dt), sums));
  });
}
#endif

// A factor of stride s on a tile of n positions whose first block's twiddles are at twf (and its gradient at dtwf):
// the whole tile (n = P.n), or a part of it that the factor maps into itself (the blocked tiles below).
template <typename T, int64_t L = kLanes>
inline void lanes_factor_on(T* dst, const T* src, const T* twf, int64_t n, int64_t s, const Plan& P) {
  const int eb = static_cast<int>(raw_entry(P, 1)), ec = static_cast<int>(raw_entry(P, 2));
  if (P.complex)
    lanes_factor_complex<T, L>(dst, src, twf, n, s, eb, ec, P.conjugate ? T(-1) : T(1));
  else
    lanes_factor_real<T, L>(dst, src, twf, n, s, eb, ec);
}

template <typename T, int64_t L = kLanes>
inline void lanes_factor_backward_on(T* g, const T* u, const T* twf, T* dtwf, int64_t n, int64_t s, const Plan& P) {
  const int eb = static_cast<int>(raw_entry(P, 1)), ec = static_cast<int>(raw_entry(P, 2));
  if (P.complex)
    lanes_factor_complex_backward<T, L>(g, u, twf, dtwf, n, s, eb, ec, P.conjugate ? T(-1) : T(1));
  else
    lanes_factor_real_backward<T, L>(g, u, twf, dtwf, n, s, eb, ec);
}

template <typename T, int64_t L = kLanes>
inline void lanes_factor(T* dst, const T* src, const T* tw, const Plan& P, int64_t f) {
  lanes_factor_on<T, L>(dst, src, tw + P.offsets[f], P.n, P.strides[f], P);
}

template <typename T, int64_t L = kLanes>
inline void lanes_factor_backward(T* g, const T* u, const T* tw, T* dtw, const Plan& P, int64_t f) {
  lanes_factor_backward_on<T, L>(g, u, tw + P.offsets[f], dtw + P.offsets[f], P.n, P.strides[f], P);
}

#if defined(__AVX2__) && defined(__FMA__)
#define TWIDDLE_LANES_AVX2 1
// The 8 x 8 block src[l * lds + j] (l, j < 8) as 8 vectors, vector j holding column j (l = 0..7).
TWIDDLE_INLINE void transpose8(const float* src, int64_t lds, __m256 col[8]) {
  const auto half = [&](int64_t r, int64_t c) {  // rows r and r + 4, columns c .. c + 3
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src + r * lds + c)),
                                _mm_loadu_ps(src + (r + 4) * lds + c), 1);
  };
  for (int64_t c = 0; c < 8; c += 4) {
    const __m256 t0 = half(0, c), t1 = half(1, c), t2 = half(2, c), t3 = half(3, c);
    const __m256 u0 = _mm256_unpacklo_ps(t0, t1), u1 = _mm256_unpackhi_ps(t0, t1);
    const __m256 u2 = _mm256_unpacklo_ps(t2, t3), u3 = _mm256_unpackhi_ps(t2, t3);
    col[c] = _mm256_shuffle_ps(u0, u2, 0x44);
    col[c + 1] = _mm256_shuffle_ps(u0, u2, 0xEE);
    col[c + 2] = _mm256_shuffle_ps(u1, u3, 0x44);
    col[c + 3] = _mm256_shuffle_ps(u1, u3, 0xEE);
  }
}
#endif

// Load columns [col0, col0 + count) of rows [row0, row0 + rows) of `src` (row stride ld entries) into tile
// positions [0, count); every other position and lane is zero. Transposed in kLanes x kLanes blocks so that
// source and destination lines stay in L1. real_src: src holds real numbers for a complex tile (P.real_input).
template <typename T, int64_t L = kLanes>
inline void lanes_load(T* __restrict buf, const T* __restrict src, int64_t ld, int64_t row0, int64_t rows,
                       int64_t col0, int64_t count, const Plan& P, bool real_src = false) {
  const int64_t width = P.comps * L;
  if (count < P.n) std::memset(buf + count * width, 0, sizeof(T) * (P.n - count) * width);
  if (rows < L) {
    for (int64_t p = 0; p < count; ++p)
      for (int64_t c = 0; c < P.comps; ++c) std::memset(buf + p * width + c * L + rows, 0, sizeof(T) * (L - rows));
  }
  int64_t done = 0;  // positions already loaded
#if defined(TWIDDLE_LANES_AVX2)
  if constexpr (std::is_same_v<T, float> && L % 8 == 0) {
    if (P.comps == 1 && rows == L) {  // a full real tile: 8 x 8 transposes in registers
      // 8 rows at a time along the whole row: rows ld apart often share L1 sets (ld = 1024 floats: 4 KB apart),
      // so each source line is used up before the next lines of the same set come in
      done = count & ~int64_t(7);
      for (int64_t l0 = 0; l0 < L; l0 += 8)
        for (int64_t p0 = 0; p0 < done; p0 += 8) {
          __m256 col[8];
          transpose8(src + (row0 + l0) * ld + col0 + p0, ld, col);
          for (int j = 0; j < 8; ++j) _mm256_store_ps(buf + (p0 + j) * L + l0, col[j]);
        }
    }
  }
#endif
  for (int64_t p0 = done; p0 < count; p0 += kLanes) {  // the rest (all of it without the fast path)
    const int64_t pc = std::min(kLanes, count - p0);
    T* __restrict blk = buf + p0 * width;
    for (int64_t l = 0; l < rows; ++l) {
      const T* __restrict row = src + ((row0 + l) * ld + col0 + p0) * (real_src ? 1 : P.comps);
      if (P.comps == 1) {
        for (int64_t j = 0; j < pc; ++j) blk[j * L + l] = row[j];
      } else if (real_src) {
        for (int64_t j = 0; j < pc; ++j) {
          blk[j * width + l] = row[j];
          blk[j * width + L + l] = T(0);
        }
      } else {
        for (int64_t j = 0; j < pc; ++j) {
          blk[j * width + l] = row[2 * j];
          blk[j * width + L + l] = row[2 * j + 1];
        }
      }
    }
  }
}

// Write (or add) tile positions [0, count) to columns [col0, col0 + count) of rows [row0, row0 + rows);
// a non-null bias (indexed by output column) is added by the writing (add = false) store. real_dst: dst holds
// real numbers and gets the complex tile's real parts (the input gradient under P.real_input; no bias).
template <typename T, int64_t L = kLanes>
inline void lanes_store(const T* __restrict buf, T* __restrict dst, int64_t ld, int64_t row0, int64_t rows,
                        int64_t col0, int64_t count, bool add, const Plan& P, const T* bias = nullptr,
                        bool real_dst = false) {
  // one loop per case (comps, dst comps, add / bias / plain), so that the inner loops carry no branches
  const auto store = [&](auto comps_tag, auto dst_tag, auto op) {
    constexpr int64_t C = decltype(comps_tag)::value;
    constexpr int64_t D = decltype(dst_tag)::value;  // numbers per entry of dst: C, or 1 for real parts
    constexpr int64_t width = C * L;
    int64_t done = 0;  // positions already written
#if defined(TWIDDLE_LANES_AVX2)
    if constexpr (std::is_same_v<T, float> && C == 1 && L % 8 == 0) {
      if (rows == L) {  // a full real tile: 8 x 8 transposes in registers, then the op on whole vectors
        done = count & ~int64_t(7);
        for (int64_t l0 = 0; l0 < L; l0 += 8)  // 8 rows at a time, as in lanes_load
          for (int64_t p0 = 0; p0 < done; p0 += 8) {
            __m256 col[8];
            transpose8(buf + p0 * L + l0, L, col);
            for (int j = 0; j < 8; ++j) {
              float* row = dst + (row0 + l0 + j) * ld + col0 + p0;
              __m256 v = col[j];
              if (add) v = _mm256_add_ps(_mm256_loadu_ps(row), v);
              else if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + col0 + p0));
              _mm256_storeu_ps(row, v);
            }
          }
      }
    }
#endif
    for (int64_t p0 = done; p0 < count; p0 += kLanes) {
      const int64_t pc = std::min(kLanes, count - p0);
      const T* __restrict blk = buf + p0 * width;
      for (int64_t l = 0; l < rows; ++l) {
        T* __restrict row = dst + ((row0 + l) * ld + col0 + p0) * D;
        for (int64_t j = 0; j < pc; ++j)
          for (int64_t c = 0; c < D; ++c) op(row[D * j + c], blk[j * width + c * L + l], (col0 + p0 + j) * C + c);
      }
    }
  };
  const auto run = [&](auto comps_tag, auto dst_tag) {
    if (add)
      store(comps_tag, dst_tag, [](T& out, T v, int64_t) { out += v; });
    else if (bias)
      store(comps_tag, dst_tag, [bias](T& out, T v, int64_t col) { out = v + bias[col]; });
    else
      store(comps_tag, dst_tag, [](T& out, T v, int64_t) { out = v; });
  };
  using One = std::integral_constant<int64_t, 1>;
  using Two = std::integral_constant<int64_t, 2>;
  if (P.comps == 1)
    run(One{}, One{});
  else if (real_dst)
    run(Two{}, One{});
  else
    run(Two{}, Two{});
}

// lanes_load for a strided source (the incoming gradient): element (row, col, comp) at
// src[row * P.g_row + col * P.g_col + comp * P.g_comp].
template <typename T, int64_t L = kLanes>
inline void lanes_load_strided(T* __restrict buf, const T* __restrict src, int64_t row0, int64_t rows,
                               int64_t col0, int64_t count, const Plan& P) {
  const int64_t width = P.comps * L;
  if (P.g_row == 0) {  // every row the same (an expanded gradient, e.g. of y.sum()): each value fills its lanes
    if (count < P.n) std::memset(buf + count * width, 0, sizeof(T) * (P.n - count) * width);
    for (int64_t p = 0; p < count; ++p)
      for (int64_t c = 0; c < P.comps; ++c) {
        const T v = src[(col0 + p) * P.g_col + c * P.g_comp];
        T* __restrict lane = buf + p * width + c * L;
        for (int64_t l = 0; l < L; ++l) lane[l] = l < rows ? v : T(0);
      }
    return;
  }
  std::memset(buf, 0, sizeof(T) * P.n * width);
  for (int64_t p = 0; p < count; ++p)
    for (int64_t c = 0; c < P.comps; ++c)
      for (int64_t l = 0; l < rows; ++l)
        buf[p * width + c * L + l] = src[(row0 + l) * P.g_row + (col0 + p) * P.g_col + c * P.g_comp];
}

// Permuted columns (x and its gradient under P.in_perm, the output and its incoming gradient under P.out_inv):
// tile position p (of the stack's positions [0, count), starting at column col0 of the stack's range) is column
// map[col0 + p] of a source or destination of ncols columns (map: in_perm for x, out_inv for the output).
//  * Loads: the rows are loaded as they are into a spare tile (lanes_load, transposes and all) and whole positions
//    (L or 2 L numbers) copied into permuted order, so that the rows are still read in order: reading
//    src[map[p]] straight into position p cost about as much as a separate gather (2 Zen 3 cores, float64
//    n = 1024 batch 256: 332 -> 492 us against 300 -> 334 us this way), and so did walking the columns in order
//    into scattered positions; a float32 variant that moved transposed 8-lane columns directly was no faster.
//    Tiles of at most 4 rows (whose rows stay in L1) and strided sources are read in permuted order directly
//    (complex64 n = 1024 batch 1: +3.5 us over the unpermuted call against +7 us through the spare tile; at 8 rows
//    direct was slower).
//  * Stores: where the stack writes every column of the destination, whole positions are copied into column order
//    in a spare tile and stored as they are (bias and all); otherwise (tiles of at most 4 rows, stacks whose columns
//    are scattered over the destination) each position is written to its column directly.
// Element strides of a source: rows, columns, real/imaginary parts.
struct Strides {
  int64_t row, col, comp;
};

// Load tile positions [0, count) from columns map[col0 + p] of rows [row0, row0 + rows) of src (every other
// position and lane zero). contiguous: src's rows are ncols entries of (real_src ? 1 : P.comps) numbers, as
// lanes_load reads them; s: its strides in any case. real_src as in lanes_load.
template <typename T, int64_t L>
inline void lanes_load_mapped(T* __restrict buf, const T* __restrict src, int64_t ncols, int64_t row0, int64_t rows,
                              int64_t col0, int64_t count, const Plan& P, const int32_t* __restrict map,
                              const Strides& s, bool contiguous, bool real_src) {
  const int64_t width = P.comps * L;
  if (L > 4 && contiguous) {
    ThreadScratch<T, 3> spare_scratch(std::max(ncols, P.n) * width);
    T* const spare = spare_scratch.data();
    lanes_load<T, L>(spare, src, ncols, row0, rows, 0, ncols, P, real_src);  // every column, lanes >= rows zero
    for (int64_t p = 0; p < count; ++p) std::memcpy(buf + p * width, spare + map[col0 + p] * width, sizeof(T) * width);
  } else {
    const int64_t sc = real_src ? 1 : P.comps;  // numbers per source entry
    for (int64_t p = 0; p < count; ++p) {
      T* __restrict blk = buf + p * width;
      const T* __restrict col = src + row0 * s.row + map[col0 + p] * s.col;
      for (int64_t k = 0; k < P.comps; ++k)
        for (int64_t l = 0; l < L; ++l) blk[k * L + l] = l < rows && k < sc ? col[l * s.row + k * s.comp] : T(0);
    }
  }
  if (count < P.n) std::memset(buf + count * width, 0, sizeof(T) * (P.n - count) * width);
}

// Write (or add) tile positions [0, count) to columns map[col0 + p] of rows [row0, row0 + rows) of dst (rows of
// ncols entries); bias and real_dst as in lanes_store (a bias is indexed by destination column).
template <typename T, int64_t L>
inline void lanes_store_mapped(const T* __restrict buf, T* __restrict dst, int64_t ncols, int64_t row0, int64_t rows,
                               int64_t col0, int64_t count, bool add, const Plan& P, const int32_t* __restrict map,
                               const T* bias, bool real_dst) {
  const int64_t width = P.comps * L;
  if (L > 4 && col0 == 0 && count == ncols) {
    ThreadScratch<T, 3> spare_scratch(ncols * width);
    T* const spare = spare_scratch.data();
    for (int64_t p = 0; p < count; ++p) std::memcpy(spare + map[p] * width, buf + p * width, sizeof(T) * width);
    lanes_store<T, L>(spare, dst, ncols, row0, rows, 0, ncols, add, P, bias, real_dst);
    return;
  }
  const int64_t dc = real_dst ? 1 : P.comps;  // numbers per destination entry
  for (int64_t p = 0; p < count; ++p) {
    const int64_t j = map[col0 + p];
    const T* __restrict blk = buf + p * width;
    for (int64_t l = 0; l < rows; ++l) {
      T* __restrict out = dst + ((row0 + l) * ncols + j) * dc;
      for (int64_t k = 0; k < dc; ++k) {
        const T v = blk[k * L + l];
        out[k] = add ? out[k] + v : (bias ? v + bias[j * dc + k] : v);
      }
    }
  }
}

// The four transfers between a call's tensors and a tile of rows [row0, row0 + rows) (or a single row: L = 1), over a
// stack's columns [c0, c0 + count), each through the call's permutation where it has one (every tile and row path
// uses these).
// x's columns into the tile (a real x for complex twiddles read as x + 0i).
template <typename T, int64_t L>
inline void load_input(T* buf, const T* x, int64_t row0, int64_t rows, int64_t c0, int64_t count, const Plan& P) {
  if (P.in_perm)
    lanes_load_mapped<T, L>(buf, x, P.in_size, row0, rows, c0, count, P, P.in_perm,
                            Strides{P.in_size * P.x_comps, P.x_comps, 1}, true, P.real_input);
  else
    lanes_load<T, L>(buf, x, P.in_size, row0, rows, c0, count, P, P.real_input);
}
// The tile into the output's columns (added to them where add), the bias added.
template <typename T, int64_t L>
inline void store_output(const T* buf, T* out, int64_t row0, int64_t rows, int64_t c0, int64_t count, bool add,
                         const T* bias, const Plan& P) {
  if (P.out_inv)
    lanes_store_mapped<T, L>(buf, out, P.out_size, row0, rows, c0, count, add, P, P.out_inv, bias, false);
  else
    lanes_store<T, L>(buf, out, P.out_size, row0, rows, c0, count, add, P, bias);
}
// The incoming gradient's columns into the tile, read where they lie (strided or broadcast gradients too).
template <typename T, int64_t L>
inline void load_gradient(T* buf, const T* gy, int64_t row0, int64_t rows, int64_t c0, int64_t count, const Plan& P) {
  if (P.out_inv)
    lanes_load_mapped<T, L>(buf, gy, P.out_size, row0, rows, c0, count, P, P.out_inv,
                            Strides{P.g_row, P.g_col, P.g_comp}, P.g_contiguous, false);
  else if (P.g_contiguous)
    lanes_load<T, L>(buf, gy, P.out_size, row0, rows, c0, count, P);
  else
    lanes_load_strided<T, L>(buf, gy, row0, rows, c0, count, P);
}
// The tile into the input gradient's columns (added to them where add; the real part only for a real x).
template <typename T, int64_t L>
inline void store_input_gradient(const T* buf, T* gx, int64_t row0, int64_t rows, int64_t c0, int64_t count,
                                 bool add, const Plan& P) {
  if (count == 0) return;
  if (P.in_perm)
    lanes_store_mapped<T, L>(buf, gx, P.in_size, row0, rows, c0, count, add, P, P.in_perm, nullptr, P.real_input);
  else
    lanes_store<T, L>(buf, gx, P.in_size, row0, rows, c0, count, add, P, nullptr, P.real_input);
}

template <typename T, int64_t L = kLanes>
void lanes_forward(const T* tw, const T* x, const T* bias, T* out, const Plan& P) {
  const int64_t ntiles = (P.batch + L - 1) / L;
  const int64_t tile = P.n * P.comps * L;
  at::parallel_for(0, ntiles, grain_for(P, L), [&](int64_t begin, int64_t end) {
    ThreadScratch<T, 0> scratch(tile);  // lanes_load writes all of it
    T* const buf = scratch.data();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row0 = t * L, rows = std::min(L, P.batch - row0);
      for (int64_t k = 0; k < P.nstacks; ++k) {
        auto [ic0, icount] = input_cols(P, k);
        auto [oc0, ocount] = output_cols(P, k);
        if (ocount == 0) continue;
        const T* twk = tw + k * P.stack_size();
        load_input<T, L>(buf, x, row0, rows, ic0, icount, P);
        for (int64_t f = 0; f < P.F; ++f) lanes_factor<T, L>(buf, buf, twk, P, f);
        store_output<T, L>(buf, out, row0, rows, oc0, ocount, P.sum_output && k > 0, bias, P);
      }
    }
  });
}

#if defined(TWIDDLE_LANES_AVX2)
#define TWIDDLE_SINGLE_ROWS 1
// ------------------------------------------------------------------------------------------------ complex rows
// Complex forward of a single row (batch 1, where a 4-lane tile computes three lanes of padding), complex64 and
// complex128: the row is split into real and imaginary parts and every factor updates W blocks per vector (W = 8
// floats or 4 doubles), their twiddles transposed from the user's layout (W blocks x 8 numbers) in registers.
// Strides below W pair positions inside a vector; for them the row is held transposed, T[b][a] = x[W a + b] (W rows
// of n / W), where they pair rows b and b + s and W consecutive a are blocks W / 2 apart. Each block's arithmetic is
// the lane tile's (lanes_factor_complex), so the result is bit for bit the same. Needs n >= W^2 (rows of T of at
// least W).

// The 4 x 4 matrix with rows r0..r3 as its 4 columns: col[j] = (r0[j], r1[j], r2[j], r3[j]).
TWIDDLE_INLINE void transpose4(__m256d r0, __m256d r1, __m256d r2, __m256d r3, __m256d col[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);  // r0 r1 columns 0 | 2, 1 | 3
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  col[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  col[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  col[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  col[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}
// The 4 x 4 block src[r * lds + j] (r, j < 4) as 4 vectors, vector j holding column j (r = 0..3).
TWIDDLE_INLINE void transpose4(const double* src, int64_t lds, __m256d col[4]) {
  transpose4(_mm256_loadu_pd(src), _mm256_loadu_pd(src + lds), _mm256_loadu_pd(src + 2 * lds),
             _mm256_loadu_pd(src + 3 * lds), col);
}

// The AVX2 operations on one vector of float or double.
template <typename T>
struct CVec;
template <>
struct CVec<float> {
  using V = __m256;
  static constexpr int64_t W = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fmsub(V a, V b, V c) { return _mm256_fmsub_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V neg(V a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  // real twiddles: col[e] = number e of 8 blocks, block j's 4 numbers at tw + 4 (i0 + j step)
  static void entries4(const float* tw, int64_t i0, int64_t step, V col[4]) {
    __m128 lo[4], hi[4];
    for (int64_t j = 0; j < 4; ++j) {
      lo[j] = _mm_loadu_ps(tw + 4 * (i0 + j * step));
      hi[j] = _mm_loadu_ps(tw + 4 * (i0 + (j + 4) * step));
    }
    _MM_TRANSPOSE4_PS(lo[0], lo[1], lo[2], lo[3]);
    _MM_TRANSPOSE4_PS(hi[0], hi[1], hi[2], hi[3]);
    for (int64_t e = 0; e < 4; ++e) col[e] = _mm256_set_m128(hi[e], lo[e]);
  }
  // the inverse, added: block j's 4 numbers at d + 4 (i0 + j step) += number e of block j, sums[e][j]
  static void add_entries4(const V sums[4], float* d, int64_t i0, int64_t step) {
    __m128 lo[4], hi[4];
    for (int64_t e = 0; e < 4; ++e) lo[e] = _mm256_castps256_ps128(sums[e]), hi[e] = _mm256_extractf128_ps(sums[e], 1);
    _MM_TRANSPOSE4_PS(lo[0], lo[1], lo[2], lo[3]);
    _MM_TRANSPOSE4_PS(hi[0], hi[1], hi[2], hi[3]);
    for (int64_t j = 0; j < 4; ++j) {
      float* a = d + 4 * (i0 + j * step);
      float* b = d + 4 * (i0 + (j + 4) * step);
      _mm_storeu_ps(a, _mm_add_ps(_mm_loadu_ps(a), lo[j]));
      _mm_storeu_ps(b, _mm_add_ps(_mm_loadu_ps(b), hi[j]));
    }
  }
  // col[e] = raw number e of 8 blocks, block j's numbers at tw + 8 (i0 + j step)
  static void entries(const float* tw, int64_t i0, int64_t step, V col[8]) { transpose8(tw + 8 * i0, 8 * step, col); }
  // the inverse: block j's 8 numbers at d + 8 (i0 + j step) += number e of block j, sums[e][j]
  static void add_entries(const float (&sums)[8][W], float* d, int64_t i0, int64_t step) {
    V rows[8];
    transpose8(&sums[0][0], W, rows);
    for (int64_t j = 0; j < W; ++j) {
      float* b = d + 8 * (i0 + j * step);
      store(b, _mm256_add_ps(load(b), rows[j]));
    }
  }
};
template <>
struct CVec<double> {
  using V = __m256d;
  static constexpr int64_t W = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V fmsub(V a, V b, V c) { return _mm256_fmsub_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  static V neg(V a) { return _mm256_xor_pd(a, _mm256_set1_pd(-0.0)); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  // real twiddles: col[e] = number e of 4 blocks, block j's 4 numbers at tw + 4 (i0 + j step)
  static void entries4(const double* tw, int64_t i0, int64_t step, V col[4]) { transpose4(tw + 4 * i0, 4 * step, col); }
  static void add_entries4(const V sums[4], double* d, int64_t i0, int64_t step) {
    V rows[4];  // block j's 4 numbers
    transpose4(sums[0], sums[1], sums[2], sums[3], rows);
    for (int64_t j = 0; j < 4; ++j) {
      double* b = d + 4 * (i0 + j * step);
      store(b, _mm256_add_pd(load(b), rows[j]));
    }
  }
  // col[e] = raw number e of 4 blocks: two 4 x 4 transposes (numbers 0-3, then 4-7)
  static void entries(const double* tw, int64_t i0, int64_t step, V col[8]) {
    transpose4(tw + 8 * i0, 8 * step, col);
    transpose4(tw + 8 * i0 + 4, 8 * step, col + 4);
  }
  static void add_entries(const double (&sums)[8][W], double* d, int64_t i0, int64_t step) {
    V lo[4], hi[4];  // numbers 0-3 and 4-7 of each block
    transpose4(&sums[0][0], W, lo);
    transpose4(&sums[4][0], W, hi);
    for (int64_t j = 0; j < W; ++j) {
      double* b = d + 8 * (i0 + j * step);
      store(b, _mm256_add_pd(load(b), lo[j]));
      store(b + 4, _mm256_add_pd(load(b + 4), hi[j]));
    }
  }
};

// The applied entries (a b c d: re, im; conjugated when asked) of W blocks, block j's raw numbers at
// tw + 8 (i0 + j step).
template <typename T>
struct CQuad {
  typename CVec<T>::V ar, ai, br, bi, cr, ci, dr, di;
};
template <typename T>
TWIDDLE_INLINE CQuad<T> crow_quad(const T* tw, int64_t i0, int64_t step, int eb, int ec, bool conjugate) {
  using O = CVec<T>;
  typename O::V col[8];
  O::entries(tw, i0, step, col);
  CQuad<T> q{col[0], col[1], col[2 * eb], col[2 * eb + 1], col[2 * ec], col[2 * ec + 1], col[6], col[7]};
  if (conjugate) q.ai = O::neg(q.ai), q.bi = O::neg(q.bi), q.ci = O::neg(q.ci), q.di = O::neg(q.di);
  return q;
}

// (p, q) <- T (p, q) on W blocks: real parts at pr, qr, imaginary at pi, qi (in place).
template <typename T>
TWIDDLE_INLINE void crow_apply(const CQuad<T>& t, T* pr, T* pi, T* qr, T* qi) {
  using O = CVec<T>;
  const auto ur = O::load(pr), ui = O::load(pi), vr = O::load(qr), vi = O::load(qi);
  // the lane tile's order: fma(-bi, vi, fma(br, vr, fma(ar, ur, -(ai ui)))) and so on
  O::store(pr, O::fnmadd(t.bi, vi, O::fmadd(t.br, vr, O::fmsub(t.ar, ur, O::mul(t.ai, ui)))));
  O::store(pi, O::fmadd(t.bi, vr, O::fmadd(t.br, vi, O::fmadd(t.ar, ui, O::mul(t.ai, ur)))));
  O::store(qr, O::fnmadd(t.di, vi, O::fmadd(t.dr, vr, O::fmsub(t.cr, ur, O::mul(t.ci, ui)))));
  O::store(qi, O::fmadd(t.di, vr, O::fmadd(t.dr, vi, O::fmadd(t.cr, ui, O::mul(t.ci, ur)))));
}

// Calls body(i0, step, p, q) for every W blocks of a stride-s factor on a row of n numbers: the offsets of their
// first and second members in the plain layout (s >= W) or the transposed one T (s < W: T[b][a] = x[W a + b], W
// rows of n / W, where the factor pairs rows b and b + s and W consecutive a are blocks W / 2 apart); the blocks are
// i0 + j step, j < W.
template <int64_t W, typename Body>
TWIDDLE_INLINE void row_blocks(int64_t n, int64_t s, const Body& body) {
  if (s >= W) {
    for (int64_t g = 0; g < n; g += 2 * s)
      for (int64_t r = 0; r < s; r += W) body(block_index(g + r, s), int64_t{1}, g + r, g + r + s);
    return;
  }
  const int64_t m = n / W;  // T's row length
  for (int64_t b = 0; b < W; ++b) {
    if (b & s) continue;
    const int64_t c = (b & (s - 1)) | ((b >> 1) & ~(s - 1));  // block of x[W a + b] is (W / 2) a + c
    for (int64_t a0 = 0; a0 < m; a0 += W) body(W / 2 * a0 + c, W / 2, b * m + a0, (b + s) * m + a0);
  }
}

// One factor (stride s, raw twiddles twf) on the split row re, im (n numbers each), in the layout row_blocks names.
template <typename T>
inline void crow_factor(T* re, T* im, const T* twf, int64_t n, int64_t s, int eb, int ec, bool conj) {
  row_blocks<CVec<T>::W>(n, s, [&](int64_t i0, int64_t step, int64_t p, int64_t q) {
    crow_apply(crow_quad(twf, i0, step, eb, ec, conj), re + p, im + p, re + q, im + q);
  });
}

// Backward through W blocks (their applied entries t; raw gradients at dtw + 8 (i0 + j step), j < W): the split
// gradient rows (gp, gq) <- conj(T)^T (gp, gq), and dT += g conj(u)^T (each number's imaginary part negated for
// conjugated twiddles), u = (up, uq) the blocks' input; every product in the lane tile's order
// (lanes_factor_complex_backward), so the gradients are bit for bit those of a one-row lane tile.
template <typename T>
TWIDDLE_INLINE void crow_apply_backward(const CQuad<T>& t, T* dtw, int64_t i0, int64_t step, int eb, int ec,
                                        bool conjugate, T* gpr, T* gpi, T* gqr, T* gqi, const T* upr, const T* upi,
                                        const T* uqr, const T* uqi) {
  using O = CVec<T>;
  constexpr int64_t W = O::W;
  const auto g0r = O::load(gpr), g0i = O::load(gpi), g1r = O::load(gqr), g1i = O::load(gqi);
  const auto xr0 = O::load(upr), xi0 = O::load(upi), xr1 = O::load(uqr), xi1 = O::load(uqi);
  alignas(32) T sums[8][W];  // raw number e of the W blocks' gradients
  const auto put = [&](int e, typename O::V re, typename O::V im) {
    O::store(sums[e], re);
    O::store(sums[e + 1], conjugate ? O::neg(im) : im);
  };
  put(0, O::fmadd(g0i, xi0, O::mul(g0r, xr0)), O::fnmadd(g0r, xi0, O::mul(g0i, xr0)));
  put(2 * eb, O::fmadd(g0i, xi1, O::mul(g0r, xr1)), O::fnmadd(g0r, xi1, O::mul(g0i, xr1)));
  put(2 * ec, O::fmadd(g1i, xi0, O::mul(g1r, xr0)), O::fnmadd(g1r, xi0, O::mul(g1i, xr0)));
  put(6, O::fmadd(g1i, xi1, O::mul(g1r, xr1)), O::fnmadd(g1r, xi1, O::mul(g1i, xr1)));
  O::store(gpr, O::fmadd(t.ci, g1i, O::fmadd(t.cr, g1r, O::fmadd(t.ai, g0i, O::mul(t.ar, g0r)))));
  O::store(gpi, O::fnmadd(t.ci, g1r, O::fmadd(t.cr, g1i, O::fnmadd(t.ai, g0r, O::mul(t.ar, g0i)))));
  O::store(gqr, O::fmadd(t.di, g1i, O::fmadd(t.dr, g1r, O::fmadd(t.bi, g0i, O::mul(t.br, g0r)))));
  O::store(gqi, O::fnmadd(t.di, g1r, O::fmadd(t.dr, g1i, O::fnmadd(t.bi, g0r, O::mul(t.br, g0i)))));
  O::add_entries(sums, dtw, i0, step);
}

// Between the layouts: dst = src transposed as an (rows x cols) matrix.
template <typename T>
inline void crow_transpose(T* __restrict dst, const T* __restrict src, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
}

// Puts a row held as `parts` consecutive arrays of n numbers (spare: n more) into the layout a factor works on: plain,
// or held transposed (W x n / W) for strides below W (want). `transposed` is its current layout.
template <typename T, int64_t W>
inline void row_layout(T* row, int64_t parts, T* spare, int64_t n, bool& transposed, bool want) {
  if (want == transposed) return;
  for (int64_t i = 0; i < parts; ++i) {  // (n / W x W) <-> (W x n / W)
    crow_transpose(spare, row + i * n, want ? n / W : W, want ? W : n / W);
    std::memcpy(row + i * n, spare, sizeof(T) * n);
  }
  transposed = want;
}

template <typename T>
inline bool use_complex_rows(const Plan& P) {
  constexpr int64_t W = CVec<T>::W;
  return P.complex && P.batch == 1 && P.n >= W * W;
}

// ------------------------------------------------------------------------------------------------ real rows
// A single real row (batch 1, where the narrowest lane tile, 4 lanes, computes three lanes of padding): as the complex
// row path, W blocks per vector (4 doubles, 8 floats) with their twiddles transposed from the user's layout (W blocks
// x 4 numbers) in registers, strides below W on the row held transposed (W x n / W). Each block's arithmetic is the
// lane tile's (lanes_factor_real and its backward), so the results are bit for bit the same. Needs n >= W^2. float64
// forward and backward; float32 backward on AVX-512 only: float32 rows have their own row code (below), faster
// (it fuses factors in registers: forward n = 16384 81 against 97 us here, 1 thread), whose AVX-512 backward converts
// the twiddles to and from a vector-friendly layout on every call, most of a single row's time (on AVX2, before its
// row code read the user's layout, this path took a float32 row's backward from 26 to 20 us at n = 1024, 598 to
// 306 us at n = 16384, 1 thread).

// (dp, dq) <- T (sp, sq) on W blocks whose raw twiddles (4 numbers each) start at tw + 4 (i0 + j step), j < W
// (d == s: in place).
template <typename T>
TWIDDLE_INLINE void rrow_apply(const T* tw, int64_t i0, int64_t step, int eb, int ec, const T* sp, const T* sq, T* dp,
                               T* dq) {
  using O = CVec<T>;
  typename O::V col[4];
  O::entries4(tw, i0, step, col);
  const auto u = O::load(sp), v = O::load(sq);
  O::store(dp, O::fmadd(col[0], u, O::mul(col[eb], v)));
  O::store(dq, O::fmadd(col[ec], u, O::mul(col[3], v)));
}

// Backward through the same W blocks: (gp, gq) <- T^T (gp, gq), and the blocks' raw twiddle gradients (at
// dtw + 4 (i0 + j step)) += g u^T, u = (up, uq) the blocks' input.
template <typename T>
TWIDDLE_INLINE void rrow_apply_backward(const T* tw, T* dtw, int64_t i0, int64_t step, int eb, int ec, T* gp, T* gq,
                                        const T* up, const T* uq) {
  using O = CVec<T>;
  typename O::V col[4];
  O::entries4(tw, i0, step, col);
  const auto g0 = O::load(gp), g1 = O::load(gq);
  const auto x0 = O::load(up), x1 = O::load(uq);
  typename O::V sums[4];  // entry e of the W blocks' gradients
  sums[0] = O::mul(g0, x0);
  sums[eb] = O::mul(g0, x1);
  sums[ec] = O::mul(g1, x0);
  sums[3] = O::mul(g1, x1);
  O::store(gp, O::fmadd(col[0], g0, O::mul(col[ec], g1)));
  O::store(gq, O::fmadd(col[eb], g0, O::mul(col[3], g1)));
  O::add_entries4(sums, dtw, i0, step);
}

// One factor (stride s, raw twiddles twf): dst = factor(src) on a row of n numbers (dst == src: in place).
template <typename T>
inline void rrow_factor(T* dst, const T* src, const T* twf, int64_t n, int64_t s, int eb, int ec) {
  row_blocks<CVec<T>::W>(n, s, [&](int64_t i0, int64_t step, int64_t p, int64_t q) {
    rrow_apply(twf, i0, step, eb, ec, src + p, src + q, dst + p, dst + q);
  });
}

template <typename T>
inline bool use_real_rows(const Plan& P) {
  constexpr int64_t W = CVec<T>::W;
  return !P.complex && P.batch == 1 && P.n >= W * W;
}

// ------------------------------------------------------------------------------------------------ row paths
// The forward and backward of one row (use_complex_rows, use_real_rows) held as R::parts arrays of n numbers:
// ComplexRow (real and imaginary parts) or RealRow; loads and stores as lanes_forward's and lanes_backward's with a
// one-lane tile (every input mode, permutation, bias and output mode handled there).
template <typename T>
struct ComplexRow {
  static constexpr int64_t W = CVec<T>::W, parts = 2;
  static void from_tile(const T* tile, T* row, int64_t n) {  // the one-lane tile interleaves re, im per position
    for (int64_t p = 0; p < n; ++p) row[p] = tile[2 * p], row[n + p] = tile[2 * p + 1];
  }
  static void to_tile(const T* row, T* tile, int64_t n) {
    for (int64_t p = 0; p < n; ++p) tile[2 * p] = row[p], tile[2 * p + 1] = row[n + p];
  }
  static void factor(T* row, const T* twf, int64_t n, int64_t s, int eb, int ec, const Plan& P) {
    crow_factor(row, row + n, twf, n, s, eb, ec, P.conjugate);
  }
  static void factor_backward(T* g, const T* u, const T* twf, T* dtwf, int64_t n, int64_t s, int eb, int ec,
                              const Plan& P) {
    row_blocks<W>(n, s, [&](int64_t i0, int64_t step, int64_t p, int64_t q) {
      crow_apply_backward(crow_quad(twf, i0, step, eb, ec, P.conjugate), dtwf, i0, step, eb, ec, P.conjugate, g + p,
                          g + n + p, g + q, g + n + q, u + p, u + n + p, u + q, u + n + q);
    });
  }
};

template <typename T>
struct RealRow {
  static constexpr int64_t W = CVec<T>::W, parts = 1;
  static void from_tile(const T* tile, T* row, int64_t n) { std::copy_n(tile, n, row); }
  static void to_tile(const T* row, T* tile, int64_t n) { std::copy_n(row, n, tile); }
  static void factor(T* row, const T* twf, int64_t n, int64_t s, int eb, int ec, const Plan&) {
    rrow_factor(row, row, twf, n, s, eb, ec);
  }
  static void factor_backward(T* g, const T* u, const T* twf, T* dtwf, int64_t n, int64_t s, int eb, int ec,
                              const Plan&) {
    row_blocks<W>(n, s, [&](int64_t i0, int64_t step, int64_t p, int64_t q) {
      rrow_apply_backward(twf, dtwf, i0, step, eb, ec, g + p, g + q, u + p, u + q);
    });
  }
};

template <typename R, typename T>
void row_forward(const T* tw, const T* x, const T* bias, T* out, const Plan& P) {
  constexpr int64_t W = R::W, np = R::parts;
  const int64_t n = P.n;
  const int eb = static_cast<int>(raw_entry(P, 1)), ec = static_cast<int>(raw_entry(P, 2));
  ThreadScratch<T, 0> scratch(P.comps * n + np * n + n);  // the one-lane tile, the row, a transposing buffer
  T* const tile = scratch.data();
  T* const row = tile + P.comps * n;
  T* const spare = row + np * n;
  for (int64_t k = 0; k < P.nstacks; ++k) {
    auto [ic0, icount] = input_cols(P, k);
    auto [oc0, ocount] = output_cols(P, k);
    if (ocount == 0) continue;
    const T* twk = tw + k * P.stack_size();
    load_input<T, 1>(tile, x, 0, 1, ic0, icount, P);
    R::from_tile(tile, row, n);
    bool transposed = false;  // the row's layout
    for (int64_t f = 0; f < P.F; ++f) {
      row_layout<T, W>(row, np, spare, n, transposed, P.strides[f] < W);
      R::factor(row, twk + P.offsets[f], n, P.strides[f], eb, ec, P);
    }
    row_layout<T, W>(row, np, spare, n, transposed, false);
    R::to_tile(row, tile, n);
    store_output<T, 1>(tile, out, 0, 1, oc0, ocount, P.sum_output && k > 0, bias, P);
  }
}

// Every factor's input recomputed in the layout that factor works on, then the gradient taken back through the
// factors. gtw and gbias (nullable) are zero-filled and get the row's gradients directly (one row: nothing to reduce
// across chunks).
template <typename R, typename T>
void row_backward(const T* tw, const T* x, const T* gy, T* gx, T* gtw, T* gbias, const Plan& P) {
  constexpr int64_t W = R::W, np = R::parts;
  const int64_t n = P.n, F = std::max<int64_t>(P.F, 1), size = np * n;
  const int eb = static_cast<int>(raw_entry(P, 1)), ec = static_cast<int>(raw_entry(P, 2));
  // the one-lane tile, every factor's input, the gradient, a transposing buffer
  ThreadScratch<T, 1> scratch(P.comps * n + (F + 1) * size + n);
  T* const tile = scratch.data();
  T* const acts = tile + P.comps * n;  // factor f's input at acts + f size
  T* const g = acts + F * size;
  T* const spare = g + size;
  for (int64_t k = 0; k < P.nstacks; ++k) {
    auto [ic0, icount] = input_cols(P, k);
    auto [oc0, ocount] = output_cols(P, k);
    const T* twk = tw + k * P.stack_size();
    T* gtwk = gtw + k * P.stack_size();
    load_input<T, 1>(tile, x, 0, 1, ic0, icount, P);
    R::from_tile(tile, acts, n);
    bool transposed = false;  // the layout of the factor inputs computed so far
    for (int64_t f = 0; f < P.F; ++f) {
      T* u = acts + f * size;
      row_layout<T, W>(u, np, spare, n, transposed, P.strides[f] < W);
      if (f + 1 == P.F) break;
      std::copy_n(u, size, u + size);
      R::factor(u + size, twk + P.offsets[f], n, P.strides[f], eb, ec, P);
    }
    load_gradient<T, 1>(tile, gy, 0, 1, oc0, ocount, P);
    R::from_tile(tile, g, n);
    if (gbias) {
      const auto [bc0, bcount] = bias_gradient_cols(P, k, oc0, ocount);
      if (bcount > 0) add_gradient_column_sums<T>(gbias + bc0 * P.comps, gy, 0, 1, bc0, bcount, P);
    }
    bool g_transposed = false;
    for (int64_t f = P.F - 1; f >= 0; --f) {
      row_layout<T, W>(g, np, spare, n, g_transposed, P.strides[f] < W);
      R::factor_backward(g, acts + f * size, twk + P.offsets[f], gtwk + P.offsets[f], n, P.strides[f], eb, ec, P);
    }
    row_layout<T, W>(g, np, spare, n, g_transposed, false);
    R::to_tile(g, tile, n);
    store_input_gradient<T, 1>(tile, gx, 0, 1, ic0, icount, !P.split_input && k > 0, P);
  }
}
#endif

// The lane-tile backward's work on tiles [begin, end) of one chunk (acc: the chunk's twiddle gradient, then, with a
// bias, its bias gradient): for every tile and stack, x's columns into `in`, then recompute(k) (whatever the
// backward keeps of the forward), the incoming gradient into `g` and the bias gradient, then back(k, acck), which
// takes `g` back to the input gradient and adds the twiddle gradient into acck, and `g` into gx.
template <typename T, int64_t L, typename Recompute, typename Back>
void lanes_backward_tiles(int64_t begin, int64_t end, T* in, T* g, T* acc, int64_t tw_size, bool with_bias,
                          const T* x, const T* gy, T* gx, const Plan& P, const Recompute& recompute, const Back& back) {
  for (int64_t t = begin; t < end; ++t) {
    const int64_t row0 = t * L, rows = std::min(L, P.batch - row0);
    for (int64_t k = 0; k < P.nstacks; ++k) {
      auto [ic0, icount] = input_cols(P, k);
      auto [oc0, ocount] = output_cols(P, k);
      load_input<T, L>(in, x, row0, rows, ic0, icount, P);
      recompute(k);
      load_gradient<T, L>(g, gy, row0, rows, oc0, ocount, P);
      if (with_bias) {
        const auto [bc0, bcount] = bias_gradient_cols(P, k, oc0, ocount);
        if (bcount > 0) add_gradient_column_sums<T>(acc + tw_size + bc0 * P.comps, gy, row0, rows, bc0, bcount, P);
      }
      back(k, acc + k * P.stack_size());
      store_input_gradient<T, L>(g, gx, row0, rows, ic0, icount, !P.split_input && k > 0, P);
    }
  }
}

// gbias (nullable, zero-filled, out_size * comps numbers) receives the bias gradient, the column sums of gy.
template <typename T, int64_t L = kLanes>
void lanes_backward(const T* tw, const T* x, const T* gy, T* gx, T* gtw, T* gbias, int64_t tw_size, const Plan& P) {
  const int64_t ntiles = (P.batch + L - 1) / L;
  const int64_t tile = P.n * P.comps * L;
  const int64_t acc_size = tw_size + (gbias ? P.out_size * P.comps : 0);
  const int64_t grain = std::max<int64_t>(1, grain_for(P, L) / 4);
  chunked_reduce<T>(ntiles, min_groups_per_chunk(ntiles, max_tiles_per_chunk(L)), grain, acc_size, tw_size, gtw,
                    gbias,
                    [&](int64_t begin, int64_t end, T* acc) {
    // the input of every factor, then the gradient (lanes_load and the factors write all of each tile used)
    ThreadScratch<T, 1> scratch((std::max<int64_t>(P.F, 1) + 1) * tile);
    T* const acts = scratch.data();
    T* const g = acts + std::max<int64_t>(P.F, 1) * tile;
    lanes_backward_tiles<T, L>(begin, end, acts, g, acc, tw_size, gbias != nullptr, x, gy, gx, P,
      [&](int64_t k) {  // factor f reads its input tile and writes the next one (out of place: no copy)
        for (int64_t f = 0; f + 1 < P.F; ++f)
          lanes_factor<T, L>(acts + (f + 1) * tile, acts + f * tile, tw + k * P.stack_size(), P, f);
      },
      [&](int64_t k, T* acck) {
        for (int64_t f = P.F - 1; f >= 0; --f)
          lanes_factor_backward<T, L>(g, acts + f * tile, tw + k * P.stack_size(), acck, P, f);
      });
  });
}

// ------------------------------------------------------------------------------------------------ blocked tiles
// The plain lane-tile backward keeps every factor's input tile: at n = 16384 with 16 float32 lanes, 15 tiles of 1 MB
// per thread, 30 MB for two threads against the development machine's 32 MB L3, so that each factor streamed
// whole tiles through memory and the backward cost 5-7 forwards where smaller sizes cost 3-4. The blocked backward
// takes the factors in phases that stay in cache, as a four-step FFT does. With n = C m (C = 2^ceil(log2(n) / 2)),
// a factor of stride s < C maps each chunk of C consecutive positions into itself, and one of stride s >= C each
// column {r + C j : j < m} (r < C) into itself, there with stride s / C. Consecutive factors of one kind form a
// phase. The backward keeps only every phase's input tile (computed by a forward pass over the tile, phase by
// phase) and goes back through the phases chunk by chunk or column by column (columns copied out in groups and
// back), recomputing each part's factor inputs in a few buffers of max(C, m) positions. Twiddles are read in a
// blocked layout made once per call (a column phase's blocks reordered so that each column's are consecutive) and
// the twiddle gradient is summed in that layout and reordered back, so that every factor runs the lane kernels
// above on its part unchanged: the gradients are bit for bit the plain backward's (the same arithmetic per
// position, each block's gradient summed over the same lanes and tiles in the same order; see TWIDDLE_ONE_BODY).

// The plain backward's activations (every factor's input tile and the gradient tile, on every thread at work) above
// this many bytes take the blocked backward: half the development machine's L3 (32 MB). Measured there (2 threads,
// backward op, best of 8 x 3): float32 n = 16384 batch 256 (30 MB) 17.4 -> 11.4 ms, batch 64 5.1 -> 3.5 ms;
// float64 n = 8192 batch 128 (28 MB) 9.2 -> 6.3 ms; complex64 n = 8192 batch 256 18.6 -> 16.9 ms, n = 16384 batch
// 64 14.8 -> 11.6 ms; float32 n = 32768 batch 64 (64 MB) 49 -> 9.4 ms. Below it the blocked backward lost: 14 MB
// (float32 n = 8192 batch 256, complex64 n = 4096) 1.06-1.10x the plain one's time, one 8-lane float64 tile at
// n = 16384 (15 MB, one thread) 1.05x: its copies of columns and its second pass over the first phases cost more
// than the memory traffic they save. The blocked forward (not used) lost everywhere: 1.1-1.4x; the plain forward
// streams one tile per factor, which the prefetchers keep up with.
inline std::atomic<int64_t> g_blocked_backward_bytes{int64_t(16) << 20};

// Sets the threshold, returns the previous one (tests set 0 to compare the blocked backward with the plain one).
int64_t set_blocked_backward_bytes(int64_t bytes) { return g_blocked_backward_bytes.exchange(bytes); }

template <typename T>
inline bool use_blocked(const Plan& P, int64_t L) {
  if (P.n < 4) return false;
  const int64_t ntiles = (P.batch + L - 1) / L;
  const int64_t chunks = chunking(ntiles, min_groups_per_chunk(ntiles, max_tiles_per_chunk(L))).count;
  const int64_t working = std::min<int64_t>(at::get_num_threads(), chunks);
  const int64_t bytes = (P.F + 1) * P.n * L * P.comps * static_cast<int64_t>(sizeof(T)) * working;
  return bytes > g_blocked_backward_bytes.load(std::memory_order_relaxed);
}

struct Blocking {
  int64_t C = 0, m = 0;        // chunk length and column length (positions), C m = n
  std::vector<int64_t> begin;  // phase q: factors [begin[q], begin[q + 1])
  std::vector<char> columns;   // phase q runs on columns (strides >= C), else on chunks
  int64_t longest = 0;         // factors in the longest phase
  int64_t phases() const { return static_cast<int64_t>(columns.size()); }
};

inline Blocking make_blocking(const Plan& P) {
  Blocking B;
  B.C = int64_t(1) << ((P.log_n + 1) / 2);
  B.m = P.n / B.C;
  for (int64_t f = 0; f < P.F; ++f) {
    const char col = P.strides[f] >= B.C;
    if (f == 0 || col != B.columns.back()) B.begin.push_back(f), B.columns.push_back(col);
  }
  B.begin.push_back(P.F);
  for (int64_t q = 0; q < B.phases(); ++q) B.longest = std::max(B.longest, B.begin[q + 1] - B.begin[q]);
  return B;
}

// The twiddles (or their gradient) between the user's layout and the blocked one, every stack: a chunk phase's
// factors as they are (chunk c's blocks are c C / 2 .. c C / 2 + C / 2 - 1), a column phase's with block
// r + C i (column r, i < m / 2) moved to r m / 2 + i. to_blocked false: the other way.
template <typename T>
void reorder_twiddles(const T* __restrict src, T* __restrict dst, const Plan& P, const Blocking& B, bool to_blocked) {
  const int64_t bs = 4 * P.comps, log_c = (P.log_n + 1) / 2, per_column = B.m / 2;
  for (int64_t k = 0; k < P.nstacks; ++k)
    for (int64_t f = 0; f < P.F; ++f) {
      const int64_t off = k * P.stack_size() + P.offsets[f];
      if (P.strides[f] < B.C) {
        std::memcpy(dst + off, src + off, sizeof(T) * P.factor_size);
        continue;
      }
      for (int64_t i = 0; i < P.half; ++i) {
        const int64_t j = (i & (B.C - 1)) * per_column + (i >> log_c);
        const int64_t from = to_blocked ? i : j, to = to_blocked ? j : i;
        std::copy_n(src + off + bs * from, bs, dst + off + bs * to);
      }
    }
}

// Columns r0 .. r0 + G - 1 of a tile (column r: positions r + C j, j < m; W numbers per position) to G buffers of m
// positions (column r0 + g at cols + g m W) and back. Adjacent columns are taken together so that the tile is read
// and written in runs of G positions rather than one position (a cache line or two) at a time.
template <typename T, int64_t W>
inline void move_columns(T* cols, T* tile, int64_t r0, int64_t G, const Blocking& B, bool gather) {
  for (int64_t j = 0; j < B.m; ++j) {
    T* run = tile + (r0 + B.C * j) * W;
    for (int64_t g = 0; g < G; ++g) {
      T* col = cols + (g * B.m + j) * W;
      if (gather)
        std::copy_n(run + g * W, W, col);
      else
        std::copy_n(col, W, run + g * W);
    }
  }
}
template <typename T, int64_t L>
inline void move_columns(T* cols, T* tile, int64_t r0, int64_t G, const Blocking& B, const Plan& P, bool gather) {
  if (P.comps == 1)
    move_columns<T, L>(cols, tile, r0, G, B, gather);
  else
    move_columns<T, 2 * L>(cols, tile, r0, G, B, gather);
}

// Columns moved together: G = kColumnGroup (or C, if less) columns of m positions.
constexpr int64_t kColumnGroup = 8;

// Phase q's part c: its length (positions), the stride of factor f on it, and its first block (in the blocked
// layout, relative to the factor's first block: c len / 2 for chunks and columns alike).
struct PhasePart {
  bool columns;
  int64_t parts, len;
};
inline PhasePart phase_part(const Blocking& B, int64_t q) {
  const bool cols = B.columns[q];
  return {cols, cols ? B.C : B.m, cols ? B.m : B.C};
}

// Phase q of the forward on a whole tile, in place (cols: a buffer of kColumnGroup columns of m positions).
template <typename T, int64_t L>
void blocked_phase_forward(T* tile, T* cols, const T* twk, const Plan& P, const Blocking& B, int64_t q) {
  const int64_t ps = P.comps * L, bs = 4 * P.comps;
  const PhasePart pp = phase_part(B, q);
  const auto run = [&](T* part, int64_t c) {
    for (int64_t f = B.begin[q]; f < B.begin[q + 1]; ++f)
      lanes_factor_on<T, L>(part, part, twk + P.offsets[f] + bs * (c * pp.len / 2), pp.len,
                            pp.columns ? P.strides[f] / B.C : P.strides[f], P);
  };
  if (!pp.columns) {
    for (int64_t c = 0; c < pp.parts; ++c) run(tile + c * pp.len * ps, c);
    return;
  }
  const int64_t G = std::min(kColumnGroup, B.C);
  for (int64_t r0 = 0; r0 < B.C; r0 += G) {
    move_columns<T, L>(cols, tile, r0, G, B, P, true);
    for (int64_t g = 0; g < G; ++g) run(cols + g * B.m * ps, r0 + g);
    move_columns<T, L>(cols, tile, r0, G, B, P, false);
  }
}

// Phase q of the backward: g (a whole tile, the gradient w.r.t. the phase's output) becomes the gradient w.r.t. its
// input u (a whole tile); dtwk gets the phase's twiddle gradients. Each part's factor inputs after the first are
// recomputed in acts (B.longest - 1 buffers of max(C, m) positions); a column phase moves kColumnGroup columns of u
// and of g at a time through us and gs.
template <typename T, int64_t L>
void blocked_phase_backward(T* u, T* g, T* acts, T* us, T* gs, const T* twk, T* dtwk, const Plan& P,
                            const Blocking& B, int64_t q) {
  const int64_t ps = P.comps * L, bs = 4 * P.comps, sub = std::max(B.C, B.m) * ps;
  const PhasePart pp = phase_part(B, q);
  const int64_t f0 = B.begin[q], f1 = B.begin[q + 1];
  const auto run = [&](const T* u0, T* gp, int64_t c) {
    const auto input = [&](int64_t f) { return f == f0 ? u0 : acts + (f - f0 - 1) * sub; };  // factor f's input
    const int64_t first = bs * (c * pp.len / 2);
    const auto stride = [&](int64_t f) { return pp.columns ? P.strides[f] / B.C : P.strides[f]; };
    for (int64_t f = f0; f + 1 < f1; ++f)
      lanes_factor_on<T, L>(acts + (f - f0) * sub, input(f), twk + P.offsets[f] + first, pp.len, stride(f), P);
    for (int64_t f = f1 - 1; f >= f0; --f)
      lanes_factor_backward_on<T, L>(gp, input(f), twk + P.offsets[f] + first, dtwk + P.offsets[f] + first, pp.len,
                                     stride(f), P);
  };
  if (!pp.columns) {
    for (int64_t c = 0; c < pp.parts; ++c) run(u + c * pp.len * ps, g + c * pp.len * ps, c);
    return;
  }
  const int64_t G = std::min(kColumnGroup, B.C);
  for (int64_t r0 = 0; r0 < B.C; r0 += G) {
    move_columns<T, L>(us, u, r0, G, B, P, true);
    move_columns<T, L>(gs, g, r0, G, B, P, true);
    for (int64_t k = 0; k < G; ++k) run(us + k * B.m * ps, gs + k * B.m * ps, r0 + k);
    move_columns<T, L>(gs, g, r0, G, B, P, false);
  }
}

// lanes_backward with blocked tiles: gtw (zero-filled) gets the twiddle gradient reordered from the blocked layout.
template <typename T, int64_t L>
void lanes_backward_blocked(const T* tw, const T* x, const T* gy, T* gx, T* gtw, T* gbias, int64_t tw_size,
                            const Plan& P) {
  const Blocking B = make_blocking(P);
  const int64_t ntiles = (P.batch + L - 1) / L;
  const int64_t ps = P.comps * L, tile = P.n * ps, sub = std::max(B.C, B.m) * ps;
  const int64_t acc_size = tw_size + (gbias ? P.out_size * P.comps : 0);
  const int64_t grain = std::max<int64_t>(1, grain_for(P, L) / 4);
  ThreadScratch<T, 5> blocked(2 * tw_size);  // the twiddles, their gradient (both in the blocked layout)
  T* const twb = blocked.data();
  T* const gtwb = twb + tw_size;
  reorder_twiddles(tw, twb, P, B, true);
  std::fill(gtwb, gtwb + tw_size, T(0));
  chunked_reduce<T>(ntiles, min_groups_per_chunk(ntiles, max_tiles_per_chunk(L)), grain, acc_size, tw_size, gtwb,
                    gbias,
                    [&](int64_t begin, int64_t end, T* acc) {
    // every phase's input tile, the gradient tile, a part's factor inputs, a group of columns of each tile
    const int64_t group = kColumnGroup * B.m * ps;
    ThreadScratch<T, 1> scratch((B.phases() + 1) * tile + (B.longest - 1) * sub + 2 * group);
    T* const inputs = scratch.data();
    T* const g = inputs + B.phases() * tile;
    T* const acts = g + tile;
    T* const us = acts + (B.longest - 1) * sub;
    T* const gs = us + group;
    lanes_backward_tiles<T, L>(begin, end, inputs, g, acc, tw_size, gbias != nullptr, x, gy, gx, P,
      [&](int64_t k) {
        for (int64_t q = 0; q + 1 < B.phases(); ++q) {
          std::copy_n(inputs + q * tile, tile, inputs + (q + 1) * tile);
          blocked_phase_forward<T, L>(inputs + (q + 1) * tile, us, twb + k * P.stack_size(), P, B, q);  // us: a group
        }
      },
      [&](int64_t k, T* acck) {
        for (int64_t q = B.phases() - 1; q >= 0; --q)
          blocked_phase_backward<T, L>(inputs + q * tile, g, acts, us, gs, twb + k * P.stack_size(), acck, P, B, q);
      });
  });
  reorder_twiddles(gtwb, gtw, P, B, false);
}

// The lane-tile backward of width L, blocked where the plain one's activations would not fit in cache (use_blocked).
template <typename T, int64_t L>
void tiles_backward(const T* tw, const T* x, const T* gy, T* gx, T* gtw, T* gbias, int64_t tw_size, const Plan& P) {
  if (use_blocked<T>(P, L)) return lanes_backward_blocked<T, L>(tw, x, gy, gx, gtw, gbias, tw_size, P);
  lanes_backward<T, L>(tw, x, gy, gx, gtw, gbias, tw_size, P);
}

// ================================================================================================ rows
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define TWIDDLE_HAVE_ROWS 1

// The vector the row layout works with: kW floats (16 on AVX-512, 8 on AVX2 + FMA), and the two-source
// permute vperm2(a, idx, b) = (a | b)[idx] (idx entries in [0, 2 kW)), native on AVX-512 and a pair of one-source
// permutes and a blend on AVX2.
#if defined(__AVX512F__)
using VF = __m512;
using VIdx = __m512i;
constexpr int64_t kW = 16;
TWIDDLE_INLINE VF vload(const float* p) { return _mm512_loadu_ps(p); }
TWIDDLE_INLINE void vstore(float* p, VF v) { _mm512_storeu_ps(p, v); }
TWIDDLE_INLINE VF vzero() { return _mm512_setzero_ps(); }
TWIDDLE_INLINE VF vadd(VF a, VF b) { return _mm512_add_ps(a, b); }
TWIDDLE_INLINE VF vmul(VF a, VF b) { return _mm512_mul_ps(a, b); }
TWIDDLE_INLINE VF vfma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VIdx vidx(const int32_t* p) { return _mm512_loadu_si512(p); }
TWIDDLE_INLINE VF vperm2(VF a, VIdx idx, VF b) { return _mm512_permutex2var_ps(a, idx, b); }
#else
using VF = __m256;
struct VIdx {
  __m256i idx;  // entries mod 8 (vpermps reads the low three bits)
  __m256 from_b;  // sign bit set where the entry is >= 8
};
constexpr int64_t kW = 8;
TWIDDLE_INLINE VF vload(const float* p) { return _mm256_loadu_ps(p); }
TWIDDLE_INLINE void vstore(float* p, VF v) { _mm256_storeu_ps(p, v); }
TWIDDLE_INLINE VF vzero() { return _mm256_setzero_ps(); }
TWIDDLE_INLINE VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
TWIDDLE_INLINE VF vmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
TWIDDLE_INLINE VF vfma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VIdx vidx(const int32_t* p) {
  const __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {i, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28))};
}
TWIDDLE_INLINE VF vperm2(VF a, VIdx idx, VF b) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(a, idx.idx), _mm256_permutevar8x32_ps(b, idx.idx), idx.from_b);
}
#endif

// Permutes from the user's twiddle layout (a b c d per block) to four vectors of kW blocks' a, b, c, d: with
// v0 | v1 holding kW / 2 blocks, ab = (a of each, b of each) and cd likewise; lo / hi then join the halves of
// two such vectors.
struct SoaPerm {
  VIdx ab, cd, lo, hi;
};
inline const SoaPerm& soa_perm() {
  static const SoaPerm perm = [] {
    alignas(64) int32_t ab[kW], cd[kW], lo[kW], hi[kW];
    for (int j = 0; j < kW / 2; ++j) {
      ab[j] = 4 * j;
      ab[kW / 2 + j] = 4 * j + 1;
      cd[j] = 4 * j + 2;
      cd[kW / 2 + j] = 4 * j + 3;
      lo[j] = j;
      lo[kW / 2 + j] = kW + j;
      hi[j] = kW / 2 + j;
      hi[kW / 2 + j] = kW + kW / 2 + j;
    }
    return SoaPerm{vidx(ab), vidx(cd), vidx(lo), vidx(hi)};
  }();
  return perm;
}

// Row layout, real float32, n >= 2 kW. The twiddles are first rewritten (once per call, O(n log n)) in
// application order as structure of arrays soa[k][f][e][i] (e = t00, t01, t10, t11 of the applied block) so
// that kW consecutive blocks load as four vectors. Rows are processed in groups of kRows in a buffer of
// kRows x (n + 16) floats (the +16 keeps rows from aliasing in L1); consecutive factors are fused into passes
// so that each row is loaded and stored once per pass:
//   Small:  a run of factors with stride < kW. Each 2 kW-position chunk holds blocks kW c .. kW c + kW - 1 of
//           every such factor, so the whole run is applied to two registers per row, with two-source permutes
//           splitting the kW pairs into halves U, V and merging them back.
//   Pair:   two factors with different strides s1, s2 >= kW: positions p, p+s1, p+s2, p+s1+s2 form a closed
//           group, four registers per row.
//   Single: one factor with stride >= kW.
constexpr int64_t kRows = 8;

struct Quad {
  VF a, b, c, d;
};

TWIDDLE_INLINE Quad zero_quad() { return {vzero(), vzero(), vzero(), vzero()}; }

// blocks i .. i + kW - 1 of a factor whose SoA twiddles start at fs (h blocks per entry)
TWIDDLE_INLINE Quad load_quad(const float* fs, int64_t h, int64_t i) {
  return {vload(fs + i), vload(fs + h + i), vload(fs + 2 * h + i),
          vload(fs + 3 * h + i)};
}

TWIDDLE_INLINE void add_quad(float* fs, int64_t h, int64_t i, const Quad& q) {
  vstore(fs + i, vadd(vload(fs + i), q.a));
  vstore(fs + h + i, vadd(vload(fs + h + i), q.b));
  vstore(fs + 2 * h + i, vadd(vload(fs + 2 * h + i), q.c));
  vstore(fs + 3 * h + i, vadd(vload(fs + 3 * h + i), q.d));
}

// (u, v) <- T (u, v)
TWIDDLE_INLINE void apply2(const Quad& q, VF& u, VF& v) {
  const VF y0 = vfma(q.a, u, vmul(q.b, v));
  const VF y1 = vfma(q.c, u, vmul(q.d, v));
  u = y0;
  v = y1;
}

// Backward of (y0, y1) = T (u, v): acc += (g0 u, g0 v, g1 u, g1 v); (g0, g1) <- T^T (g0, g1).
TWIDDLE_INLINE void backward2(const Quad& q, Quad& acc, VF u, VF v, VF& g0, VF& g1) {
  acc.a = vfma(g0, u, acc.a);
  acc.b = vfma(g0, v, acc.b);
  acc.c = vfma(g1, u, acc.c);
  acc.d = vfma(g1, v, acc.d);
  const VF n0 = vfma(q.a, g0, vmul(q.c, g1));
  const VF n1 = vfma(q.b, g0, vmul(q.d, g1));
  g0 = n0;
  g1 = n1;
}

// Permutes for a stride-s factor (s < kW) on 2 kW consecutive positions X0 | X1:
// U = perm(X0, u, X1), V = perm(X0, v, X1) hold the first and second members of its kW pairs (blocks in
// order); X0 = perm(U, lo, V), X1 = perm(U, hi, V) put them back.
struct SmallPerm {
  VIdx u, v, lo, hi;
};

inline SmallPerm small_perm(int64_t s) {
  alignas(64) int32_t u[kW], v[kW], out[2 * kW];
  for (int j = 0; j < kW; ++j) {
    const int g = static_cast<int>(j / s), r = static_cast<int>(j % s);
    u[j] = 2 * static_cast<int>(s) * g + r;
    v[j] = u[j] + static_cast<int>(s);
    out[u[j]] = j;
    out[v[j]] = kW + j;
  }
  return {vidx(u), vidx(v), vidx(out), vidx(out + kW)};
}

// From the U | V halves of a stride-a factor straight to the U | V halves of a stride-b factor (merge then
// split, composed): two permutes instead of four between consecutive small-stride factors.
struct HalfChange {
  VIdx u, v;
};

inline int small_log(int64_t s) { return s == 1 ? 0 : s == 2 ? 1 : s == 4 ? 2 : 3; }

struct PermTable {
  SmallPerm by_log[4];  // strides 1, 2, 4, 8
  HalfChange change[4][4];
  PermTable() {
    for (int j = 0; j < 4; ++j) by_log[j] = small_perm(int64_t(1) << j);
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) {
        const int sa = 1 << a, sb = 1 << b;
        int32_t where[2 * kW];  // position p (0..2 kW - 1) sits at index where[p] of U | V for stride a
        for (int j = 0; j < kW; ++j) {
          const int ua = 2 * sa * (j / sa) + j % sa;
          where[ua] = j;
          where[ua + sa] = kW + j;
        }
        alignas(64) int32_t cu[kW], cv[kW];
        for (int t = 0; t < kW; ++t) {
          const int ub = 2 * sb * (t / sb) + t % sb;
          cu[t] = where[ub];
          cv[t] = where[ub + sb];
        }
        change[a][b] = {vidx(cu), vidx(cv)};
      }
  }
  const SmallPerm& operator()(int64_t s) const { return by_log[small_log(s)]; }
  const HalfChange& between(int64_t from, int64_t to) const { return change[small_log(from)][small_log(to)]; }
};

TWIDDLE_INLINE void change_halves(const HalfChange& c, VF& u, VF& v) {
  const VF nu = vperm2(u, c.u, v), nv = vperm2(u, c.v, v);
  u = nu;
  v = nv;
}

TWIDDLE_INLINE void split(const SmallPerm& pm, VF x0, VF x1, VF& u, VF& v) {
  u = vperm2(x0, pm.u, x1);
  v = vperm2(x0, pm.v, x1);
}
TWIDDLE_INLINE void merge(const SmallPerm& pm, VF u, VF v, VF& x0, VF& x1) {
  x0 = vperm2(u, pm.lo, v);
  x1 = vperm2(u, pm.hi, v);
}

enum class PassKind { Small, Pair, Single };
struct Pass {
  PassKind kind;
  int64_t f0, count;
};

constexpr int64_t kMaxSmallRun = 8;

inline std::vector<Pass> make_passes(const Plan& P) {
  std::vector<Pass> passes;
  int64_t f = 0;
  while (f < P.F) {
    if (P.strides[f] < kW) {
      int64_t e = f;
      while (e < P.F && P.strides[e] < kW && e - f < kMaxSmallRun) ++e;
      passes.push_back({PassKind::Small, f, e - f});
      f = e;
    } else if (f + 1 < P.F && P.strides[f + 1] >= kW && P.strides[f + 1] != P.strides[f]) {
      passes.push_back({PassKind::Pair, f, 2});
      f += 2;
    } else {
      passes.push_back({PassKind::Single, f, 1});
      f += 1;
    }
  }
  return passes;
}

// A pass's independent units of work: a Small pass's chunks of 2 kW positions, a Pair pass's closed groups of four
// vectors, a Single pass's pairs of vectors. Units write disjoint positions and twiddle-gradient blocks, so a pass
// may run its units on several threads with the same results (each block's gradient is summed over the rows
// within one unit).
inline int64_t pass_units(const Plan& P, const Pass& pass) {
  return P.n / (pass.kind == PassKind::Pair ? 4 * kW : 2 * kW);
}

// Units [begin, end) of a pass.
struct Units {
  int64_t begin, end;
};

// Runs body(units) on every unit of a pass: on the calling thread, or (split) cut over the threads.
template <typename Body>
inline void for_pass_units(const Plan& P, const Pass& pass, bool split, const Body& body) {
  const int64_t units = pass_units(P, pass);
  if (!split) return body(Units{0, units});
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) { body(Units{begin, end}); });
}

// q with a zero bit inserted at bit s (a power of two): the q-th number (q, s multiples of kW) whose bit s is clear.
inline int64_t with_zero_bit(int64_t q, int64_t s) { return ((q & ~(s - 1)) << 1) | (q & (s - 1)); }

// The first position of unit j of a Single pass of stride s and of a Pair pass of strides s1 != s2.
inline int64_t single_position(int64_t j, int64_t s) { return with_zero_bit(j * kW, s); }
inline int64_t pair_position(int64_t j, int64_t s1, int64_t s2) {
  return with_zero_bit(with_zero_bit(j * kW, std::min(s1, s2)), std::max(s1, s2));
}


// kW consecutive blocks straight from the user's layout (a b c d a b c d ...).
#if defined(__AVX512F__)
// AVX-512: four loads, eight two-source permutes (one instruction each).
TWIDDLE_INLINE Quad load_quad_raw(const float* t, bool swap, const SoaPerm& sp) {
  const VIdx ab = sp.ab, cd = sp.cd, lo = sp.lo, hi = sp.hi;
  const VF v0 = vload(t), v1 = vload(t + kW);
  const VF v2 = vload(t + 2 * kW), v3 = vload(t + 3 * kW);
  const VF ab01 = vperm2(v0, ab, v1), cd01 = vperm2(v0, cd, v1);
  const VF ab23 = vperm2(v2, ab, v3), cd23 = vperm2(v2, cd, v3);
  Quad q{vperm2(ab01, lo, ab23), vperm2(ab01, hi, ab23),
         vperm2(cd01, lo, cd23), vperm2(cd01, hi, cd23)};
  if (swap) std::swap(q.b, q.c);
  return q;
}
#else
// AVX2: the two-source permute costs three instructions here, so use the layout instead: 128-bit half loads put
// block j in the low lane and block j + 4 in the high lane of row r_j (j = 0..3), and a 4 x 4 transpose within
// each lane (four unpacks, four shuffles) turns the rows (a, b, c, d) into the columns a, b, c, d of blocks
// 0..7 in order. Eight single-lane shuffles and four half inserts instead of sixteen cross-lane permutes and
// eight blends.
TWIDDLE_INLINE Quad load_quad_raw(const float* t, bool swap, const SoaPerm&) {
  const VF r0 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(t)), _mm_loadu_ps(t + 16), 1);
  const VF r1 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(t + 4)), _mm_loadu_ps(t + 20), 1);
  const VF r2 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(t + 8)), _mm_loadu_ps(t + 24), 1);
  const VF r3 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(t + 12)), _mm_loadu_ps(t + 28), 1);
  const VF ab01 = _mm256_unpacklo_ps(r0, r1), cd01 = _mm256_unpackhi_ps(r0, r1);  // a0 a1 b0 b1 | c0 c1 d0 d1
  const VF ab23 = _mm256_unpacklo_ps(r2, r3), cd23 = _mm256_unpackhi_ps(r2, r3);
  constexpr int kLow = _MM_SHUFFLE(1, 0, 1, 0), kHigh = _MM_SHUFFLE(3, 2, 3, 2);
  Quad q{_mm256_shuffle_ps(ab01, ab23, kLow), _mm256_shuffle_ps(ab01, ab23, kHigh),
         _mm256_shuffle_ps(cd01, cd23, kLow), _mm256_shuffle_ps(cd01, cd23, kHigh)};
  if (swap) std::swap(q.b, q.c);
  return q;
}
#endif

// raw user-layout twiddles -> SoA in application order (one stack after another). kW blocks at a time: four
// loads of (a b c d) x 4 blocks, eight two-source permutes.
// Writes into `soa` (nstacks * F * 4 * n/2 floats; callers pass a ThreadScratch: allocating it fresh per call
// costs page faults that dominate small batches at large n) and returns it.
const float* rows_soa(const float* tw, const Plan& P, float* soa) {
  const SoaPerm& sp = soa_perm();
  const int64_t h = P.half;
  for (int64_t k = 0; k < P.nstacks; ++k)
    for (int64_t f = 0; f < P.F; ++f) {
      const float* src = tw + k * P.stack_size() + P.offsets[f];
      float* dst = soa + (k * P.F + f) * 4 * h;
      for (int64_t i = 0; i < h; i += kW) {
        const Quad q = load_quad_raw(src + 4 * i, P.transpose, sp);  // the transpose swaps t01 and t10
        vstore(dst + i, q.a);
        vstore(dst + h + i, q.b);
        vstore(dst + 2 * h + i, q.c);
        vstore(dst + 3 * h + i, q.d);
      }
    }
  return soa;
}

#if !defined(__AVX512F__)
// AVX2: t[...] += the kW blocks of q (entries of the applied blocks; swap: the transpose's, whose t01 and t10 trade
// places) in the raw layout (t00 t01 t10 t11 of block 0, then block 1, ...): add_quad's counterpart for a gradient
// kept in the user's layout, the inverse of load_quad_raw's transpose.
TWIDDLE_INLINE void add_quad_raw(float* t, const Quad& q, bool swap) {
  const VF r0 = q.a, r1 = swap ? q.c : q.b, r2 = swap ? q.b : q.c, r3 = q.d;  // raw entries 0..3 of blocks 0..7
  const VF t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);  // blocks 0 1 | 4 5, 2 3 | 6 7
  const VF t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  constexpr int kLow = _MM_SHUFFLE(1, 0, 1, 0), kHigh = _MM_SHUFFLE(3, 2, 3, 2);
  const VF u0 = _mm256_shuffle_ps(t0, t2, kLow), u1 = _mm256_shuffle_ps(t0, t2, kHigh);  // blocks 0 | 4, 1 | 5
  const VF u2 = _mm256_shuffle_ps(t1, t3, kLow), u3 = _mm256_shuffle_ps(t1, t3, kHigh);  // blocks 2 | 6, 3 | 7
  const VF out[4] = {_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u2, u3, 0x20),
                     _mm256_permute2f128_ps(u0, u1, 0x31), _mm256_permute2f128_ps(u2, u3, 0x31)};
  for (int j = 0; j < 4; ++j) _mm256_storeu_ps(t + kW * j, vadd(_mm256_loadu_ps(t + kW * j), out[j]));
}
#endif

// The sum of the chunks' SoA twiddle gradients (chunk c at partial + c stride), in the raw user layout: every entry
// of gtw is written. Parallel over factors; each entry adds the chunks in chunk order, starting from zero. Reached on
// AVX-512 only: on AVX2 the row code serves a single group of rows, which adds its gradient in the raw layout.
void rows_soa_to_raw(const float* partial, int64_t nchunks, int64_t stride, float* gtw, const Plan& P) {
  const int64_t h = P.half;
  at::parallel_for(0, P.nstacks * P.F, 1, [&](int64_t begin, int64_t end) {
    for (int64_t kf = begin; kf < end; ++kf) {
      const int64_t k = kf / P.F, f = kf % P.F;
      float* dst = gtw + k * P.stack_size() + P.offsets[f];
      const float* src = partial + kf * 4 * h;  // entry e of block i at src[e h + i] (+ c stride for chunk c)
      for (int e = 0; e < 4; ++e) {
        const int64_t re = raw_entry(P, e);
        for (int64_t i = 0; i < h; ++i) dst[4 * i + re] = 0.0f;
        for (int64_t c = 0; c < nchunks; ++c) {
          const float* acc = src + c * stride + e * h;
          for (int64_t i = 0; i < h; ++i) dst[4 * i + re] += acc[i];
        }
      }
    }
  });
}

// Where the pass kernels read one stack's twiddles: the SoA copy (converted once per call), or — for a single
// group of rows, where the conversion would cost more than the work — the user's layout directly.
struct TwiddleSource {
  const float* base;  // SoA: this stack's SoA twiddles; raw: this stack's twiddles in the user's layout
  int64_t h;
  bool raw, swap;
  const int64_t* offsets;  // raw: offset of each applied factor
  const SoaPerm* perm;      // raw: the layout permutes (soa_perm())
  TWIDDLE_INLINE Quad quad(int64_t f, int64_t i) const {
    return raw ? load_quad_raw(base + offsets[f] + 4 * i, swap, *perm) : load_quad(base + f * 4 * h, h, i);
  }
};

// Where the backward's pass kernels add one stack's twiddle gradient: a SoA buffer (the layout the twiddles were
// converted to), or, on AVX2 where the twiddles are read in the user's layout, the user's gradient itself in that
// layout (offsets and swap as in TwiddleSource).
#if defined(__AVX512F__)
constexpr bool kRawRowGradient = false;  // no add_quad_raw: the AVX-512 backward always converts
#else
constexpr bool kRawRowGradient = true;
#endif
struct GradientSink {
  float* base;  // SoA: this stack's SoA gradient; raw: this stack's gradient in the user's layout
  int64_t h;
  bool raw, swap;
  const int64_t* offsets;
  TWIDDLE_INLINE void add(int64_t f, int64_t i, const Quad& q) const {
#if !defined(__AVX512F__)
    if (raw) return add_quad_raw(base + offsets[f] + 4 * i, q, swap);
#endif
    add_quad(base + f * 4 * h, h, i, q);
  }
};

// y[pos..pos+kW) = v (+ bias[pos..pos+kW) when a bias is given: the forward's last pass adds it as it stores)
TWIDDLE_INLINE void store_row(float* y, const float* bias, int64_t pos, VF v) {
  if (bias) v = vadd(v, vload(bias + pos));
  vstore(y + pos, v);
}

// The Small pass with its factor count M known at compile time: the loop over factors unrolls and the twiddles
// and permutation indices of the run stay in registers across the rows (looked up once per pass, not per row).
template <int M>
void small_forward(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, const TwiddleSource& tws,
                   const Plan& P, const Pass& pass, Units units, const PermTable& perms, const float* bias) {
  static_assert(M >= 1 && M <= kMaxSmallRun, "a Small pass has 1..kMaxSmallRun factors");
  const int64_t* st = P.strides.data() + pass.f0;
  const SmallPerm first = perms(st[0]), last = perms(st[M - 1]);
  HalfChange change[M];  // change[j]: from factor j's halves to factor j+1's (the last one unused)
  for (int j = 0; j + 1 < M; ++j) change[j] = perms.between(st[j], st[j + 1]);
  for (int64_t c = units.begin; c < units.end; ++c) {
    Quad q[M];
    for (int j = 0; j < M; ++j) q[j] = tws.quad(pass.f0 + j, kW * c);
    for (int64_t r = 0; r < rows; ++r) {
      const float* x = src + r * lds + 2 * kW * c;
      float* y = dst + r * ldd;
      VF u, v, x0, x1;
      split(first, vload(x), vload(x + kW), u, v);
#pragma GCC unroll 8
      for (int j = 0; j < M; ++j) {
        apply2(q[j], u, v);
        if (j + 1 < M) change_halves(change[j], u, v);
      }
      merge(last, u, v, x0, x1);
      store_row(y, bias, 2 * kW * c, x0);
      store_row(y, bias, 2 * kW * c + kW, x1);
    }
  }
}

// Forward of one pass on `rows` rows: reads rows of `src` (lds floats apart), writes rows of `dst` (ldd floats
// apart). In place when src == dst; otherwise the two must not overlap (every vector of a row group is loaded
// before any is stored, so in place is safe). Out of place lets the first pass read the caller's input and the
// last one write the caller's output, with no copy through the buffer; `bias` (or null), indexed by position,
// is added to what is stored. Only the given units of the pass run.
inline void pass_forward(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows,
                         const TwiddleSource& tws, const Plan& P, const Pass& pass, Units units,
                         const PermTable& perms, const float* bias = nullptr) {
  if (pass.kind == PassKind::Small) {
    switch (pass.count) {
      case 1: return small_forward<1>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
      case 2: return small_forward<2>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
      case 3: return small_forward<3>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
      case 4: return small_forward<4>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
      case 5: return small_forward<5>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
      case 6: return small_forward<6>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
      case 7: return small_forward<7>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
      default: return small_forward<kMaxSmallRun>(src, lds, dst, ldd, rows, tws, P, pass, units, perms, bias);
    }
  } else if (pass.kind == PassKind::Pair) {
    const int64_t s1 = P.strides[pass.f0], s2 = P.strides[pass.f0 + 1];
    for (int64_t j = units.begin; j < units.end; ++j) {
      const int64_t p = pair_position(j, s1, s2);
      const Quad q10 = tws.quad(pass.f0, block_index(p, s1)), q11 = tws.quad(pass.f0, block_index(p + s2, s1));
      const Quad q20 = tws.quad(pass.f0 + 1, block_index(p, s2));
      const Quad q21 = tws.quad(pass.f0 + 1, block_index(p + s1, s2));
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * lds + p;
        float* y = dst + r * ldd;
        VF v0 = vload(x), v1 = vload(x + s1);
        VF v2 = vload(x + s2), v3 = vload(x + s1 + s2);
        apply2(q10, v0, v1);
        apply2(q11, v2, v3);
        apply2(q20, v0, v2);
        apply2(q21, v1, v3);
        store_row(y, bias, p, v0);
        store_row(y, bias, p + s1, v1);
        store_row(y, bias, p + s2, v2);
        store_row(y, bias, p + s1 + s2, v3);
      }
    }
  } else {
    const int64_t s = P.strides[pass.f0];
    for (int64_t j = units.begin; j < units.end; ++j) {
      const int64_t p = single_position(j, s);
      const Quad q = tws.quad(pass.f0, block_index(p, s));
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * lds + p;
        float* y = dst + r * ldd;
        VF u = vload(x), v = vload(x + s);
        apply2(q, u, v);
        store_row(y, bias, p, u);
        store_row(y, bias, p + s, v);
      }
    }
  }
}

// The backward of a Small pass, M known at compile time (see small_forward).
template <int M>
void small_backward(const float* gin, int64_t ldgi, float* gout, int64_t ldgo, const float* u, int64_t ldu,
                    int64_t rows, const TwiddleSource& tws, const GradientSink& gs, const Plan& P,
                    const Pass& pass, Units units, const PermTable& perms) {
  static_assert(M >= 1 && M <= kMaxSmallRun, "a Small pass has 1..kMaxSmallRun factors");
  const int64_t* st = P.strides.data() + pass.f0;
  const SmallPerm first = perms(st[0]), last = perms(st[M - 1]);
  HalfChange up[M], down[M];  // up[j]: factor j's halves to factor j+1's; down[j]: factor j+1's to factor j's
  for (int j = 0; j + 1 < M; ++j) {
    up[j] = perms.between(st[j], st[j + 1]);
    down[j] = perms.between(st[j + 1], st[j]);
  }
  for (int64_t c = units.begin; c < units.end; ++c) {
    Quad q[M], acc[M];
    for (int j = 0; j < M; ++j) {
      q[j] = tws.quad(pass.f0 + j, kW * c);
      acc[j] = zero_quad();
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* x = u + r * ldu + 2 * kW * c;
      const float* gr = gin + r * ldgi + 2 * kW * c;
      float* go = gout + r * ldgo + 2 * kW * c;
      VF su[M], sv[M];  // inputs of each factor, split into its U | V
      split(first, vload(x), vload(x + kW), su[0], sv[0]);
#pragma GCC unroll 8
      for (int j = 0; j + 1 < M; ++j) {
        VF a = su[j], b = sv[j];
        apply2(q[j], a, b);
        change_halves(up[j], a, b);
        su[j + 1] = a;
        sv[j + 1] = b;
      }
      VF gu, gv, g0, g1;
      split(last, vload(gr), vload(gr + kW), gu, gv);
#pragma GCC unroll 8
      for (int j = M - 1; j >= 0; --j) {
        backward2(q[j], acc[j], su[j], sv[j], gu, gv);
        if (j > 0) change_halves(down[j - 1], gu, gv);
      }
      merge(first, gu, gv, g0, g1);
      vstore(go, g0);
      vstore(go + kW, g1);
    }
    for (int j = 0; j < M; ++j) gs.add(pass.f0 + j, kW * c, acc[j]);
  }
}

// Backward of one pass: u = the pass's input rows (ldu floats apart); gin = gradient w.r.t. its output (ldgi
// apart); gout receives the gradient w.r.t. its input (ldgo apart; gout == gin updates in place, as in
// pass_forward); gs accumulates the twiddle gradient (this stack's). Only the given units of the pass run.
inline void pass_backward(const float* gin, int64_t ldgi, float* gout, int64_t ldgo, const float* u, int64_t ldu,
                          int64_t rows, const TwiddleSource& tws, const GradientSink& gs, const Plan& P,
                          const Pass& pass, Units units, const PermTable& perms) {
  if (pass.kind == PassKind::Small) {
    switch (pass.count) {
      case 1: return small_backward<1>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
      case 2: return small_backward<2>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
      case 3: return small_backward<3>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
      case 4: return small_backward<4>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
      case 5: return small_backward<5>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
      case 6: return small_backward<6>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
      case 7: return small_backward<7>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
      default: return small_backward<kMaxSmallRun>(gin, ldgi, gout, ldgo, u, ldu, rows, tws, gs, P, pass, units, perms);
    }
  } else if (pass.kind == PassKind::Pair) {
    const int64_t s1 = P.strides[pass.f0], s2 = P.strides[pass.f0 + 1];
    for (int64_t j = units.begin; j < units.end; ++j) {
      const int64_t p = pair_position(j, s1, s2);
      const int64_t i10 = block_index(p, s1), i11 = block_index(p + s2, s1);
      const int64_t i20 = block_index(p, s2), i21 = block_index(p + s1, s2);
      const Quad q10 = tws.quad(pass.f0, i10), q11 = tws.quad(pass.f0, i11);
      const Quad q20 = tws.quad(pass.f0 + 1, i20), q21 = tws.quad(pass.f0 + 1, i21);
      Quad a10 = zero_quad(), a11 = zero_quad(), a20 = zero_quad(), a21 = zero_quad();
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = u + r * ldu + p;
        const float* gr = gin + r * ldgi + p;
        float* go = gout + r * ldgo + p;
        const VF u0 = vload(x), u1 = vload(x + s1);
        const VF u2 = vload(x + s2), u3 = vload(x + s1 + s2);
        VF m0 = u0, m1 = u1, m2 = u2, m3 = u3;  // after the first factor
        apply2(q10, m0, m1);
        apply2(q11, m2, m3);
        VF g0 = vload(gr), g1 = vload(gr + s1);
        VF g2 = vload(gr + s2), g3 = vload(gr + s1 + s2);
        backward2(q20, a20, m0, m2, g0, g2);
        backward2(q21, a21, m1, m3, g1, g3);
        backward2(q10, a10, u0, u1, g0, g1);
        backward2(q11, a11, u2, u3, g2, g3);
        vstore(go, g0);
        vstore(go + s1, g1);
        vstore(go + s2, g2);
        vstore(go + s1 + s2, g3);
      }
      gs.add(pass.f0, i10, a10);
      gs.add(pass.f0, i11, a11);
      gs.add(pass.f0 + 1, i20, a20);
      gs.add(pass.f0 + 1, i21, a21);
    }
  } else {
    const int64_t s = P.strides[pass.f0];
    for (int64_t j = units.begin; j < units.end; ++j) {
      const int64_t p = single_position(j, s);
      const int64_t i = block_index(p, s);
      const Quad q = tws.quad(pass.f0, i);
      Quad acc = zero_quad();
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = u + r * ldu + p;
        const float* gr = gin + r * ldgi + p;
        float* go = gout + r * ldgo + p;
        VF g0 = vload(gr), g1 = vload(gr + s);
        backward2(q, acc, vload(x), vload(x + s), g0, g1);
        vstore(go, g0);
        vstore(go + s, g1);
      }
      gs.add(pass.f0, i, acc);
    }
  }
}

// Copy columns [col0, col0 + count) of `rows` rows of src into buf (rows ld floats apart), zero the rest; with a
// column map (P.in_perm), position p reads column map[col0 + p].
inline void rows_load(float* buf, int64_t ld, const float* src, int64_t ld_src, int64_t row0, int64_t rows,
                      int64_t col0, int64_t count, int64_t n, const int32_t* map = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict dst = buf + r * ld;
    const float* __restrict row = src + (row0 + r) * ld_src;
    if (map) {
      const int32_t* __restrict m = map + col0;
      for (int64_t p = 0; p < count; ++p) dst[p] = row[m[p]];
    } else if (count > 0) {
      std::memcpy(dst, row + col0, sizeof(float) * count);
    }
    if (count < n) std::memset(dst + count, 0, sizeof(float) * (n - count));
  }
}

inline void rows_load_strided(float* buf, int64_t ld, const float* src, const Plan& P, int64_t row0, int64_t rows,
                              int64_t col0, int64_t count, const int32_t* map = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = buf + r * ld;
    const float* row = src + (row0 + r) * P.g_row + col0 * P.g_col;
    if (P.g_col == 0)  // a broadcast row (the gradient of y.sum() is expanded from one number)
      std::fill(dst, dst + count, row[0]);
    else if (map)  // position p reads column map[col0 + p]
      for (int64_t p = 0; p < count; ++p) dst[p] = src[(row0 + r) * P.g_row + map[col0 + p] * P.g_col];
    else
      for (int64_t p = 0; p < count; ++p) dst[p] = row[p * P.g_col];
    if (count < P.n) std::memset(dst + count, 0, sizeof(float) * (P.n - count));
  }
}

// Write (or add) positions [0, count) of `rows` rows of buf to columns [col0, col0 + count) of dst, plus a
// non-null bias; with a column map (the input gradient under P.in_perm, the output under P.out_inv) position p
// goes to column map[col0 + p] (and gets that column's bias).
inline void rows_store(const float* buf, int64_t ld, float* dst, int64_t ld_dst, int64_t row0, int64_t rows,
                       int64_t col0, int64_t count, bool add, const float* bias = nullptr,
                       const int32_t* map = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    float* out = dst + (row0 + r) * ld_dst + col0;
    const float* in = buf + r * ld;
    if (map) {
      float* __restrict row = dst + (row0 + r) * ld_dst;
      const int32_t* __restrict m = map + col0;
      if (add)
        for (int64_t p = 0; p < count; ++p) row[m[p]] += in[p];
      else if (bias)
        for (int64_t p = 0; p < count; ++p) row[m[p]] = in[p] + bias[m[p]];
      else
        for (int64_t p = 0; p < count; ++p) row[m[p]] = in[p];
    } else if (add) {
#pragma omp simd
      for (int64_t p = 0; p < count; ++p) out[p] += in[p];
    } else if (bias) {
      const float* b = bias + col0;
#pragma omp simd
      for (int64_t p = 0; p < count; ++p) out[p] = in[p] + b[p];
    } else {
      std::memcpy(out, in, sizeof(float) * count);
    }
  }
}

// A batch that fits in one group of rows (on AVX2 the row layout serves batches of at most kRows only) would
// run on one thread. With at least kSplitWork factor-position-row updates the forward cuts it into one group per
// thread (each row's arithmetic does not depend on its group, so the result is the same). Measured on 2 cores
// (AMD EPYC, Zen 3): n = 1024 batch 8 18.7 -> 15.5 us, n = 4096 batch 4 43 -> 34 us, batch 8 75 -> 46 us. The
// backward keeps its groups, on which its twiddle-gradient sums depend (splitting 2-8 rows in two was as often
// slower as faster on 2 cores: n = 4096 batch 2 177 -> 214 us, batch 8 302 -> 254 us), and splits each pass's
// positions instead (rows_backward). The forward splits positions for a single row only: for 2-8 rows splitting
// the passes instead of the rows lost (n = 1024 batch 8 11 -> 22 us, n = 4096 batch 2 22 -> 31 us) except at
// n = 16384 batch 2 and 4 (84 -> 67 us, 110 -> 94 us).
constexpr int64_t kSplitWork = int64_t(1) << 16;
inline int64_t forward_rows_per_group(const Plan& P, int64_t parts) {
  const int64_t work = P.nstacks * std::max<int64_t>(P.F, 1) * P.n * P.batch;
  if (P.batch > kRows || P.batch < 2 || parts < 2 || work < kSplitWork) return kRows;
  parts = std::min(parts, P.batch);
  return (P.batch + parts - 1) / parts;
}

void rows_forward(const float* tw, const float* x, const float* bias, float* out, const Plan& P) {
  const int64_t group = forward_rows_per_group(P, at::get_num_threads());
  const int64_t ngroups = (P.batch + group - 1) / group;
  // A single row (one group) with that much work splits each pass's positions over the threads instead (as
  // rows_backward does; the same arithmetic per position).
  const bool split = ngroups == 1 && at::get_num_threads() > 1 &&
                     P.nstacks * std::max<int64_t>(P.F, 1) * P.n * P.batch >= kSplitWork;
  const int64_t ld = P.n + 16;
  const bool raw = P.batch <= kRows;  // at most one group's rows: read the user's layout, skip the conversion
  ThreadScratch<float, 2> soa_scratch(raw ? 1 : P.nstacks * P.F * 4 * P.half);
  const float* const soa = raw ? nullptr : rows_soa(tw, P, soa_scratch.data());
  const std::vector<Pass> passes = make_passes(P);
  const int64_t npasses = static_cast<int64_t>(passes.size());
  static const PermTable perms;  // built once (constant tables)
  auto run_groups = [&](int64_t begin, int64_t end) {
    ThreadScratch<float, 0> scratch(kRows * ld);  // written before it is read
    float* const buf = scratch.data();
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t row0 = grp * group, rows = std::min(group, P.batch - row0);
      for (int64_t k = 0; k < P.nstacks; ++k) {
        auto [ic0, icount] = input_cols(P, k);
        auto [oc0, ocount] = output_cols(P, k);
        if (ocount == 0) continue;
        const TwiddleSource tws = raw ? TwiddleSource{tw + k * P.stack_size(), P.half, true, P.transpose,
                                                      P.offsets.data(), &soa_perm()}
                                      : TwiddleSource{soa + k * P.F * 4 * P.half, P.half, false, false, nullptr,
                                                      nullptr};
        const bool add = P.sum_output && k > 0;
        // The first pass reads the input rows in place unless they need zero padding; the last pass writes the
        // output rows (plus the bias) in place unless they are truncated or added to a previous stack's.
        const bool direct_in = icount == P.n && !P.in_perm, direct_out = ocount == P.n && !add && !P.out_inv;
        const float* src = direct_in ? x + row0 * P.in_size + ic0 : buf;
        int64_t lds = direct_in ? P.in_size : ld;
        if (!direct_in) rows_load(buf, ld, x, P.in_size, row0, rows, ic0, icount, P.n, P.in_perm);
        for (int64_t j = 0; j < npasses; ++j) {
          const bool to_out = direct_out && j + 1 == npasses;
          float* dst = to_out ? out + row0 * P.out_size + oc0 : buf;
          const int64_t ldd = to_out ? P.out_size : ld;
          for_pass_units(P, passes[j], split, [&](Units units) {
            pass_forward(src, lds, dst, ldd, rows, tws, P, passes[j], units, perms,
                         to_out && bias ? bias + oc0 : nullptr);
          });
          src = dst;
          lds = ldd;
        }
        if (!direct_out) rows_store(buf, ld, out, P.out_size, row0, rows, oc0, ocount, add, bias, P.out_inv);
      }
    }
  };
  // one group runs on the calling thread, outside any parallel region, so that its passes can split (at::parallel_for
  // marks even an inline call as a parallel region on some versions, which would keep nested loops on one thread)
  if (ngroups == 1) return run_groups(0, 1);
  at::parallel_for(0, ngroups, group < kRows ? 1 : grain_for(P, kRows), run_groups);
}

// Rows per group in the backward: the largest of 32, 16, 8 whose working set (the input of every pass and the
// gradient, (npasses + 1) rows of ld floats each) stays within 512 KB of L2 — fewer twiddle loads and
// gradient adds per row than the forward's L1-sized groups. Depends on n only, so results do not depend on the
// thread count. Chunks of the twiddle-gradient reduction hold at least kRowsPerChunk rows where the batch makes
// kMinChunks such chunks (fewer rows per chunk where it does not; see min_groups_per_chunk).
constexpr int64_t kRowsPerChunk = 64;
inline int64_t backward_rows(int64_t ld, int64_t npasses) {
  const int64_t row_bytes = (npasses + 1) * ld * static_cast<int64_t>(sizeof(float));
  for (int64_t rows : {32, 16}) if (rows * row_bytes <= (int64_t(512) << 10)) return rows;
  return 8;
}

void rows_backward(const float* tw, const float* x, const float* gy, float* gx, float* gtw, float* gbias,
                   const Plan& P) {
  const int64_t ld = P.n + 16;
  const std::vector<Pass> passes = make_passes(P);
  const int64_t npasses = static_cast<int64_t>(passes.size());
  const int64_t group = backward_rows(ld, npasses);
  const int64_t ngroups = (P.batch + group - 1) / group;
  const int64_t slot = group * ld;
  // One group of rows (every batch the AVX2 row layout takes) reads the twiddles and adds their gradient in the
  // user's layout, as the forward reads them: the conversion to SoA and the gradient's back, O(n log n) each, cost
  // more than the rows' own work at large n.
  const bool raw = kRawRowGradient && ngroups == 1;
  const int64_t soa_size = P.nstacks * P.F * 4 * P.half;
  ThreadScratch<float, 2> soa_scratch(raw ? 1 : soa_size);
  const float* const soa = raw ? nullptr : rows_soa(tw, P, soa_scratch.data());
  static const PermTable perms;  // built once (constant tables)
  // One group with at least kSplitWork factor-position-row updates runs each pass's units on the threads (see
  // pass_units): every block's gradient is still summed over the same rows in the same order, so the results are
  // those of one thread bit for bit. Measured on 2 cores (AMD EPYC, Zen 3), backward op: n = 1024 batch 8 48 ->
  // 41 us, n = 4096 batch 2 85 -> 63 us, batch 8 206 -> 130 us, n = 16384 batch 2 378 -> 225 us, batch 8 1.05 ->
  // 0.69 ms; below kSplitWork (n = 1024 batch 2, n = 256 batch 8) the threads' start and joins per pass cost more.
  const bool split = raw && at::get_num_threads() > 1 && P.nstacks * P.F * P.n * P.batch >= kSplitWork;
  // Rows [begin, end) of groups: their twiddle gradient added to gtw_acc (raw: the user's layout, else SoA),
  // their bias gradient to gbias_acc.
  auto groups_backward = [&](int64_t begin, int64_t end, float* gtw_acc, float* gbias_acc) {
    // the input of every pass, then the gradient; written before they are read
    ThreadScratch<float, 1> scratch((std::max<int64_t>(npasses, 1) + 1) * slot);
    float* const acts = scratch.data();
    float* const g = acts + std::max<int64_t>(npasses, 1) * slot;
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t row0 = grp * group, rows = std::min(group, P.batch - row0);
      for (int64_t k = 0; k < P.nstacks; ++k) {
        auto [ic0, icount] = input_cols(P, k);
        auto [oc0, ocount] = output_cols(P, k);
        const TwiddleSource tws = raw ? TwiddleSource{tw + k * P.stack_size(), P.half, true, P.transpose,
                                                      P.offsets.data(), &soa_perm()}
                                      : TwiddleSource{soa + k * P.F * 4 * P.half, P.half, false, false, nullptr,
                                                      nullptr};
        const GradientSink gs = raw ? GradientSink{gtw_acc + k * P.stack_size(), P.half, true, P.transpose,
                                                   P.offsets.data()}
                                    : GradientSink{gtw_acc + k * P.F * 4 * P.half, P.half, false, false, nullptr};
        // As in the forward: the input, the incoming gradient and the input gradient are read and written in
        // place where no padding, truncation, strides or accumulation over stacks get in the way.
        const bool direct_in = icount == P.n && !P.in_perm;
        // any row stride, 0 (broadcast rows) included
        const bool direct_g = P.g_col == 1 && ocount == P.n && !P.out_inv;
        const bool add_gx = !P.split_input && k > 0, direct_gx = direct_in && !add_gx;
        const float* u0 = direct_in ? x + row0 * P.in_size + ic0 : acts;
        const int64_t ldu0 = direct_in ? P.in_size : ld;
        if (!direct_in) rows_load(acts, ld, x, P.in_size, row0, rows, ic0, icount, P.n, P.in_perm);
        for (int64_t j = 0; j + 1 < npasses; ++j) {
          const float* src = j == 0 ? u0 : acts + j * slot;
          for_pass_units(P, passes[j], split, [&](Units units) {
            pass_forward(src, j == 0 ? ldu0 : ld, acts + (j + 1) * slot, ld, rows, tws, P, passes[j], units, perms);
          });
        }
        const float* gin = direct_g ? gy + row0 * P.g_row + oc0 : g;
        int64_t ldgi = direct_g ? P.g_row : ld;
        if (!direct_g) {
          if (P.g_contiguous)
            rows_load(g, ld, gy, P.out_size, row0, rows, oc0, ocount, P.n, P.out_inv);
          else
            rows_load_strided(g, ld, gy, P, row0, rows, oc0, ocount, P.out_inv);
        }
        if (gbias) {
          const auto [bc0, bcount] = bias_gradient_cols(P, k, oc0, ocount);
          if (bcount > 0) add_gradient_column_sums<float>(gbias_acc + bc0, gy, row0, rows, bc0, bcount, P);
        }
        for (int64_t j = npasses - 1; j >= 0; --j) {
          const bool to_gx = direct_gx && j == 0;
          float* gout = to_gx ? gx + row0 * P.in_size + ic0 : g;
          const int64_t ldgo = to_gx ? P.in_size : ld;
          const float* u = j == 0 ? u0 : acts + j * slot;
          for_pass_units(P, passes[j], split, [&](Units units) {
            pass_backward(gin, ldgi, gout, ldgo, u, j == 0 ? ldu0 : ld, rows, tws, gs, P, passes[j], units, perms);
          });
          gin = gout;
          ldgi = ldgo;
        }
        if (!direct_gx && icount > 0)
          rows_store(g, ld, gx, P.in_size, row0, rows, ic0, icount, add_gx, nullptr, P.in_perm);
      }
    }
  };
  const int64_t bias_size = gbias ? P.out_size : 0;  // real only
  if (raw) {  // the same sums as one chunk's below: each block's gradient is 0 + the group's sum
    std::fill(gtw, gtw + P.nstacks * P.stack_size(), 0.0f);
    std::fill(gbias, gbias + bias_size, 0.0f);
    return groups_backward(0, ngroups, gtw, gbias);
  }
  const int64_t acc_size = soa_size + bias_size;
  const Chunking ch = chunking(ngroups, min_groups_per_chunk(ngroups, std::max<int64_t>(1, kRowsPerChunk / group)));
  ThreadScratch<float, 4> partial_scratch(ch.count * acc_size);
  float* const partial = partial_scratch.data();
  chunked_partials<float>(ngroups, ch, std::max<int64_t>(1, grain_for(P, group) / 4), acc_size, partial,
                          [&](int64_t begin, int64_t end, float* acc) {
                            groups_backward(begin, end, acc, acc + soa_size);
                          });
  rows_soa_to_raw(partial, ch.count, acc_size, gtw, P);
  if (gbias) {  // the chunks' bias parts, summed in chunk order
    for (int64_t j = 0; j < bias_size; ++j) gbias[j] = 0.0f;
    for (int64_t c = 0; c < ch.count; ++c)
      for (int64_t j = 0; j < bias_size; ++j) gbias[j] += partial[c * acc_size + soa_size + j];
  }
}
#endif  // TWIDDLE_HAVE_ROWS

template <typename T>
inline bool use_rows(const Plan& P) {
#if defined(TWIDDLE_HAVE_ROWS)
  if (!std::is_same_v<T, float> || P.complex || P.n < 2 * kW) return false;
#if defined(__AVX512F__)
  return true;
#else
  // AVX2 (16 vector registers: a Pair pass's twiddles alone fill them; Small-stride permutes take three
  // instructions each) wins for one group of rows, where the lane tile computes mostly padding, and loses on
  // larger batches. Measured on a 2-core AMD EPYC (Zen 3), forward: n = 1024 batch 1 38 -> 31 us, n = 4096
  // batch 1 137 -> 67 us; batch 256: n = 1024 322 -> 441 us, n = 4096 1.0 -> 2.2 ms.
  return P.batch <= kRows;
#endif
#else
  (void)P;
  return false;
#endif
}

#if defined(TWIDDLE_LANES_AVX2)
// The real float32 backward takes tiles of kWideLanes rows where its batch divides into groups of four such tiles
// and n <= kWideMaxN: each block's twiddles are broadcast and its sums reduced once per 32 rows instead of 16 (by a
// count of the instructions per block, the reductions were about a quarter of the backward step's). Measured on a
// 2-core AMD EPYC (Zen 3), backward op, 2 threads, both widths alternating in one process, median time wide / 16
// lanes: n = 1024 batch 256 0.91-0.95, batch 512 0.92, batch 128 0.95; n = 256 batch 256 0.93, n = 2048 batch 256
// 0.95-0.97, n = 16 and 32 batch 1024 0.86. At n = 4096 the 32-row activations (6.8 MB a thread) lost: 1.17. The
// rule depends on the batch and n only (the twiddle gradient's order of additions follows the tile width: the same
// bits whatever the thread count), and a multiple of 4 tiles keeps the chunks (below) as many and as even as with 16
// lanes.
constexpr int64_t kWideLanes = 32;
constexpr int64_t kWideMaxN = 2048;
template <typename T>
inline bool use_wide_backward(const Plan& P) {
  return std::is_same_v<T, float> && !P.complex && P.n <= kWideMaxN && P.batch % (kMinChunks * kWideLanes) == 0;
}

// The real float32 forward takes tiles of kWideLanes rows at n = kWideMinForwardN .. kWideMaxN, where a 16-row tile
// (64-128 KB) has outgrown L1 anyway and a 32-row one still sits in L2, for batches of at least two such tiles in
// whole tiles. Measured as the backward (op, 2 threads, 9 rounds alternating, median wide / 16 lanes, the range over
// rounds): n = 1024 batch 256 0.86-0.94, batch 128 0.92-0.95, batch 1024 0.83-0.92; n = 2048 batch 256 0.92-1.04,
// batch 64 0.95-1.00; n = 512 0.96-1.03 and n = 256 0.93-1.22 (tiles that fit L1 at 16 rows), n = 4096 1.02-1.13
// (a 32-row tile of 512 KB fills L2): those keep 16 rows. Each lane's arithmetic is the same in any tile, so a row's
// output is the same bits whatever the tile width (and the rule may depend on the batch freely).
constexpr int64_t kWideMinForwardN = 1024;
template <typename T>
inline bool use_wide_forward(const Plan& P) {
  return std::is_same_v<T, float> && !P.complex && P.n >= kWideMinForwardN && P.n <= kWideMaxN &&
         P.batch % kWideLanes == 0 && P.batch >= 2 * kWideLanes;
}
#endif

constexpr int64_t kNarrowFloat64MinN = 2048;  // the real float64 forward takes 8-row tiles from this n (forward_impl)

template <typename T>
void forward_impl(const T* tw, const T* x, const T* bias, T* out, const Plan& P) {
#if defined(TWIDDLE_HAVE_ROWS)
  if constexpr (std::is_same_v<T, float>) {
    if (use_rows<T>(P)) return rows_forward(tw, x, bias, out, P);
  }
#endif
  // Small batches take a narrower lane tile (a 16-lane tile for one row computes 15 rows of padding): complex64
  // n = 1024 batch 1 49 -> 30 us, float64 30 -> 16 us on a 2-core AMD EPYC (Zen 3). Each lane's arithmetic is the
  // same whatever the tile's width.
#if defined(TWIDDLE_SINGLE_ROWS)
  if (use_complex_rows<T>(P)) return row_forward<ComplexRow<T>>(tw, x, bias, out, P);  // c64 n = 1024: 31 -> 14 us
  if constexpr (std::is_same_v<T, double>) {
    if (use_real_rows<T>(P)) return row_forward<RealRow<T>>(tw, x, bias, out, P);
  }
#endif
  if (P.batch <= 4) return lanes_forward<T, 4>(tw, x, bias, out, P);
  if (P.batch <= 8) return lanes_forward<T, 8>(tw, x, bias, out, P);
#if defined(TWIDDLE_LANES_AVX2)
  if (use_wide_forward<T>(P)) return lanes_forward<T, kWideLanes>(tw, x, bias, out, P);
#endif
  // A real float64 tile of 16 rows is 256 KB at n = 2048 (half a Zen 3 core's L2), more above: 8 rows keep it in
  // cache. Forward op, 2 threads, 8 and 16 rows alternated 5 times in one process, median time 8 / 16 rows: n = 2048
  // batch 256 0.85-1.02, batch 1024 0.86-0.92; n = 4096 batch 256 0.76-0.86, batch 64 0.78-0.84; n = 8192 batch 64
  // 0.86-0.91; n = 16384 batch 64 0.86-0.90; n = 1024 0.89-1.01 keeps 16. (The backward, whose tiles are the
  // activations of every factor, gained nothing: 0.85-1.04 at n = 4096, 1.01-1.08 at 8192.)
  if (std::is_same_v<T, double> && !P.complex && P.n >= kNarrowFloat64MinN)
    return lanes_forward<T, 8>(tw, x, bias, out, P);
  lanes_forward<T>(tw, x, bias, out, P);
}

// gbias: nullable; where given, the bias gradient (column sums of gy, out_size * comps numbers).
template <typename T>
void backward_impl(const T* tw, const T* x, const T* gy, T* gx, T* gtw, T* gbias, const Plan& P) {
  const int64_t tw_size = P.nstacks * P.stack_size();
#if defined(TWIDDLE_SINGLE_ROWS)
  const bool single_row = use_complex_rows<T>(P) || use_real_rows<T>(P);  // the row paths below
#else
  const bool single_row = false;
#endif
#if defined(TWIDDLE_HAVE_ROWS)
  if constexpr (std::is_same_v<T, float>) {
    // Writes every entry of gtw, gbias. A single row too where the row code reads the twiddles and adds their
    // gradient in the user's layout (AVX2), against the float32 row template below (which AVX-512 keeps, its row
    // code converting the layout): op, 1 thread, n = 1024 21 -> 19.7 us, n = 4096 76 -> 66 us, n = 16384 325 ->
    // 290 us (180 us on 2 threads: passes split, below).
    if (use_rows<T>(P) && (kRawRowGradient || !single_row)) return rows_backward(tw, x, gy, gx, gtw, gbias, P);
  }
#endif
  std::fill(gtw, gtw + tw_size, T(0));
  if (gbias) std::fill(gbias, gbias + P.out_size * P.comps, T(0));
  // Narrower lane tiles for small batches, as in forward_impl; the tile width depends on the batch only, so
  // results still do not depend on the thread count. 8 lanes for float64 / complex128 only: with float32 they lose
  // the AVX2 16-lane backward's joint reductions (complex64 n = 1024 batch 8: 180 -> 200 us).
#if defined(TWIDDLE_SINGLE_ROWS)
  if (use_complex_rows<T>(P)) return row_backward<ComplexRow<T>>(tw, x, gy, gx, gtw, gbias, P);
  if (use_real_rows<T>(P)) return row_backward<RealRow<T>>(tw, x, gy, gx, gtw, gbias, P);
#endif
  if (P.batch <= 4) return tiles_backward<T, 4>(tw, x, gy, gx, gtw, gbias, tw_size, P);
  if (P.batch <= 8 && std::is_same_v<T, double>) return tiles_backward<T, 8>(tw, x, gy, gx, gtw, gbias, tw_size, P);
#if defined(TWIDDLE_LANES_AVX2)
  if (use_wide_backward<T>(P)) return tiles_backward<T, kWideLanes>(tw, x, gy, gx, gtw, gbias, tw_size, P);
#endif
  tiles_backward<T, kLanes>(tw, x, gy, gx, gtw, gbias, tw_size, P);
}

// ================================================================================================ ops
Plan make_plan(const at::Tensor& twiddle, const at::Tensor& x, bool increasing, bool transpose, bool conjugate,
               int64_t out_size) {
  Plan P;
  TORCH_CHECK(twiddle.dim() == 6 || twiddle.dim() == 7,
              "twiddle: expected (nstacks, nblocks, log_n, n/2, 2, 2) or its complex real view (..., 2)");
  P.complex = twiddle.dim() == 7;
  TORCH_CHECK(twiddle.size(4) == 2 && twiddle.size(5) == 2 && (!P.complex || twiddle.size(6) == 2),
              "twiddle: trailing dimensions must be 2 x 2");
  // a complex butterfly takes x as (batch, features, 2) (the real view of complex x) or (batch, features) (real x)
  TORCH_CHECK(x.dim() == (P.complex ? 3 : 2) || (P.complex && x.dim() == 2),
              "x: expected (batch, features", P.complex ? "[, 2])" : ")");
  TORCH_CHECK(!P.complex || x.dim() == 2 || x.size(2) == 2, "x: the complex real view's last dimension must be 2");
  P.real_input = P.complex && x.dim() == 2;
  P.x_comps = P.complex && !P.real_input ? 2 : 1;
  TORCH_CHECK(twiddle.scalar_type() == x.scalar_type(), "twiddle and x must have the same dtype");
  TORCH_CHECK(twiddle.device().is_cpu() && x.device().is_cpu(), "the fused CPU kernel needs CPU tensors");
  P.nstacks = twiddle.size(0);
  P.nblocks = twiddle.size(1);
  P.log_n = twiddle.size(2);
  P.n = int64_t(1) << P.log_n;
  P.half = P.n / 2;
  TORCH_CHECK(twiddle.size(3) == P.half, "twiddle: 4th dimension must be n/2");
  P.F = P.nblocks * P.log_n;
  P.comps = P.complex ? 2 : 1;
  P.factor_size = 4 * P.comps * P.half;
  P.transpose = transpose;
  P.conjugate = conjugate && P.complex;
  // block directions alternate; the transpose runs the blocks and factors backwards
  std::vector<bool> dirs(P.nblocks);
  for (int64_t b = 0; b < P.nblocks; ++b) dirs[b] = (b % 2 == 0) ? increasing : !increasing;
  for (int64_t j = 0; j < P.F; ++j) {
    const int64_t b = transpose ? P.nblocks - 1 - j / P.log_n : j / P.log_n;
    const int64_t f = transpose ? P.log_n - 1 - j % P.log_n : j % P.log_n;
    const int64_t log_stride = dirs[b] ? f : P.log_n - 1 - f;
    P.strides.push_back(int64_t(1) << log_stride);
    P.offsets.push_back((b * P.log_n + f) * P.factor_size);
  }
  P.split_input = transpose;
  P.sum_output = transpose;
  P.batch = x.size(0);
  P.in_size = x.size(1);
  P.out_size = out_size;
  TORCH_CHECK(P.in_size <= (transpose ? P.nstacks * P.n : P.n), "x: too many features");
  TORCH_CHECK(out_size >= 1 && out_size <= (transpose ? P.n : P.nstacks * P.n), "out_size out of range");
  return P;
}

// A permutation argument (in_perm, out_perm) as 32-bit column indices, checked: a 1-D int64 tensor holding a
// permutation of 0..size-1 (an index out of range would read or write outside the tensors, a repeated one leave
// columns unwritten). inverse: keep its inverse instead. Empty where none is given.
std::vector<int32_t> checked_permutation(const std::optional<at::Tensor>& arg, int64_t size, const char* name,
                                         const char* what, bool inverse) {
  std::vector<int32_t> out;
  if (!arg.has_value() || !arg->defined()) return out;
  const at::Tensor& perm = *arg;
  TORCH_CHECK(perm.dim() == 1 && perm.scalar_type() == at::kLong && perm.device().is_cpu(), name,
              ": expected a 1-D int64 CPU tensor, got ", perm.dim(), "-D ", perm.scalar_type(), " on ", perm.device());
  TORCH_CHECK(perm.size(0) == size, name, ": expected ", size, " entries (", what, "), got ", perm.size(0));
  TORCH_CHECK(size <= std::numeric_limits<int32_t>::max(), name, ": too many entries");
  const at::Tensor pc = perm.contiguous();
  const int64_t* p = pc.data_ptr<int64_t>();
  out.resize(size);
  std::vector<uint8_t> seen(size, 0);
  for (int64_t i = 0; i < size; ++i) {
    const int64_t v = p[i];
    TORCH_CHECK(v >= 0 && v < size && !seen[v], name, ": expected a permutation of 0..", size - 1, ", entry ", i,
                " is ", v, v >= 0 && v < size ? " (repeated)" : " (out of range)");
    seen[v] = 1;
    if (inverse)
      out[v] = static_cast<int32_t>(i);
    else
      out[i] = static_cast<int32_t>(v);
  }
  return out;
}

// The permutations of one call, checked, and the plan pointed at them.
struct CallPermutations {
  std::vector<int32_t> in_perm, out_inv;
  CallPermutations(Plan& P, const std::optional<at::Tensor>& in, const std::optional<at::Tensor>& out)
      : in_perm(checked_permutation(in, P.in_size, "in_perm", "x's features", false)),
        out_inv(checked_permutation(out, P.out_size, "out_perm", "the output's features", true)) {
    if (!in_perm.empty()) P.in_perm = in_perm.data();
    if (!out_inv.empty()) P.out_inv = out_inv.data();
  }
};

at::Tensor butterfly_multiply(const at::Tensor& twiddle, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                              bool increasing_stride, bool transpose, bool conjugate, int64_t out_size,
                              const std::optional<at::Tensor>& in_perm, const std::optional<at::Tensor>& out_perm) {
  Plan P = make_plan(twiddle, x, increasing_stride, transpose, conjugate, out_size);
  const CallPermutations perms(P, in_perm, out_perm);
  at::Tensor tw = twiddle.contiguous();
  at::Tensor xc = x.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "bias must have the dtype of x");
    TORCH_CHECK(bias->numel() == out_size * P.comps, "bias: expected ", out_size, " entries");
    bc = bias->contiguous();
  }
  std::vector<int64_t> shape = {P.batch, out_size};
  if (P.complex) shape.push_back(2);
  at::Tensor out = at::empty(shape, x.options());
  if (P.batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_butterfly_multiply", [&] {
    forward_impl<scalar_t>(tw.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                           bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), P);
  });
  return out;
}

// Gradients (twiddle, x, bias) of sum(grad * forward); the bias gradient (grad's column sums, taken while the kernel
// reads grad anyway) only with bias_grad, else an empty tensor. group_rows > 0: the twiddle and bias gradients of
// every group of group_rows consecutive rows on its own, shapes (batch / group_rows, *twiddle.shape) and
// (batch / group_rows, out_size[, 2]) (per-sample gradients); each group's are bit for bit those of a call on that
// group alone.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_call(const at::Tensor& twiddle, const at::Tensor& x,
                                                             const at::Tensor& grad, bool increasing_stride,
                                                             bool transpose, bool conjugate, int64_t out_size,
                                                             bool bias_grad, const std::optional<at::Tensor>& in_perm,
                                                             const std::optional<at::Tensor>& out_perm,
                                                             int64_t group_rows) {
  Plan P = make_plan(twiddle, x, increasing_stride, transpose, conjugate, out_size);
  const CallPermutations perms(P, in_perm, out_perm);
  TORCH_CHECK(grad.dim() == (P.complex ? 3 : 2) && grad.size(0) == P.batch && grad.size(1) == out_size &&
                  (!P.complex || grad.size(2) == 2),
              "grad: shape mismatch");
  at::Tensor tw = twiddle.contiguous();
  at::Tensor xc = x.contiguous();
  at::Tensor gc = grad.to(x.scalar_type());
  P.g_contiguous = gc.is_contiguous();
  P.g_row = gc.stride(0);
  P.g_col = gc.stride(1);
  P.g_comp = P.complex ? gc.stride(2) : 1;
  at::Tensor gx = at::empty_like(xc);  // every column is written by some stack (see input_cols; in_perm permutes)
  std::vector<int64_t> tw_shape = tw.sizes().vec();
  std::vector<int64_t> bias_shape = {bias_grad ? out_size : 0};
  if (P.complex) bias_shape.push_back(2);
  const bool grouped = group_rows > 0;
  if (grouped) {
    TORCH_CHECK(P.batch % group_rows == 0, "group_rows: the batch (", P.batch, " rows) must be a multiple of it, got ",
                group_rows);
    tw_shape.insert(tw_shape.begin(), P.batch / group_rows);
    bias_shape.insert(bias_shape.begin(), P.batch / group_rows);
  }
  // backward_impl writes every entry (of every row's)
  at::Tensor gtw = P.batch > 0 ? at::empty(tw_shape, tw.options()) : at::zeros(tw_shape, tw.options());
  at::Tensor gbias = P.batch > 0 ? at::empty(bias_shape, x.options()) : at::zeros(bias_shape, x.options());
  if (P.batch > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "twiddle_butterfly_multiply_backward", [&] {
      const scalar_t* twp = tw.data_ptr<scalar_t>();
      const scalar_t* xp = xc.data_ptr<scalar_t>();
      const scalar_t* gp = gc.data_ptr<scalar_t>();
      scalar_t* gxp = gx.data_ptr<scalar_t>();
      scalar_t* gtwp = gtw.data_ptr<scalar_t>();
      scalar_t* gbp = bias_grad ? gbias.data_ptr<scalar_t>() : nullptr;
      if (!grouped) return backward_impl<scalar_t>(twp, xp, gp, gxp, gtwp, gbp, P);
      // one backward per group, groups spread over the threads (each group's call then runs on its thread)
      Plan part = P;
      part.batch = group_rows;
      const int64_t x_rows = group_rows * P.in_size * P.x_comps, g_rows = group_rows * P.g_row;
      const int64_t tw_size = tw.numel(), bias_size = out_size * P.comps;
      at::parallel_for(0, P.batch / group_rows, std::max<int64_t>(1, grain_for(P, group_rows) / 4),
                       [&](int64_t begin, int64_t end) {
        for (int64_t q = begin; q < end; ++q)
          backward_impl<scalar_t>(twp, xp + q * x_rows, gp + q * g_rows, gxp + q * x_rows, gtwp + q * tw_size,
                                  gbp ? gbp + q * bias_size : nullptr, part);
      });
    });
  }
  return {gtw, gx, gbias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> butterfly_multiply_backward(const at::Tensor& twiddle,
                                                                           const at::Tensor& x, const at::Tensor& grad,
                                                                           bool increasing_stride, bool transpose,
                                                                           bool conjugate, int64_t out_size,
                                                                           bool bias_grad,
                                                                           const std::optional<at::Tensor>& in_perm,
                                                                           const std::optional<at::Tensor>& out_perm) {
  return backward_call(twiddle, x, grad, increasing_stride, transpose, conjugate, out_size, bias_grad, in_perm,
                       out_perm, 0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> butterfly_multiply_backward_grouped(
    const at::Tensor& twiddle, const at::Tensor& x, const at::Tensor& grad, bool increasing_stride, bool transpose,
    bool conjugate, int64_t out_size, int64_t group_rows, bool bias_grad, const std::optional<at::Tensor>& in_perm,
    const std::optional<at::Tensor>& out_perm) {
  TORCH_CHECK(group_rows > 0, "group_rows must be positive, got ", group_rows);
  return backward_call(twiddle, x, grad, increasing_stride, transpose, conjugate, out_size, bias_grad, in_perm,
                       out_perm, group_rows);
}

// ------------------------------------------------------------------------------------------------ autograd
// The autograd kernel lives in C++ too, so that a call costs one dispatch (no Python on the hot path). Both
// inner calls go through the dispatcher, so fake/meta implementations (registered from Python) let
// torch.compile trace forward and backward.
class ButterflyFunction : public torch::autograd::Function<ButterflyFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& twiddle, const at::Tensor& x,
                            const std::optional<at::Tensor>& bias, bool increasing_stride, bool transpose,
                            bool conjugate, int64_t out_size, const std::optional<at::Tensor>& in_perm,
                            const std::optional<at::Tensor>& out_perm) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("twiddle::butterfly_multiply", "")
                         .typed<decltype(butterfly_multiply)>();
    // (an absent permutation is saved as an undefined tensor)
    ctx->save_for_backward({twiddle, x, in_perm.value_or(at::Tensor()), out_perm.value_or(at::Tensor())});
    ctx->saved_data["increasing_stride"] = increasing_stride;
    ctx->saved_data["transpose"] = transpose;
    ctx->saved_data["conjugate"] = conjugate;
    ctx->saved_data["out_size"] = out_size;
    ctx->saved_data["bias_grad"] = bias.has_value() && bias->defined() && bias->requires_grad();
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm, out_perm);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("twiddle::butterfly_multiply_backward", "")
                         .typed<decltype(butterfly_multiply_backward)>();
    const auto saved = ctx->get_saved_variables();
    const bool bias_grad = ctx->saved_data["bias_grad"].toBool();
    const auto optional = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    const bool increasing_stride = ctx->saved_data["increasing_stride"].toBool();
    const bool transpose = ctx->saved_data["transpose"].toBool();
    const bool conjugate = ctx->saved_data["conjugate"].toBool();
    const int64_t out_size = ctx->saved_data["out_size"].toInt();
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the gradients must be differentiable themselves, and the kernel's are not; they come
      // from twiddle::butterfly_multiply_backward_differentiable (implemented in Python, twiddle.ops.fused_cpu:
      // the input's by the fast multiply's adjoint, the twiddles' by the reference), asked only for those needed
      static auto differentiable_op =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("twiddle::butterfly_multiply_backward_differentiable", "")
              .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                  const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool, bool, int64_t, bool,
                  const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool, bool)>();
      const bool twiddle_grad = ctx->needs_input_grad(0), x_grad = ctx->needs_input_grad(1);
      auto [gtw, gx, gbias] = differentiable_op.call(saved[0], saved[1], grads[0], increasing_stride, transpose,
                                                     conjugate, out_size, bias_grad, optional(saved[2]),
                                                     optional(saved[3]), twiddle_grad, x_grad);
      return {twiddle_grad ? gtw : at::Tensor(), x_grad ? gx : at::Tensor(), bias_grad ? gbias : at::Tensor(),
              at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [gtw, gx, gbias] = op.call(saved[0], saved[1], grads[0], increasing_stride, transpose, conjugate, out_size,
                                    bias_grad, optional(saved[2]), optional(saved[3]));
    return {gtw,          gx,           bias_grad ? gbias : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor butterfly_multiply_autograd(const at::Tensor& twiddle, const at::Tensor& x,
                                       const std::optional<at::Tensor>& bias, bool increasing_stride,
                                       bool transpose, bool conjugate, int64_t out_size,
                                       const std::optional<at::Tensor>& in_perm,
                                       const std::optional<at::Tensor>& out_perm) {
  // Nothing to differentiate (inference, torch.no_grad, or no input that requires grad): skip the autograd
  // node and its saved state, which cost a few microseconds, a visible share of a batch-1 call.
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (twiddle.requires_grad() || x.requires_grad() ||
                           (bias.has_value() && bias->defined() && bias->requires_grad()));
  if (!needs_grad) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("twiddle::butterfly_multiply", "")
                         .typed<decltype(butterfly_multiply)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm, out_perm);
  }
  return ButterflyFunction::apply(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm,
                                  out_perm);
}

}  // namespace twiddle_cpu

TORCH_LIBRARY(twiddle, m) {
  m.def("butterfly_multiply(Tensor twiddle, Tensor x, Tensor? bias, bool increasing_stride, bool transpose, "
        "bool conjugate, int out_size, Tensor? in_perm=None, Tensor? out_perm=None) -> Tensor");
  m.def("butterfly_multiply_backward(Tensor twiddle, Tensor x, Tensor grad, bool increasing_stride, "
        "bool transpose, bool conjugate, int out_size, bool bias_grad=False, Tensor? in_perm=None, "
        "Tensor? out_perm=None) -> (Tensor, Tensor, Tensor)");
  // the twiddle and bias gradients of every group of group_rows consecutive rows on its own:
  // (batch / group_rows, *twiddle.shape), (batch / group_rows, out_size[, 2]); the input gradient as usual
  m.def("butterfly_multiply_backward_grouped(Tensor twiddle, Tensor x, Tensor grad, bool increasing_stride, "
        "bool transpose, bool conjugate, int out_size, int group_rows, bool bias_grad=False, Tensor? in_perm=None, "
        "Tensor? out_perm=None) -> (Tensor, Tensor, Tensor)");
  // the same gradients as differentiable tensor operations (double backward; those of twiddle_grad / x_grad only,
  // an empty tensor for the other); its kernel is registered from Python
  m.def("butterfly_multiply_backward_differentiable(Tensor twiddle, Tensor x, Tensor grad, bool increasing_stride, "
        "bool transpose, bool conjugate, int out_size, bool bias_grad=False, Tensor? in_perm=None, "
        "Tensor? out_perm=None, bool twiddle_grad=True, bool x_grad=True) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(twiddle, CPU, m) {
  m.impl("butterfly_multiply", &twiddle_cpu::butterfly_multiply);
  m.impl("butterfly_multiply_backward", &twiddle_cpu::butterfly_multiply_backward);
  m.impl("butterfly_multiply_backward_grouped", &twiddle_cpu::butterfly_multiply_backward_grouped);
}

TORCH_LIBRARY_IMPL(twiddle, Autograd, m) {
  m.impl("butterfly_multiply", &twiddle_cpu::butterfly_multiply_autograd);
}
