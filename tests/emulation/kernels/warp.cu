// Warp intrinsics with widths, disjoint half-warp masks, 64-bit payloads, exited lanes.
// cutrans:names warp_ops; shfl_from_exited
#include "cuda_compat.cuh"

__global__ void warp_ops(const int* in, int* idx, int* up, int* down, int* xr, double* dbl, long long* ll,
                         unsigned int* ballot, int* any, int* all) {
  const int t = threadIdx.x, lane = t % 32;
  const int v = in[t];
  idx[t] = __shfl_sync(0xffffffffu, v, (lane * 7) % 32, 8);
  up[t] = __shfl_up_sync(0xffffffffu, v, 3, 16);
  down[t] = __shfl_down_sync(0xffffffffu, v, 5);
  xr[t] = __shfl_xor_sync(0xffffffffu, v, 6, 16);
  dbl[t] = __shfl_sync(0xffffffffu, v * 0.5, 31 - lane);
  ll[t] = __shfl_down_sync(0xffffffffu, (long long)v << 33, 1);
  const unsigned int m = lane < 16 ? 0x0000ffffu : 0xffff0000u;  // two independent half-warp groups
  ballot[t] = __ballot_sync(m, v % 3 == 0);
  any[t] = __any_sync(m, v > 90);
  all[t] = __all_sync(m, v >= 0);
  __syncwarp();
}

// Lanes >= 20 have exited: a read from them gives poison (NaN), not a hang.
__global__ void shfl_from_exited(float* out) {
  if (threadIdx.x >= 20) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 16);
}
