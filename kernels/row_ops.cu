// cutrans row kernels: per-row statistics and per-row gradient of the logits.
//
// One block per row (grid-stride over the chunk's rows), BLOCK threads striding over V.
// Rows r = row0 + i, i in [0, n_rows), of the packed row space; logits of row r start at
// layout.start(i, pos) (see common.cuh, backends/base.py: RowLayout).
#include "common.cuh"

using cutrans::Compute;
using cutrans::Layout;
using cutrans::Lse;
using cutrans::RowPos;

// logsumexp of a row of V logits, computed by the whole block (every thread gets it).
template <class T, int BLOCK>
__device__ __forceinline__ typename Compute<T>::type row_lse(const T* row, int V,
                                                             typename Compute<T>::type* scratch) {
  using C = typename Compute<T>::type;
  Lse<C> acc{cutrans::neg_inf(C()), C(0)};
  for (int k = threadIdx.x; k < V; k += BLOCK) cutrans::lse_push(acc, cutrans::to_compute(row[k]));
  return cutrans::block_lse<C, BLOCK>(acc, scratch);
}

// lp_blank[r] = z[r, blank] - lse(r); lp_emit[r] = z[r, y_b[u]] - lse(r) (-inf at u = U_b).
//   z: logits, storage type T; lp_blank, lp_emit: (R,) compute type.
//   offsets (B+1,) int64, target_len (B,) int32, targets (B, tgt_ld) int32.
template <class T, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
row_stats(const T* __restrict__ z, long long row0, long long n_rows, int V, int packed,
          long long ld, long long sb, long long st, long long su,
          const long long* __restrict__ offsets, const int* __restrict__ target_len,
          const int* __restrict__ targets, long long tgt_ld, int batch, int blank,
          typename Compute<T>::type* __restrict__ lp_blank,
          typename Compute<T>::type* __restrict__ lp_emit) {
  using C = typename Compute<T>::type;
  __shared__ C scratch[2 * BLOCK / cutrans::kWarp];
  const Layout layout{ld, sb, st, su, packed};
  for (long long i = blockIdx.x; i < n_rows; i += gridDim.x) {
    const long long r = row0 + i;
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, r);
    const T* row = z + layout.start(i, p);
    const C lse = row_lse<T, BLOCK>(row, V, scratch);
    if (threadIdx.x == 0) {
      lp_blank[r] = cutrans::to_compute(row[blank]) - lse;
      C e = cutrans::neg_inf(C());
      if (p.u < p.U) e = cutrans::to_compute(row[targets[p.b * tgt_ld + p.u]]) - lse;
      lp_emit[r] = e;
    }
  }
}

// grad[r, k] = scale[b] * clip((cb + ce) softmax(z[r])[k] - cb [k == blank] - ce [k == y_b[u]])
// with cb = coef_blank[r], ce = (1 + fastemit_lambda) coef_emit[r]; clip to [-clamp, clamp]
// only if clamp > 0. grad has z's type and layout and may be z (each element is read, then
// written, by the same thread, after the row's reduction).
template <class T, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
row_grad(const T* z, T* grad, long long row0, long long n_rows, int V, int packed,
         long long ld, long long sb, long long st, long long su,
         const long long* __restrict__ offsets, const int* __restrict__ target_len,
         const int* __restrict__ targets, long long tgt_ld, int batch, int blank,
         const typename Compute<T>::type* __restrict__ coef_blank,
         const typename Compute<T>::type* __restrict__ coef_emit,
         const typename Compute<T>::type* __restrict__ scale,
         typename Compute<T>::type fastemit_lambda, typename Compute<T>::type clamp) {
  using C = typename Compute<T>::type;
  __shared__ C scratch[2 * BLOCK / cutrans::kWarp];
  const Layout layout{ld, sb, st, su, packed};
  for (long long i = blockIdx.x; i < n_rows; i += gridDim.x) {
    const long long r = row0 + i;
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, r);
    const long long start = layout.start(i, p);
    const T* row = z + start;
    T* out = grad + start;
    const C lse = row_lse<T, BLOCK>(row, V, scratch);
    const C cb = coef_blank[r];
    const C ce = (C(1) + fastemit_lambda) * coef_emit[r];
    const int label = p.u < p.U ? targets[p.b * tgt_ld + p.u] : -1;
    const C s = scale[p.b];
    for (int k = threadIdx.x; k < V; k += BLOCK) {
      C g = (cb + ce) * cutrans::c_exp(cutrans::to_compute(row[k]) - lse);
      if (k == blank) g -= cb;
      if (k == label) g -= ce;
      if (clamp > C(0)) g = g < -clamp ? -clamp : (g > clamp ? clamp : g);
      out[k] = cutrans::from_compute<T>(s * g);
    }
  }
}
