// cutrans joint-network kernels: h = act(enc[b,t] + pred[b,u]) and its backward.
//
// Chunk rows r = row0 + i, i in [0, n_rows); h and dh are (n_rows, H) in the compute type.
// enc (B, T_max, H) and pred (B, U_max + 1, H) are contiguous (enc_T = T_max,
// pred_U1 = U_max + 1). Activation codes: 0 tanh, 1 relu, 2 identity.
// The backward reductions are deterministic: every output element is summed by one thread in
// row order (no atomics); d_enc / d_pred accumulate (+=) across chunks.
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

// One block per row (grid-stride), BLOCK threads over H.
template <class T, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
joint_forward(const T* __restrict__ enc, const T* __restrict__ pred,
              const long long* __restrict__ offsets, const int* __restrict__ target_len,
              int batch, long long row0, long long n_rows, int H, long long enc_T,
              long long pred_U1, int activation, typename Compute<T>::type* __restrict__ h) {
  using C = typename Compute<T>::type;
  for (long long i = blockIdx.x; i < n_rows; i += gridDim.x) {
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, row0 + i);
    const T* e = enc + (p.b * enc_T + p.t) * H;
    const T* q = pred + (p.b * pred_U1 + p.u) * H;
    C* out = h + i * H;
    for (int k = threadIdx.x; k < H; k += BLOCK) {
      const C x = cutrans::to_compute(e[k]) + cutrans::to_compute(q[k]);
      out[k] = activate(x, activation);
    }
  }
}

// dh <- dpre = dh * act'(h); d_enc[b, t] += sum of dpre over the chunk's rows of (b, t).
// Block i owns the run of rows of one (b, t) that starts at chunk row i (u == 0 or i == 0)
// and sums it in row order; other blocks skip. Every dh element is rewritten exactly once.
template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
joint_backward_enc(C* __restrict__ dh, const C* __restrict__ h,
                   const long long* __restrict__ offsets, const int* __restrict__ target_len,
                   int batch, long long row0, long long n_rows, int H, long long enc_T,
                   int activation, C* __restrict__ d_enc) {
  for (long long i = blockIdx.x; i < n_rows; i += gridDim.x) {
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, row0 + i);
    if (p.u != 0 && i != 0) continue;
    long long len = p.U + 1 - p.u;
    if (len > n_rows - i) len = n_rows - i;
    C* out = d_enc + (p.b * enc_T + p.t) * H;
    for (int k = threadIdx.x; k < H; k += BLOCK) {
      C acc = C(0);
      for (long long j = i; j < i + len; ++j) {
        const C g = dh[j * H + k] * activate_grad(h[j * H + k], activation);
        dh[j * H + k] = g;
        acc += g;
      }
      out[k] += acc;
    }
  }
}

// d_pred[b, u] += sum over the chunk's rows of (b, u) (stride U_b + 1 rows), in t order.
// Block i owns (b, u) if chunk row i is its first row in the chunk (t == 0 or the row one
// frame earlier precedes row0). Reads dpre written by joint_backward_enc.
template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
joint_backward_pred(const C* __restrict__ dpre, const long long* __restrict__ offsets,
                    const int* __restrict__ logit_len, const int* __restrict__ target_len,
                    int batch, long long row0, long long n_rows, int H, long long pred_U1,
                    C* __restrict__ d_pred) {
  for (long long i = blockIdx.x; i < n_rows; i += gridDim.x) {
    const RowPos p = cutrans::row_pos(offsets, target_len, batch, row0 + i);
    const int U1 = p.U + 1;
    if (p.t != 0 && i >= U1) continue;  // row i - U1 (same (b, u), frame t - 1) is in the chunk
    // rows i, i + U1, ... of the sample that lie in the chunk
    const int T = logit_len[p.b];
    int steps = T - p.t;
    const long long end = row0 + n_rows - offsets[p.b];  // chunk end, sample-local
    const unsigned local = static_cast<unsigned>(p.t) * static_cast<unsigned>(U1) + p.u;
    if (end < static_cast<long long>(T) * U1)
      steps = static_cast<int>((static_cast<unsigned>(end) - local - 1u) / static_cast<unsigned>(U1)) + 1;
    C* out = d_pred + (p.b * pred_U1 + p.u) * H;
    for (int k = threadIdx.x; k < H; k += BLOCK) {
      C acc = C(0);
      for (int s = 0; s < steps; ++s) acc += dpre[(i + static_cast<long long>(s) * U1) * H + k];
      out[k] += acc;
    }
  }
}
