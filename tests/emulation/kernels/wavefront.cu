// RNN-T style forward (alpha) recursion over anti-diagonals: one block per sequence, thread u
// owns column u, one __syncthreads per diagonal.
// cutrans:names alpha_wavefront<float>; alpha_wavefront<double>
#include "cuda_compat.cuh"

__device__ __forceinline__ float log1p_exp_neg(float x) { return log1pf(expf(-x)); }
__device__ __forceinline__ double log1p_exp_neg(double x) { return log1p(exp(-x)); }

template <typename T>
__device__ __forceinline__ T log_add(T a, T b) {
  T m = a > b ? a : b;
  return m + log1p_exp_neg(a > b ? a - b : b - a);
}

// blank: (B, T, U+1), emit: (B, T, U), alpha: (B, T, U+1); blockDim.x >= U + 1.
template <typename T>
__global__ void alpha_wavefront(const T* __restrict__ blank, const T* __restrict__ emit, T* __restrict__ alpha,
                                int maxT, int maxU) {
  const int U1 = maxU + 1;
  const int u = threadIdx.x;
  const long long b = blockIdx.x;
  const T* bl = blank + b * maxT * U1;
  const T* em = emit + b * maxT * maxU;
  T* al = alpha + b * maxT * U1;
  for (int d = 0; d < maxT + maxU; ++d) {
    const int t = d - u;
    if (u < U1 && t >= 0 && t < maxT) {
      T v;
      if (t == 0 && u == 0) v = T(0);
      else if (t == 0) v = al[u - 1] + em[u - 1];
      else if (u == 0) v = al[(t - 1) * U1] + bl[(t - 1) * U1];
      else v = log_add(al[(t - 1) * U1 + u] + bl[(t - 1) * U1 + u], al[t * U1 + u - 1] + em[t * maxU + u - 1]);
      al[t * U1 + u] = v;
    }
    __syncthreads();
  }
}
