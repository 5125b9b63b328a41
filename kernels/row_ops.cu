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

// Elements [k0, k1) of a row into a lane's logsumexp state, in tiles of N = Vec<T>::N
// elements k0 + lane + j TPR (-inf past k1).
template <class T, int TPR>
__device__ __forceinline__ void element_tiles(const T* row, int k0, int k1, int lane,
                                              Lse<typename Compute<T>::type>& a) {
  using C = typename Compute<T>::type;
  constexpr int N = Vec<T>::N;
  for (int k = k0 + lane; k < k1; k += N * TPR) {
    C x[N];
#pragma unroll
    for (int j = 0; j < N; ++j)
      x[j] = k + j * TPR < k1 ? cutrans::to_compute(row[k + j * TPR]) : cutrans::neg_inf(C());
    cutrans::lse_push_tile(a, x);
  }
}

// The logsumexps of a row's two softmax groups: tokens [0, vocab) and (TDT, GENERAL only)
// durations [vocab, n_logits), by the row's TPR threads (every one gets them, identical
// bits): warp shuffles for TPR = 32, plus the block's scratch for TPR = kRowBlock. Each
// logit is read once, in tiles (cutrans::lse_push_tile): a lane's 16-byte words, then the
// rest (and rows off the 16-byte grid) in tiles of N lane-strided elements.
template <class T, int TPR, bool GENERAL>
__device__ __forceinline__ void row_lses(const T* row, int n_logits, int vocab, int lane,
                                         typename Compute<T>::type* scratch,
                                         typename Compute<T>::type& lse_tok,
                                         typename Compute<T>::type& lse_dur) {
  using C = typename Compute<T>::type;
  constexpr int N = Vec<T>::N;
  Lse<C> tok{cutrans::neg_inf(C()), C(0)}, dur{cutrans::neg_inf(C()), C(0)};
  const int n_tok = GENERAL ? vocab : n_logits;  // durations follow the tokens
  int tail = 0;
  if (cutrans::is_aligned16(row)) {
    const int words = n_tok / N;  // token words; the rest goes in element tiles
    for (int w = lane; w < words; w += TPR) {
      C x[N];
      cutrans::load16<T>(row + w * N, x);
      cutrans::lse_push_tile(tok, x);
    }
    tail = words * N;
  }
  element_tiles<T, TPR>(row, tail, n_tok, lane, tok);
  if (GENERAL) element_tiles<T, TPR>(row, n_tok, n_logits, lane, dur);
  lse_tok = cutrans::block_lse<C, TPR>(tok, scratch);
  lse_dur = GENERAL && n_logits > vocab ? cutrans::block_lse<C, TPR>(dur, scratch) : C(0);
}

// Status flags of the device-side checks (cutrans._status).
constexpr int kBadLabel = 1;   // a label within target_lengths outside [0, V)
constexpr int kBlankLabel = 2;  // a blank id within target_lengths

// A label y_b[u] if it can be read (0 <= y < V), else -1 (check_targets flags it).
__device__ __forceinline__ int safe_label(const int* targets, long long tgt_ld, int b, int u,
                                          int V) {
  const int y = targets[b * tgt_ld + u];
  return y >= 0 && y < V ? y : -1;
}

// status |= kBadLabel / kBlankLabel for bad labels within target_lengths (blanks: the nb
// blank ids). One block per sample (grid-stride), threads over u. Integer atomics: the
// result is order-independent.
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
check_targets(const int* __restrict__ targets, long long tgt_ld,
              const int* __restrict__ target_len, int batch, int V,
              const int* __restrict__ blanks, int nb, int* __restrict__ status) {
  for (int b = blockIdx.x; b < batch; b += gridDim.x) {
    for (int u = threadIdx.x; u < target_len[b]; u += BLOCK) {
      const int y = targets[b * tgt_ld + u];
      if (y < 0 || y >= V) {
        atomicOr(status, kBadLabel);
      } else {
        for (int i = 0; i < nb; ++i)
          if (y == blanks[i]) atomicOr(status, kBlankLabel);
      }
    }
  }
}

// The per-row values of a topology (cutrans._topology): row r's W = nb + 1 + n_dur values
// are values[(r - rbase) W + w]: for i < nb, values[i] = z[blanks[i]] - lse_tok - sigma;
// values[nb] = z[y_b[u]] - lse_tok - sigma + delay_penalty ((T_b - 1) / 2 - t) (-inf at
// u = U_b, and for an out-of-range label, which check_targets reports); values[nb + 1 + n] =
// z[vocab + n] - lse_dur for the n_logits - vocab duration logits (TDT). lse_tok and lse_dur
// are the logsumexps over [0, vocab) and [vocab, n_logits); if write_lse they go to
// lse_out[(r - rbase) G + g], G = 2 with duration logits, else 1.
//   z: logits, storage type T; offsets (B+1,) int64, target_len, logit_len (B,) int32,
//   targets (B, tgt_ld) int32, blanks (nb,) int32.
// Blocks per SM that the registers must allow: six (40 registers on sm_80/90, no spills: the
// occupancy of the element-by-element logsumexp that H100 runs B-D measured), three for
// double (the general double kernel spills at four).
template <class T> constexpr int kRowStatsBlocksPerSm = sizeof(T) == 8 ? 3 : 6;

template <class T, int TPR, bool GENERAL>
__global__ void __launch_bounds__(kRowBlock, kRowStatsBlocksPerSm<T>)
row_stats(const T* __restrict__ z, long long row0, long long n_rows, int n_logits, int vocab,
          int packed, long long ld, long long sb, long long st, long long su,
          const long long* __restrict__ offsets, const int* __restrict__ target_len,
          const int* __restrict__ logit_len, const int* __restrict__ targets, long long tgt_ld,
          int batch, const int* __restrict__ blanks, int nb, typename Compute<T>::type sigma,
          typename Compute<T>::type delay_penalty, long long rbase,
          typename Compute<T>::type* __restrict__ values,
          typename Compute<T>::type* __restrict__ lse_out, int write_lse) {
  using C = typename Compute<T>::type;
  __shared__ C scratch[2 * kRowBlock / cutrans::kWarp];
  const Layout layout{ld, sb, st, su, packed};
  const RowLoop<TPR> loop;
  const int n_dur = n_logits - vocab;
  const int W = nb + 1 + n_dur, G = n_dur > 0 ? 2 : 1;
  for (long long i = loop.first; i < n_rows; i += loop.step) {
    const long long r = row0 + i;
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, r);
    const T* row = z + layout.start(i, p);
    C lse_tok, lse_dur;
    row_lses<T, TPR, GENERAL>(row, n_logits, vocab, loop.lane, scratch, lse_tok, lse_dur);
    const long long e = r - rbase;
    for (int w = loop.lane; w < W; w += TPR) {
      C v;
      if (w < nb) {
        v = cutrans::to_compute(row[blanks[w]]) - lse_tok - sigma;
      } else if (w == nb) {
        v = cutrans::neg_inf(C());
        const int y = p.u < p.U ? safe_label(targets, tgt_ld, p.b, p.u, vocab) : -1;
        if (y >= 0) {
          v = cutrans::to_compute(row[y]) - lse_tok - sigma;
          if (delay_penalty != C(0))
            v += delay_penalty * (C(0.5) * C(logit_len[p.b] - 1) - C(p.t));
        }
      } else {
        v = cutrans::to_compute(row[vocab + (w - nb - 1)]) - lse_dur;
      }
      values[e * W + w] = v;
    }
    if (write_lse && loop.lane == 0) {
      lse_out[e * G] = lse_tok;
      if (n_dur > 0) lse_out[e * G + 1] = lse_dur;
    }
  }
}

// grad[r, k] = scale[b] * clip(g_k) with, for the token logits k < vocab,
//   g_k = S softmax_tok(z[r])[k] - sum_i cb_i [k == blanks[i]] - ce [k == y_b[u]],
//   S = sum_i cb_i + ce,  cb_i = (1 - omega) c[i] + omega c2[0] [i == 0],
//   ce = (1 + fastemit_lambda) ((1 - omega) c[nb] + omega c2[1]),
// and for the duration logits (TDT) k = vocab + n:
//   g_k = Sd softmax_dur(z[r])[n] - cd_n,  cd_n = (1 - omega) c[nb + 1 + n],  Sd = sum_n cd_n,
// where c = coefs[(r - rbase) W ...] are the lattice's coefficients of the row (W = nb + 1 +
// n_dur) and c2 = coefs2[(r - rbase) 2 ...] those of the mixed-in RNN-T lattice (TDT's
// omega; with omega = 0 any array). Clip to [-clamp, clamp] only if clamp > 0. The
// logsumexps come from lse_in[(r - rbase) G ...] when have_lse (one read of the row), else
// they are computed first.
// grad has z's type and layout and may be z (each element is read, then written, by the
// same thread, after the row's reductions).
// g clipped to [-clamp, clamp] if clamp > 0.
template <class C> __device__ __forceinline__ C clip(C g, C clamp) {
  return clamp > C(0) ? (g < -clamp ? -clamp : (g > clamp ? clamp : g)) : g;
}

// GENERAL = false: one blank, no duration logits, no omega (rnnt and modified rows: the
// lean path); true: every topology.
template <class C, bool GENERAL>
struct RowCoefs {
  const int* blanks;  // blank ids; blanks[0] and cb0 held here, the others read as needed
  const C* c;  // the row's W coefficients
  int nb, blank0, label;
  C cb0, ce, s_tok, s_dur, keep;  // keep = 1 - omega
  __device__ __forceinline__ C grad(int k, C x, C lse_tok, C lse_dur, int vocab) const {
    if (GENERAL && k >= vocab)  // a duration logit (TDT)
      return s_dur * cutrans::c_exp(x - lse_dur) - keep * c[nb + 1 + k - vocab];
    C g = s_tok * cutrans::c_exp(x - lse_tok);
    if (k == blank0) g -= cb0;
    if (GENERAL)
      for (int i = 1; i < nb; ++i)  // big blanks (multi-blank)
        if (k == blanks[i]) g -= keep * c[i];
    if (k == label) g -= ce;
    return g;
  }
};

template <class T, int TPR, bool GENERAL>
__global__ void __launch_bounds__(kRowBlock, 2)
row_grad(const T* z, T* grad, long long row0, long long n_rows, int n_logits, int vocab,
         int packed, long long ld, long long sb, long long st, long long su,
         const long long* __restrict__ offsets, const int* __restrict__ target_len,
         const int* __restrict__ targets, long long tgt_ld, int batch,
         const int* __restrict__ blanks, int nb, long long rbase,
         const typename Compute<T>::type* __restrict__ coefs,
         const typename Compute<T>::type* __restrict__ coefs2,
         typename Compute<T>::type omega,
         const typename Compute<T>::type* __restrict__ lse_in, int have_lse,
         const typename Compute<T>::type* __restrict__ scale,
         typename Compute<T>::type fastemit_lambda, typename Compute<T>::type clamp) {
  using C = typename Compute<T>::type;
  constexpr int N = Vec<T>::N;
  __shared__ C scratch[2 * kRowBlock / cutrans::kWarp];
  const Layout layout{ld, sb, st, su, packed};
  const RowLoop<TPR> loop;
  const int n_dur = n_logits - vocab;
  const int W = nb + 1 + n_dur, G = n_dur > 0 ? 2 : 1;
  for (long long i = loop.first; i < n_rows; i += loop.step) {
    const long long r = row0 + i;
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, r);
    const long long start = layout.start(i, p);
    const T* row = z + start;
    T* out = grad + start;
    C lse_tok, lse_dur;
    const long long e = r - rbase;
    if (have_lse) {
      lse_tok = lse_in[e * G];
      lse_dur = n_dur > 0 ? lse_in[e * G + 1] : C(0);
    } else {
      row_lses<T, TPR, GENERAL>(row, n_logits, vocab, loop.lane, scratch, lse_tok, lse_dur);
    }
    RowCoefs<C, GENERAL> k;
    k.blanks = blanks;
    k.c = coefs + e * W;
    k.nb = nb;
    k.blank0 = blanks[0];
    k.keep = C(1) - omega;
    k.cb0 = k.keep * k.c[0] + omega * coefs2[2 * e];
    k.ce = (C(1) + fastemit_lambda) * (k.keep * k.c[nb] + omega * coefs2[2 * e + 1]);
    k.s_tok = k.cb0 + k.ce;
    k.s_dur = C(0);
    if (GENERAL) {
      for (int b = 1; b < nb; ++b) k.s_tok += k.keep * k.c[b];
      for (int n = 0; n < n_dur; ++n) k.s_dur += k.keep * k.c[nb + 1 + n];
    }
    k.label = p.u < p.U ? safe_label(targets, tgt_ld, p.b, p.u, vocab) : -1;
    const C s = scale[p.b];
    int tail = 0;
    if (cutrans::is_aligned16(row) && cutrans::is_aligned16(out)) {
      const int words = n_logits / N;
      for (int w = loop.lane; w < words; w += TPR) {
        C x[N];
        cutrans::load16<T>(row + w * N, x);
#pragma unroll
        for (int j = 0; j < N; ++j)
          x[j] = s * clip(k.grad(w * N + j, x[j], lse_tok, lse_dur, vocab), clamp);
        cutrans::store16<T>(out + w * N, x);
      }
      tail = words * N;
    }
    for (int j = tail + loop.lane; j < n_logits; j += TPR)
      out[j] = cutrans::from_compute<T>(
          s * clip(k.grad(j, cutrans::to_compute(row[j]), lse_tok, lse_dur, vocab), clamp));
  }
}
