// cutrans row kernels: per-row statistics and per-row gradient of the logits.
//
// Blocks of kRowBlock threads; TPR threads per row: TPR = 32 gives a warp per row (8 rows
// per block, warp-shuffle reductions, no block barrier: many rows in flight per SM, which
// short rows need to reach the memory bandwidth), TPR = kRowBlock a block per row (very
// long rows). Grid-stride over the chunk's rows r = row0 + i, i in [0, n_rows), of the
// packed row space; logits of row r start at layout.start(i, pos) (see common.cuh,
// backends/base.py: RowLayout). Rows that start on a 16-byte boundary are read (and
// written) in 16-byte words.
// Per-row state arrays (lp_blank, lp_emit, lse, coefficients) hold rows [rbase, ...): row r
// is element r - rbase.
#include "common.cuh"

using cutrans::Compute;
using cutrans::kRowBlock;
using cutrans::Layout;
using cutrans::Lse;
using cutrans::RowLoop;
using cutrans::RowPos;
using cutrans::Vec;

// Calls f(k, x) for every element k < V of a row, x in the compute type, strided over the
// TPR threads of the row (lane = thread within the row). Each thread visits its elements in
// increasing k; the visit order depends only on V, TPR and the row's alignment
// (deterministic).
template <class T, int TPR, class F>
__device__ __forceinline__ void for_each_in_row(const T* row, int V, int lane, F&& f) {
  using C = typename Compute<T>::type;
  constexpr int N = Vec<T>::N;
  int tail = 0;
  if (cutrans::is_aligned16(row)) {
    const int words = V / N;
    for (int w = lane; w < words; w += TPR) {
      C x[N];
      cutrans::load16<T>(row + w * N, x);
#pragma unroll
      for (int j = 0; j < N; ++j) f(w * N + j, x[j]);
    }
    tail = words * N;
  }
  for (int k = tail + lane; k < V; k += TPR) f(k, cutrans::to_compute(row[k]));
}

// logsumexp of a row of V logits by its TPR threads (every one gets it, identical bits):
// warp shuffles for TPR = 32, plus the block's scratch for TPR = kRowBlock.
template <class T, int TPR>
__device__ __forceinline__ typename Compute<T>::type row_lse(const T* row, int V, int lane,
                                                             typename Compute<T>::type* scratch) {
  using C = typename Compute<T>::type;
  Lse<C> acc{cutrans::neg_inf(C()), C(0)};
  for_each_in_row<T, TPR>(row, V, lane, [&](int, C x) { cutrans::lse_push(acc, x); });
  return cutrans::block_lse<C, TPR>(acc, scratch);
}


// Status flags of the device-side checks (cutrans._status).
constexpr int kBadLabel = 1;   // a label within target_lengths outside [0, V)
constexpr int kBlankLabel = 2;  // the blank id within target_lengths

// A label y_b[u] if it can be read (0 <= y < V), else -1 (check_targets flags it).
__device__ __forceinline__ int safe_label(const int* targets, long long tgt_ld, int b, int u,
                                          int V) {
  const int y = targets[b * tgt_ld + u];
  return y >= 0 && y < V ? y : -1;
}

// status |= kBadLabel / kBlankLabel for bad labels within target_lengths. One block per
// sample (grid-stride), threads over u. Integer atomics: the result is order-independent.
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
check_targets(const int* __restrict__ targets, long long tgt_ld,
              const int* __restrict__ target_len, int batch, int V, int blank,
              int* __restrict__ status) {
  for (int b = blockIdx.x; b < batch; b += gridDim.x) {
    for (int u = threadIdx.x; u < target_len[b]; u += BLOCK) {
      const int y = targets[b * tgt_ld + u];
      if (y < 0 || y >= V) atomicOr(status, kBadLabel);
      else if (y == blank) atomicOr(status, kBlankLabel);
    }
  }
}

// lp_blank[r] = z[r, blank] - lse(r); lp_emit[r] = z[r, y_b[u]] - lse(r) (-inf at u = U_b,
// and for an out-of-range label, which check_targets reports);
// if write_lse: lse_out[r] = lse(r). Each logit is read once (online logsumexp).
//   z: logits, storage type T; lp_blank, lp_emit, lse_out: compute type, index r - rbase.
//   offsets (B+1,) int64, target_len (B,) int32, targets (B, tgt_ld) int32.
template <class T, int TPR>
__global__ void __launch_bounds__(kRowBlock)
row_stats(const T* __restrict__ z, long long row0, long long n_rows, int V, int packed,
          long long ld, long long sb, long long st, long long su,
          const long long* __restrict__ offsets, const int* __restrict__ target_len,
          const int* __restrict__ targets, long long tgt_ld, int batch, int blank,
          long long rbase, typename Compute<T>::type* __restrict__ lp_blank,
          typename Compute<T>::type* __restrict__ lp_emit,
          typename Compute<T>::type* __restrict__ lse_out, int write_lse) {
  using C = typename Compute<T>::type;
  __shared__ C scratch[2 * kRowBlock / cutrans::kWarp];
  const Layout layout{ld, sb, st, su, packed};
  const RowLoop<TPR> loop;
  for (long long i = loop.first; i < n_rows; i += loop.step) {
    const long long r = row0 + i;
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, r);
    const T* row = z + layout.start(i, p);
    const C lse = row_lse<T, TPR>(row, V, loop.lane, scratch);
    if (loop.lane == 0) {
      lp_blank[r - rbase] = cutrans::to_compute(row[blank]) - lse;
      C e = cutrans::neg_inf(C());
      const int y = p.u < p.U ? safe_label(targets, tgt_ld, p.b, p.u, V) : -1;
      if (y >= 0) e = cutrans::to_compute(row[y]) - lse;
      lp_emit[r - rbase] = e;
      if (write_lse) lse_out[r - rbase] = lse;
    }
  }
}

// One element of row_grad (see below).
template <class C>
__device__ __forceinline__ C grad_of(int k, C x, C lse, C cb, C ce, C s, int blank, int label,
                                     C clamp) {
  C g = (cb + ce) * cutrans::c_exp(x - lse);
  if (k == blank) g -= cb;
  if (k == label) g -= ce;
  if (clamp > C(0)) g = g < -clamp ? -clamp : (g > clamp ? clamp : g);
  return s * g;
}

// grad[r, k] = scale[b] * clip((cb + ce) softmax(z[r])[k] - cb [k == blank] - ce [k == y_b[u]])
// with cb = coef_blank[r], ce = (1 + fastemit_lambda) coef_emit[r]; clip to [-clamp, clamp]
// only if clamp > 0. The row's logsumexp comes from lse_in[r] when have_lse (one read of the
// row), else it is computed first (two reads). grad has z's type and layout and may be z
// (each element is read, then written, by the same thread, after the row's reduction).
template <class T, int TPR>
__global__ void __launch_bounds__(kRowBlock)
row_grad(const T* z, T* grad, long long row0, long long n_rows, int V, int packed,
         long long ld, long long sb, long long st, long long su,
         const long long* __restrict__ offsets, const int* __restrict__ target_len,
         const int* __restrict__ targets, long long tgt_ld, int batch, int blank,
         long long rbase, const typename Compute<T>::type* __restrict__ coef_blank,
         const typename Compute<T>::type* __restrict__ coef_emit,
         const typename Compute<T>::type* __restrict__ lse_in, int have_lse,
         const typename Compute<T>::type* __restrict__ scale,
         typename Compute<T>::type fastemit_lambda, typename Compute<T>::type clamp) {
  using C = typename Compute<T>::type;
  constexpr int N = Vec<T>::N;
  __shared__ C scratch[2 * kRowBlock / cutrans::kWarp];
  const Layout layout{ld, sb, st, su, packed};
  const RowLoop<TPR> loop;
  for (long long i = loop.first; i < n_rows; i += loop.step) {
    const long long r = row0 + i;
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, r);
    const long long start = layout.start(i, p);
    const T* row = z + start;
    T* out = grad + start;
    const C lse = have_lse ? lse_in[r - rbase] : row_lse<T, TPR>(row, V, loop.lane, scratch);
    const C cb = coef_blank[r - rbase];
    const C ce = (C(1) + fastemit_lambda) * coef_emit[r - rbase];
    const int label = p.u < p.U ? safe_label(targets, tgt_ld, p.b, p.u, V) : -1;
    const C s = scale[p.b];
    int tail = 0;
    if (cutrans::is_aligned16(row) && cutrans::is_aligned16(out)) {
      const int words = V / N;
      for (int w = loop.lane; w < words; w += TPR) {
        C x[N];
        cutrans::load16<T>(row + w * N, x);
#pragma unroll
        for (int j = 0; j < N; ++j)
          x[j] = grad_of(w * N + j, x[j], lse, cb, ce, s, blank, label, clamp);
        cutrans::store16<T>(out + w * N, x);
      }
      tail = words * N;
    }
    for (int k = tail + loop.lane; k < V; k += TPR)
      out[k] = cutrans::from_compute<T>(
          grad_of(k, cutrans::to_compute(row[k]), lse, cb, ce, s, blank, label, clamp));
  }
}
