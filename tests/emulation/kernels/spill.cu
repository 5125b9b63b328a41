// Register pressure far above what __launch_bounds__(1024, 2) allows (32 registers): spills.
// cutrans:names spill_kernel
#include "cuda_compat.cuh"

__global__ void __launch_bounds__(1024, 2) spill_kernel(const float* x, float* y, int n) {
  float acc[48];
#pragma unroll
  for (int k = 0; k < 48; ++k) acc[k] = x[(threadIdx.x + 97 * k) % n];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
#pragma unroll
    for (int k = 0; k < 48; ++k) acc[k] = acc[k] * acc[(k + r + 1) % 48] + acc[(k + 7) % 48];
  }
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 48; ++k) s += acc[k] * (k + 1);
  y[threadIdx.x] = s;
}
