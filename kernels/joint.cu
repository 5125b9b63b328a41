// cutrans joint-network kernels: h = act(enc[b,t] + pred[b,u]) and its backward.
//
// Chunk rows r = row0 + i, i in [0, n_rows); h and dh are (n_rows, ldh) arrays of the storage
// type T (the first H columns are used; ldh >= H). enc (B, T_max, H) and pred
// (B, U_max + 1, H) are contiguous (enc_T = T_max, pred_U1 = U_max + 1). Math runs in the
// compute type. Activation codes: 0 tanh, 1 relu, 2 identity.
// The backward recomputes act'(x) from enc and pred (h is not kept) and reduces in a fixed
// order (ordered_sum; joint_grad_sums: a thread per 16-byte word of a row, or per element)
// per output element: deterministic, no atomics. Its
// outputs have type O (T, or the compute type for the float32 accumulators of a sample
// split across chunks); an output's row for sample b is (b - out_b0): out_b0 = 0 for whole
// (B, ...) gradients.
#include "common.cuh"

using cutrans::Compute;
using cutrans::RowPos;

template <class C> __device__ __forceinline__ C activate(C x, int activation) {
  if (activation == 0) return cutrans::c_tanh(x);
  if (activation == 1) return x > C(0) ? x : C(0);
  return x;
}

// act'(x) expressed through h = act(x).
template <class C> __device__ __forceinline__ C activate_grad(C h, int activation) {
  if (activation == 0) return C(1) - h * h;
  if (activation == 1) return h > C(0) ? C(1) : C(0);
  return C(1);
}

// out = acc (accumulate == 0) or out + acc, stored as O.
template <class O, class C>
__device__ __forceinline__ void store_out(O* out, C acc, int accumulate) {
  if (accumulate) acc += static_cast<C>(cutrans::to_compute(*out));
  *out = cutrans::from_compute<O>(static_cast<typename Compute<O>::type>(acc));
}

// sum over i in [lo, hi) of term(i), in a fixed order: K partial sums (i = lo + j mod K),
// added up 0..K-1 at the end. The K terms of a step are independent, so their global loads
// are in flight together (a loop over hundreds of rows is otherwise bound by one load's
// latency per row); deterministic like a sequential sum, rounded differently.
template <int K, class C, class F>
__device__ __forceinline__ C ordered_sum(long long lo, long long hi, F term) {
  C p[K];
#pragma unroll
  for (int j = 0; j < K; ++j) p[j] = C(0);
  long long i = lo;
  for (; i + K <= hi; i += K) {
    C x[K];
#pragma unroll
    for (int j = 0; j < K; ++j) x[j] = term(i + j);
#pragma unroll
    for (int j = 0; j < K; ++j) p[j] += x[j];
  }
#pragma unroll
  for (int j = 0; j < K; ++j) {
    if (i + j < hi) p[j] += term(i + j);
  }
  C s = p[0];
#pragma unroll
  for (int j = 1; j < K; ++j) s += p[j];
  return s;
}

// One term of the joint backward's sums: dLoss/dpre = dh * act'(act(f + v)).
template <class C>
__device__ __forceinline__ C joint_grad_term(C dh, C f, C v, int activation) {
  return dh * activate_grad(activate(f + v, activation), activation);
}

// out[k] (+)= sum over i in [0, n) of dh_i[k] * act'(act(f[k] + v_i[k])) for k < H, in
// ordered_sum<4>'s order over i: the rows of dh are dh0 + i * ldh, those of v (the enc or
// pred rows that vary with i) v0 + i * vstride, f the fixed row. Where every row starts on
// a 16-byte boundary, a thread takes a 16-byte word (N = Vec<T>::N elements) of k: N
// independent sums per loaded word, K = 4 rows' words in flight; the order of the sum per
// element is the same either way. float64 stays scalar (it would spill).
template <class T, class O, int BLOCK>
__device__ __forceinline__ void joint_grad_sums(const T* dh0, long long ldh, const T* v0,
                                                long long vstride, const T* f, long long n,
                                                int H, int activation, O* out,
                                                int accumulate) {
  using C = typename Compute<T>::type;
  constexpr int N = cutrans::Vec<T>::N;
  constexpr int K = 4;
  int tail = 0;
  if (sizeof(T) < 8 && ldh % N == 0 && vstride % N == 0 && cutrans::is_aligned16(dh0) &&
      cutrans::is_aligned16(v0) && cutrans::is_aligned16(f)) {
    for (int w = threadIdx.x; w < H / N; w += BLOCK) {
      C fk[N], p[K][N];
      cutrans::load16<T>(f + w * N, fk);
#pragma unroll
      for (int j = 0; j < K; ++j)
#pragma unroll
        for (int e = 0; e < N; ++e) p[j][e] = C(0);
      long long i = 0;
      for (; i + K <= n; i += K) {
        uint4 dw[K], vw[K];  // the K rows' words, all loads issued before any use
#pragma unroll
        for (int j = 0; j < K; ++j) {
          dw[j] = *reinterpret_cast<const uint4*>(dh0 + (i + j) * ldh + w * N);
          vw[j] = *reinterpret_cast<const uint4*>(v0 + (i + j) * vstride + w * N);
        }
#pragma unroll
        for (int j = 0; j < K; ++j) {
          C d[N], v[N];
          cutrans::unpack16_as<T>(dw[j], d);
          cutrans::unpack16_as<T>(vw[j], v);
#pragma unroll
          for (int e = 0; e < N; ++e) p[j][e] += joint_grad_term(d[e], fk[e], v[e], activation);
        }
      }
#pragma unroll
      for (int j = 0; j < K; ++j) {
        if (i + j < n) {
          C d[N], v[N];
          cutrans::load16<T>(dh0 + (i + j) * ldh + w * N, d);
          cutrans::load16<T>(v0 + (i + j) * vstride + w * N, v);
#pragma unroll
          for (int e = 0; e < N; ++e) p[j][e] += joint_grad_term(d[e], fk[e], v[e], activation);
        }
      }
#pragma unroll
      for (int e = 0; e < N; ++e) {
        C sum = p[0][e];
#pragma unroll
        for (int j = 1; j < K; ++j) sum += p[j][e];
        store_out(out + w * N + e, sum, accumulate);
      }
    }
    tail = H / N * N;
  }
  for (int k = tail + threadIdx.x; k < H; k += BLOCK) {
    const C fk = cutrans::to_compute(f[k]);
    const C acc = ordered_sum<K, C>(0, n, [&](long long i) {
      return joint_grad_term(cutrans::to_compute(dh0[i * ldh + k]), fk,
                             cutrans::to_compute(v0[i * vstride + k]), activation);
    });
    store_out(out + k, acc, accumulate);
  }
}

// h[i, k] = act(enc + pred) as T: TPR threads per row (a warp per row, or a block per row
// for very wide H; see cutrans::RowLoop), 16-byte words where the three rows are aligned.
template <class T, int TPR>
__global__ void __launch_bounds__(cutrans::kRowBlock)
joint_forward(const T* __restrict__ enc, const T* __restrict__ pred,
              const long long* __restrict__ offsets, const int* __restrict__ target_len,
              int batch, long long row0, long long n_rows, int H, long long enc_T,
              long long pred_U1, int activation, T* __restrict__ h, long long ldh) {
  using C = typename Compute<T>::type;
  constexpr int N = cutrans::Vec<T>::N;
  const cutrans::RowLoop<TPR> loop;
  for (long long i = loop.first; i < n_rows; i += loop.step) {
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, row0 + i);
    const T* e = enc + (p.b * enc_T + p.t) * H;
    const T* q = pred + (p.b * pred_U1 + p.u) * H;
    T* out = h + i * ldh;
    int tail = 0;
    // 16-byte words for 16/32-bit types (float64 would only pair two values, and spills)
    if (sizeof(T) < 8 && cutrans::is_aligned16(e) && cutrans::is_aligned16(q) &&
        cutrans::is_aligned16(out)) {
      for (int w = loop.lane; w < H / N; w += TPR) {
        C x[N], y[N];
        cutrans::load16<T>(e + w * N, x);
        cutrans::load16<T>(q + w * N, y);
#pragma unroll
        for (int j = 0; j < N; ++j) x[j] = activate(x[j] + y[j], activation);
        cutrans::store16<T>(out + w * N, x);
      }
      tail = H / N * N;
    }
    for (int k = tail + loop.lane; k < H; k += TPR) {
      const C x = cutrans::to_compute(e[k]) + cutrans::to_compute(q[k]);
      out[k] = cutrans::from_compute<T>(activate(x, activation));
    }
  }
}

// d_enc[b, t] (+)= sum over the chunk's rows of (b, t) of dh * act'(enc[b,t] + pred[b,u]),
// in a fixed order (ordered_sum over u). One block per frame F = f0 + j, j in [0, n_frames)
// (grid-stride), F indexing the frames of all samples (frame_offsets: exclusive cumsum of
// T_b); the chunk's frames are consecutive, so every block has work.
template <class T, class O, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
joint_backward_enc(const T* __restrict__ dh, long long ldh, const T* __restrict__ enc,
                   const T* __restrict__ pred, const long long* __restrict__ offsets,
                   const long long* __restrict__ frame_offsets,
                   const int* __restrict__ target_len, int batch, long long row0,
                   long long n_rows, long long f0, long long n_frames, int H, long long enc_T,
                   long long pred_U1, int activation, O* __restrict__ d_enc, int out_b0,
                   long long out_T, int accumulate) {
  for (long long j = blockIdx.x; j < n_frames; j += gridDim.x) {
    const long long F = f0 + j;
    const int b = cutrans::find_sample(frame_offsets, batch, F);
    const int t = static_cast<int>(F - frame_offsets[b]);
    const int U1 = target_len[b] + 1;
    const long long first = offsets[b] + static_cast<long long>(t) * U1;  // row of (b, t, 0)
    const long long lo = first > row0 ? first : row0;
    const long long hi = first + U1 < row0 + n_rows ? first + U1 : row0 + n_rows;
    const T* e = enc + (b * enc_T + t) * H;
    const T* q = pred + b * pred_U1 * H;  // row u of sample b: chunk row first + u
    O* out = d_enc + ((b - out_b0) * out_T + t) * H;
    joint_grad_sums<T, O, BLOCK>(dh + (lo - row0) * ldh, ldh, q + (lo - first) * H, H, e,
                                 hi - lo, H, activation, out, accumulate);
  }
}

// d_pred[b, u] (+)= sum over the chunk's rows of (b, u) (stride U_b + 1 rows) of
// dh * act'(enc[b,t] + pred[b,u]), in a fixed order (ordered_sum over t). One block per
// label slot L = l0 + j (label_offsets: exclusive cumsum of U_b + 1); a slot with no row
// in the chunk (at most U_b + 1 of them, at the chunk's two ends) exits at once.
template <class T, class O, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
joint_backward_pred(const T* __restrict__ dh, long long ldh, const T* __restrict__ enc,
                    const T* __restrict__ pred, const long long* __restrict__ offsets,
                    const long long* __restrict__ label_offsets,
                    const int* __restrict__ logit_len, const int* __restrict__ target_len,
                    int batch, long long row0, long long n_rows, long long l0,
                    long long n_slots, int H, long long enc_T, long long pred_U1,
                    int activation, O* __restrict__ d_pred, int out_b0, long long out_U1,
                    int accumulate) {
  for (long long j = blockIdx.x; j < n_slots; j += gridDim.x) {
    const long long L = l0 + j;
    const int b = cutrans::find_sample(label_offsets, batch, L);
    const int u = static_cast<int>(L - label_offsets[b]);
    const long long U1 = target_len[b] + 1;
    const long long frames = logit_len[b];
    // rows offsets[b] + t * U1 + u inside [row0, row0 + n_rows): t in [t_lo, t_hi)
    const long long rel0 = row0 - offsets[b] - u;  // t * U1 >= rel0
    const long long rel1 = row0 + n_rows - offsets[b] - u;  // t * U1 < rel1
    long long t_lo = rel0 <= 0 ? 0 : (rel0 + U1 - 1) / U1;
    long long t_hi = rel1 <= 0 ? 0 : (rel1 + U1 - 1) / U1;
    if (t_hi > frames) t_hi = frames;
    if (t_lo >= t_hi) continue;
    const T* e = enc + (b * enc_T + t_lo) * H;  // frames t_lo, t_lo + 1, ...
    const T* q = pred + (b * pred_U1 + u) * H;
    O* out = d_pred + ((b - out_b0) * out_U1 + u) * H;
    const long long r0 = offsets[b] + t_lo * U1 + u - row0;  // chunk row of (b, t_lo, u)
    joint_grad_sums<T, O, BLOCK>(dh + r0 * ldh, U1 * ldh, e, H, q, t_hi - t_lo, H,
                                 activation, out, accumulate);
  }
}
