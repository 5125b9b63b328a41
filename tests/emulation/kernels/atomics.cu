// Every atomic the emulation provides, with order-independent results.
// cutrans:names atomics_kernel
#include "cuda_compat.cuh"

__global__ void atomics_kernel(const int* __restrict__ v, int n, int* hist, unsigned int* uhist, float* fsum,
                               double* dsum, unsigned long long* usum, int* imax, int* imin, int* cas_count,
                               int* exch) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int x = v[i];
  atomicAdd(&hist[x], 1);
  atomicAdd(&uhist[x], 2u);
  atomicAdd(fsum, 0.5f);
  atomicAdd(dsum, (double)x);
  atomicAdd(usum, (unsigned long long)x);
  atomicMax(imax, 3 * x - 7);
  atomicMin(imin, 3 * x - 7);
  int old = atomicAdd(cas_count, 0), assumed;
  do {
    assumed = old;
    old = atomicCAS(cas_count, assumed, assumed + 1);
  } while (old != assumed);
  atomicExch(exch, i);
}
