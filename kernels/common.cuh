// cutrans: shared device helpers for every kernel source.
//
// Storage types: float, double, __half, __nv_bfloat16. Math runs in the compute type
// Compute<T>::type (double for double, float otherwise). Include after cuda_compat.cuh.
#pragma once

#include "cuda_compat.cuh"

#ifndef CUTRANS_SOURCE_HASH
#define CUTRANS_SOURCE_HASH 0  // the loader passes a hash of the kernels folder (cache key)
#endif

namespace cutrans {

constexpr int kWarp = 32;

template <class T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

// ----------------------------------------------------------------- conversions
__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }
__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_compute(typename Compute<T>::type x);
template <> __device__ __forceinline__ float from_compute<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_compute<double>(double x) { return x; }
template <> __device__ __forceinline__ __half from_compute<__half>(float x) {
  return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// ----------------------------------------------------------------- math (overloaded)
__device__ __forceinline__ float neg_inf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double neg_inf(double) {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
}
__device__ __forceinline__ float c_exp(float x) { return expf(x); }
__device__ __forceinline__ double c_exp(double x) { return exp(x); }
__device__ __forceinline__ float c_log(float x) { return logf(x); }
__device__ __forceinline__ double c_log(double x) { return log(x); }
__device__ __forceinline__ float c_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double c_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float c_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double c_tanh(double x) { return tanh(x); }

// log(exp(a) + exp(b)); -inf when both are -inf.
template <class C> __device__ __forceinline__ C log_add(C a, C b) {
  const C m = a > b ? a : b;
  if (m == neg_inf(C())) return m;
  const C d = a > b ? b - a : a - b;  // <= 0
  return m + c_log1p(c_exp(d));
}

// ----------------------------------------------------------------- online logsumexp
// State (m, s) stands for m + log(s); the empty state is (-inf, 0).
template <class C> struct Lse {
  C m, s;
};

template <class C> __device__ __forceinline__ void lse_push(Lse<C>& a, C x) {
  if (x > a.m) {
    a.s = a.s * c_exp(a.m - x) + C(1);
    a.m = x;
  } else if (a.m > neg_inf(C())) {  // x = a.m = -inf (a masked logit) contributes 0
    a.s += c_exp(x - a.m);
  } else if (x != x) {  // NaN propagates (the caller reports non-finite rows)
    a.s = x;
  }
}

// Symmetric merge: merge(a, b) and merge(b, a) give the same bits.
template <class C> __device__ __forceinline__ Lse<C> lse_merge(Lse<C> a, Lse<C> b) {
  const C m = a.m > b.m ? a.m : b.m;
  if (m == neg_inf(C())) return Lse<C>{m, C(0)};
  return Lse<C>{m, a.s * c_exp(a.m - m) + b.s * c_exp(b.m - m)};
}

template <class C> __device__ __forceinline__ C lse_value(Lse<C> a) { return a.m + c_log(a.s); }

// Block-wide logsumexp: every thread passes its partial state and gets the block's total
// (identical bits in every thread). `scratch` holds 2 * BLOCK / 32 values of C. Starts with
// a barrier, so it may be called repeatedly with the same scratch.
template <class C, int BLOCK>
__device__ __forceinline__ C block_lse(Lse<C> a, C* scratch) {
  static_assert(BLOCK % kWarp == 0 && BLOCK <= 1024, "BLOCK must be a multiple of 32");
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    Lse<C> o{__shfl_xor_sync(0xffffffffu, a.m, off), __shfl_xor_sync(0xffffffffu, a.s, off)};
    a = lse_merge(a, o);
  }
  if (BLOCK == kWarp) return lse_value(a);
  constexpr int kWarps = BLOCK / kWarp;
  __syncthreads();  // previous readers of scratch are done
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) {
    scratch[warp] = a.m;
    scratch[kWarps + warp] = a.s;
  }
  __syncthreads();
  Lse<C> t{scratch[0], scratch[kWarps]};
#pragma unroll
  for (int w = 1; w < kWarps; ++w) t = lse_merge(t, Lse<C>{scratch[w], scratch[kWarps + w]});
  return lse_value(t);
}

// ----------------------------------------------------------------- row plan
// Sample of packed row r: the largest b with offsets[b] <= r (offsets strictly increasing).
__device__ __forceinline__ int find_sample(const long long* offsets, int batch, long long r) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (offsets[mid] <= r) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Lattice coordinates of packed row r.
struct RowPos {
  int b, t, u, U;  // sample, frame, label position, U_b
};

__device__ __forceinline__ RowPos row_pos(const long long* offsets, const int* target_len,
                                          int batch, long long r) {
  RowPos p;
  p.b = find_sample(offsets, batch, r);
  p.U = target_len[p.b];
  // 32-bit division (64-bit division is a slow subroutine call): a sample's lattice has
  // fewer than 2^31 points (the loader's documented limit).
  const unsigned local = static_cast<unsigned>(r - offsets[p.b]);
  p.t = static_cast<int>(local / static_cast<unsigned>(p.U + 1));
  p.u = static_cast<int>(local - static_cast<unsigned>(p.t) * static_cast<unsigned>(p.U + 1));
  return p;
}

// RowLayout: first element of row r (chunk row i = r - row0).
struct Layout {
  long long ld, sb, st, su;
  int packed;
  __device__ __forceinline__ long long start(long long i, const RowPos& p) const {
    return packed ? i * ld
                  : static_cast<long long>(p.b) * sb + static_cast<long long>(p.t) * st +
                        static_cast<long long>(p.u) * su;
  }
};

}  // namespace cutrans
