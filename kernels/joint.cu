// cutrans joint-network kernels: h = act(enc[b,t] + pred[b,u]) and its backward.
//
// Chunk rows r = row0 + i, i in [0, n_rows); h and dh are (n_rows, ldh) arrays of the storage
// type T (the first H columns are used; ldh >= H). enc (B, T_max, H) and pred
// (B, U_max + 1, H) are contiguous (enc_T = T_max, pred_U1 = U_max + 1). Math runs in the
// compute type. Activation codes: 0 tanh, 1 relu, 2 identity.
// The backward recomputes act'(x) from enc and pred (h is not kept) and reduces in a fixed
// order (joint_grad_sums: groups of threads over interleaved rows, a thread per 16-byte word
// of a row or per element; the groups' sums added in a fixed order through shared memory)
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

// The S = BLOCK / lanes partial sums of the block's elements, added up in the order s = 0..S-1
// through shared memory (`part`: BLOCK * N values, [s][e][lane]); thread (s, lane) holds
// its N sums in acc. Returns whether the caller owns the total (s == 0: acc is the total).
// Every thread of the block calls it the same number of times (two barriers when S > 1).
template <int N, class C>
__device__ __forceinline__ bool add_partials(C (&acc)[N], C* part, int s, int lane, int lanes,
                                             int S) {
  if (S == 1) return true;
  __syncthreads();  // the previous round's reads of part are done
#pragma unroll
  for (int e = 0; e < N; ++e) part[(s * N + e) * lanes + lane] = acc[e];
  __syncthreads();
  if (s != 0) return false;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    C sum = acc[e];
    for (int j = 1; j < S; ++j) sum += part[(j * N + e) * lanes + lane];
    acc[e] = sum;
  }
  return true;
}

// out[k] (+)= sum over i in [0, n) of dh_i[k] * act'(act(f[k] + v_i[k])) for k < H: the rows
// of dh are dh0 + i * ldh, those of v (the enc or pred rows that vary with i) v0 + i *
// vstride, f the fixed row. The block's BLOCK threads are S = BLOCK / lanes groups of
// `lanes` (lanes divides BLOCK): thread (s, lane) sums the rows i = s, s + S, s + 2S, ...
// (ordered_sum<4>'s order over them), then add_partials adds the S groups' sums in order
// (a loop over hundreds of rows would otherwise be bound by one thread's load latency; the
// host picks lanes from H, so the order is fixed for a given H and dtype: deterministic).
// Where every row starts on a 16-byte boundary, a lane takes a 16-byte word (N =
// Vec<T>::N elements) of k: N independent sums per loaded word, K = 4 rows' words in
// flight; else an element. float64 stays scalar (it would spill).
template <class T, class O, int BLOCK>
__device__ __forceinline__ void joint_grad_sums(const T* dh0, long long ldh, const T* v0,
                                                long long vstride, const T* f, long long n,
                                                int H, int activation, O* out,
                                                int accumulate, int lanes,
                                                typename Compute<T>::type* part) {
  using C = typename Compute<T>::type;
  constexpr int N = cutrans::Vec<T>::N;
  constexpr int K = 4;
  const int S = BLOCK / lanes;
  const int s = static_cast<int>(threadIdx.x) / lanes;
  const int lane = static_cast<int>(threadIdx.x) - s * lanes;
  const long long m = n > s ? (n - s + S - 1) / S : 0;  // this thread's rows: s + S j, j < m
  const T* dh = dh0 + s * ldh;
  const T* v = v0 + s * vstride;
  const long long dstep = S * ldh, vstep = S * vstride;
  int tail = 0;
  if (sizeof(T) < 8 && ldh % N == 0 && vstride % N == 0 && cutrans::is_aligned16(dh0) &&
      cutrans::is_aligned16(v0) && cutrans::is_aligned16(f)) {
    const int words = H / N;
    for (int w0 = 0; w0 < words; w0 += lanes) {  // the same rounds for every thread
      const int w = w0 + lane;
      C sum[N];
#pragma unroll
      for (int e = 0; e < N; ++e) sum[e] = C(0);
      if (w < words) {
        C fk[N], p[K][N];
        cutrans::load16<T>(f + w * N, fk);
#pragma unroll
        for (int j = 0; j < K; ++j)
#pragma unroll
          for (int e = 0; e < N; ++e) p[j][e] = C(0);
        const T* dp = dh + w * N;  // row s + S i of this thread's rows
        const T* vp = v + w * N;
        long long i = 0;
        for (; i + K <= m; i += K, dp += K * dstep, vp += K * vstep) {
          uint4 dw[K], vw[K];  // the K rows' words, all loads issued before any use
#pragma unroll
          for (int j = 0; j < K; ++j) {
            dw[j] = *reinterpret_cast<const uint4*>(dp + j * dstep);
            vw[j] = *reinterpret_cast<const uint4*>(vp + j * vstep);
          }
#pragma unroll
          for (int j = 0; j < K; ++j) {
            C d[N], x[N];
            cutrans::unpack16_as<T>(dw[j], d);
            cutrans::unpack16_as<T>(vw[j], x);
#pragma unroll
            for (int e = 0; e < N; ++e) p[j][e] += joint_grad_term(d[e], fk[e], x[e], activation);
          }
        }
#pragma unroll
        for (int j = 0; j < K; ++j) {
          if (i + j < m) {
            C d[N], x[N];
            cutrans::load16<T>(dp + j * dstep, d);
            cutrans::load16<T>(vp + j * vstep, x);
#pragma unroll
            for (int e = 0; e < N; ++e) p[j][e] += joint_grad_term(d[e], fk[e], x[e], activation);
          }
        }
#pragma unroll
        for (int e = 0; e < N; ++e) {
          sum[e] = p[0][e];
#pragma unroll
          for (int j = 1; j < K; ++j) sum[e] += p[j][e];
        }
      }
      if (add_partials<N>(sum, part, s, lane, lanes, S) && w < words) {
#pragma unroll
        for (int e = 0; e < N; ++e) store_out(out + w * N + e, sum[e], accumulate);
      }
    }
    tail = words * N;
  }
  for (int k0 = tail; k0 < H; k0 += lanes) {  // the same rounds for every thread
    const int k = k0 + lane;
    C sum[1] = {C(0)};
    if (k < H) {
      const C fk = cutrans::to_compute(f[k]);
      sum[0] = ordered_sum<K, C>(0, m, [&](long long j) {
        return joint_grad_term(cutrans::to_compute(dh[j * dstep + k]), fk,
                               cutrans::to_compute(v[j * vstep + k]), activation);
      });
    }
    if (add_partials<1>(sum, part, s, lane, lanes, S) && k < H) {
      store_out(out + k, sum[0], accumulate);
    }
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
// in a fixed order (joint_grad_sums over u, `lanes` threads per row). One block per frame
// F = f0 + j, j in [0, n_frames) (grid-stride), F indexing the frames of all samples
// (frame_offsets: exclusive cumsum of T_b); the chunk's frames are consecutive, so every
// block has work.
template <class T, class O, int BLOCK>
__global__ void __launch_bounds__(BLOCK, 2)
joint_backward_enc(const T* __restrict__ dh, long long ldh, const T* __restrict__ enc,
                   const T* __restrict__ pred, const long long* __restrict__ offsets,
                   const long long* __restrict__ frame_offsets,
                   const int* __restrict__ target_len, int batch, long long row0,
                   long long n_rows, long long f0, long long n_frames, int H, long long enc_T,
                   long long pred_U1, int activation, O* __restrict__ d_enc, int out_b0,
                   long long out_T, int accumulate, int lanes) {
  __shared__ typename Compute<T>::type part[BLOCK * cutrans::Vec<T>::N];
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
                                 hi - lo, H, activation, out, accumulate, lanes, part);
  }
}

// d_pred[b, u] (+)= sum over the chunk's rows of (b, u) (stride U_b + 1 rows) of
// dh * act'(enc[b,t] + pred[b,u]), in a fixed order (joint_grad_sums over t, `lanes`
// threads per row). One block per label slot L = l0 + j (label_offsets: exclusive cumsum
// of U_b + 1); a slot with no row in the chunk (at most U_b + 1 of them, at the chunk's two
// ends) is skipped by the whole block.
template <class T, class O, int BLOCK>
__global__ void __launch_bounds__(BLOCK, 2)
joint_backward_pred(const T* __restrict__ dh, long long ldh, const T* __restrict__ enc,
                    const T* __restrict__ pred, const long long* __restrict__ offsets,
                    const long long* __restrict__ label_offsets,
                    const int* __restrict__ logit_len, const int* __restrict__ target_len,
                    int batch, long long row0, long long n_rows, long long l0,
                    long long n_slots, int H, long long enc_T, long long pred_U1,
                    int activation, O* __restrict__ d_pred, int out_b0, long long out_U1,
                    int accumulate, int lanes) {
  __shared__ typename Compute<T>::type part[BLOCK * cutrans::Vec<T>::N];
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
                                 activation, out, accumulate, lanes, part);
  }
}
