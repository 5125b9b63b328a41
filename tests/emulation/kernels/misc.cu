// Early exit with barriers, 16-bit floats, multi-dimensional grids, poisoned shared memory.
// cutrans:names reverse_partial; convert16<__half>; convert16<__nv_bfloat16>; index3d; read_uninit<64>
#include "cuda_compat.cuh"

// Threads >= n leave before the barriers; survivors reverse their segment through shared memory
// and vote: ballot[blockIdx.x * 32 + warp] = live-lane mask, count[blockIdx.x] = n.
__global__ void reverse_partial(const float* x, float* y, unsigned int* ballot, int* count, int n) {
  __shared__ float s[1024];
  const int i = threadIdx.x;
  if (i >= n) return;
  s[i] = x[blockIdx.x * n + i];
  __syncthreads();
  y[blockIdx.x * n + i] = s[n - 1 - i];
  const unsigned int live = __ballot_sync(0xffffffffu, 1);
  if (i % 32 == 0) ballot[blockIdx.x * 32 + i / 32] = live;
  const int c = __syncthreads_count(1);
  if (i == 0) count[blockIdx.x] = c;
}

template <typename T>
__global__ void convert16(const float* x, T* y, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  y[i] = T(x[i]);
  back[i] = static_cast<float>(y[i]);
}

// out[(z, y, x)] = (x, y, z, linear block id), for a 3-D grid of 3-D blocks.
__global__ void index3d(int* out) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int z = blockIdx.z * blockDim.z + threadIdx.z;
  const int W = gridDim.x * blockDim.x, H = gridDim.y * blockDim.y;
  const long long k = ((long long)z * H + y) * W + x;
  out[4 * k + 0] = x;
  out[4 * k + 1] = y;
  out[4 * k + 2] = z;
  out[4 * k + 3] = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
}

// Block 0 initialises all of its shared memory, later blocks only the first `n_init` entries:
// the rest must read as poison (NaN) in every block > 0 (shared memory is re-poisoned per block).
template <int N>
__global__ void read_uninit(float* out, float* dyn_out, int n_init) {
  __shared__ float s[N];
  CUTRANS_DYN_SHARED(float, d);
  const int i = threadIdx.x;
  if (blockIdx.x == 0 || i < n_init) { s[i] = 1.f; d[i] = 2.f; }
  __syncthreads();
  out[blockIdx.x * N + i] = s[i];
  dyn_out[blockIdx.x * N + i] = d[i];
}
