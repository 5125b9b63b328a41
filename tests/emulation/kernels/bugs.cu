// Deliberately broken kernels: each must be caught by the emulator or a sanitizer.
// cutrans:names racy_shift; oob_read; divergent_deadlock; divergent_sites; mask_mismatch
#include "cuda_compat.cuh"

// Data race: the barrier between the shared-memory write and the neighbour's read is missing.
__global__ void racy_shift(const float* x, float* y, int n) {
  __shared__ float s[256];
  const int i = threadIdx.x;
  s[i] = x[i];
  y[i] = s[(i + 1) % n];  // RACE: reads a neighbour's s[] without __syncthreads()
}

// Out of bounds: `<=` reads and writes one element past the end.
__global__ void oob_read(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = 2.f * x[i];  // OOB at i == n
}

// Lanes 0-15 wait for the block, lanes 16-31 wait for the whole warp: nobody can proceed.
__global__ void divergent_deadlock(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  else __syncwarp();
  out[threadIdx.x] = 1.f;
}

// Two different __syncthreads() reached by different threads (undefined behaviour in CUDA).
__global__ void divergent_sites(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Lanes pass different masks to the same shuffle.
__global__ void mask_mismatch(float* out) {
  const unsigned int mask = threadIdx.x == 0 ? 0x3u : 0xffffffffu;
  out[threadIdx.x] = __shfl_sync(mask, 1.f, 0);
}
