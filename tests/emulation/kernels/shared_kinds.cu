// Every kind of static __shared__ storage, each re-poisoned before every block: namespace scope,
// a (non-template) kernel, a template kernel, a __device__ template helper. The emulator finds
// the first two in the cutrans_shared section, the others (COMDAT data) by their symbols in the
// module's object file. (Not supported by the emulator: __shared__ in a non-template inline
// function, which g++ rejects with "section type conflict".)
// cutrans:names poison_kinds<float, 32>; poison_kinds<double, 64>; poison_plain
#include "cuda_compat.cuh"

__shared__ float ns_shared[64];

template <typename T, int N>
__device__ T template_helper(int i, bool write) {
  __shared__ T s_helper[N];
  if (write) s_helper[i] = T(1);
  __syncthreads();
  return s_helper[i];
}

// Block 0 writes 1 to every kind, later blocks only read: they must see poison (NaN).
// out[(block * 3 + kind) * N + thread] for kind = kernel, template helper, namespace scope.
template <typename T, int N>
__global__ void poison_kinds(double* out) {
  __shared__ T s_kernel[N];
  const int i = threadIdx.x;
  const bool write = blockIdx.x == 0;
  if (write) { s_kernel[i] = T(1); ns_shared[i] = 1.f; }
  __syncthreads();
  double* o = out + blockIdx.x * 3 * N;
  o[i] = double(s_kernel[i]);
  o[N + i] = double(template_helper<T, N>(i, write));
  o[2 * N + i] = double(ns_shared[i]);
}

// The same for a non-template kernel (its storage lands in the cutrans_shared section).
__global__ void poison_plain(double* out) {
  __shared__ float s_plain[32];
  const int i = threadIdx.x;
  if (blockIdx.x == 0) s_plain[i] = 1.f;
  __syncthreads();
  out[blockIdx.x * 32 + i] = double(s_plain[i]);
}
