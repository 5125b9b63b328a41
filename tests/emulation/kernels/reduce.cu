// Block reduction: dynamic shared memory (CUTRANS_DYN_SHARED) + warp shuffles.
// cutrans:names block_sum<float, 128>; block_sum<__half, 64>; block_sum<__nv_bfloat16, 256>; block_sum_static
#include "cuda_compat.cuh"

template <typename T>
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// out[blockIdx.x] = sum(x[blockIdx.x * n : (blockIdx.x + 1) * n]); blockDim.x multiple of 32.
template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) block_sum(const T* __restrict__ x, float* __restrict__ out, int n) {
  CUTRANS_DYN_SHARED(float, warp_partial);  // blockDim.x / 32 floats
  const T* row = x + (long long)blockIdx.x * n;
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += BLOCK) acc += static_cast<float>(row[i]);
  acc = warp_sum<T>(acc);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_partial[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    float v = lane < BLOCK / 32 ? warp_partial[lane] : 0.f;
    v = warp_sum<T>(v);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// Static shared memory version with an xor butterfly (all lanes get the total) and double.
__global__ void block_sum_static(const double* x, double* out, int n) {
  __shared__ double partial[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += x[blockIdx.x * n + i];
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int w = 0; w < (int)blockDim.x / 32; ++w) s += partial[w];
    out[blockIdx.x] = s;
  }
}
