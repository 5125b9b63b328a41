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

// ----------------------------------------------------------------- tiled logsumexp
// A thread's running logsumexp over tiles of values (a 16-byte word's elements): state
// (m, s) stands for m + log(s), with m the largest value so far and s the sum of
// exp(x - ref(m)), ref(m) = m, or 0 while m = -inf; the empty state is (-inf, 0). A tile
// takes its maximum first, then one exp per value, all independent (no exp or branch chains
// one value to the next), plus one exp to rescale s when the maximum grows. The maximum skips
// NaN, so m is never NaN; a NaN value makes s NaN for good (the total is NaN and the caller
// reports the row). +inf gives m = +inf and a total of +inf; only -inf values give -inf.
template <class C> struct Lse {
  C m, s;
};

template <class C> __device__ __forceinline__ C lse_ref(C m) { return m == neg_inf(C()) ? C(0) : m; }

// exp(x - ref), 1 for x = ref (so +inf - +inf is not NaN).
template <class C> __device__ __forceinline__ C exp_from(C x, C ref) {
  return c_exp(x == ref ? C(0) : x - ref);
}

template <class C, int K>
__device__ __forceinline__ void lse_push_tile(Lse<C>& a, const C (&x)[K]) {
  C m = a.m;
#pragma unroll
  for (int j = 0; j < K; ++j) m = x[j] > m ? x[j] : m;
  const C ref = lse_ref(m);
  C s = m == a.m ? a.s : a.s * exp_from(a.m, ref);
#pragma unroll
  for (int j = 0; j < K; ++j) s += exp_from(x[j], ref);
  a.m = m;
  a.s = s;
}

// Block-wide logsumexp of the threads' states (BLOCK = 32: a warp): the maximum first, then
// the sum of the rescaled s; xor shuffles and the scratch read in one order give every thread
// identical bits. `scratch` holds 2 * BLOCK / 32 values of C. Starts with a barrier, so it may
// be called repeatedly with the same scratch.
template <class C, int BLOCK>
__device__ __forceinline__ C block_lse(Lse<C> a, C* scratch) {
  static_assert(BLOCK % kWarp == 0 && BLOCK <= 1024, "BLOCK must be a multiple of 32");
  constexpr int kWarps = BLOCK / kWarp;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  C m = a.m;
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const C o = __shfl_xor_sync(0xffffffffu, m, off);
    m = o > m ? o : m;
  }
  if (BLOCK > kWarp) {
    __syncthreads();  // previous readers of scratch are done
    if (lane == 0) scratch[warp] = m;
    __syncthreads();
    m = scratch[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) m = scratch[w] > m ? scratch[w] : m;
  }
  C s = a.m == m ? a.s : a.s * exp_from(a.m, lse_ref(m));
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (BLOCK > kWarp) {
    if (lane == 0) scratch[kWarps + warp] = s;
    __syncthreads();
    s = scratch[kWarps];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) s += scratch[kWarps + w];
  }
  return m + c_log(s);
}

// ----------------------------------------------------------------- 16-byte vectors
// Row kernels read and write rows of V elements in 16-byte words when the row starts on a
// 16-byte boundary (the fused op's workspaces are laid out so that every row does).
// Vec<T>::N elements of T per word; unpacked to / packed from the compute type.
template <class T> struct Vec { static constexpr int N = 16 / sizeof(T); };

template <class T> __device__ __forceinline__ bool is_aligned16(const T* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

__device__ __forceinline__ void unpack16(uint4 w, float (&x)[4]) {
  x[0] = __uint_as_float(w.x); x[1] = __uint_as_float(w.y);
  x[2] = __uint_as_float(w.z); x[3] = __uint_as_float(w.w);
}
__device__ __forceinline__ double bits_to_double(unsigned lo, unsigned hi) {
  return __longlong_as_double(
      static_cast<long long>((static_cast<unsigned long long>(hi) << 32) | lo));
}
__device__ __forceinline__ void unpack16(uint4 w, double (&x)[2]) {
  x[0] = bits_to_double(w.x, w.y);
  x[1] = bits_to_double(w.z, w.w);
}
template <class H> __device__ __forceinline__ float half_bits_to_compute(unsigned bits);
template <> __device__ __forceinline__ float half_bits_to_compute<__half>(unsigned bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}
template <> __device__ __forceinline__ float half_bits_to_compute<__nv_bfloat16>(unsigned bits) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(bits)));
}
template <class H> __device__ __forceinline__ void unpack16_half(uint4 w, float (&x)[8]) {
  const unsigned words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[2 * i] = half_bits_to_compute<H>(words[i] & 0xffffu);
    x[2 * i + 1] = half_bits_to_compute<H>(words[i] >> 16);
  }
}
// a 16-byte word of T (loaded as a uint4) unpacked to the compute type
template <class T, int N = Vec<T>::N>
__device__ __forceinline__ void unpack16_as(uint4 w, typename Compute<T>::type (&x)[N]);
template <> __device__ __forceinline__ void unpack16_as<float>(uint4 w, float (&x)[4]) {
  unpack16(w, x);
}
template <> __device__ __forceinline__ void unpack16_as<double>(uint4 w, double (&x)[2]) {
  unpack16(w, x);
}
template <> __device__ __forceinline__ void unpack16_as<__half>(uint4 w, float (&x)[8]) {
  unpack16_half<__half>(w, x);
}
template <> __device__ __forceinline__ void unpack16_as<__nv_bfloat16>(uint4 w, float (&x)[8]) {
  unpack16_half<__nv_bfloat16>(w, x);
}
template <class T>
__device__ __forceinline__ void load16(const T* p, typename Compute<T>::type (&x)[Vec<T>::N]) {
  unpack16_as<T>(*reinterpret_cast<const uint4*>(p), x);
}

__device__ __forceinline__ unsigned half_bits(__half h) { return __half_as_ushort(h); }
__device__ __forceinline__ unsigned half_bits(__nv_bfloat16 h) { return __bfloat16_as_ushort(h); }

template <class T, int N = Vec<T>::N>
__device__ __forceinline__ void store16(T* p, const typename Compute<T>::type (&x)[N]);
template <> __device__ __forceinline__ void store16<float>(float* p, const float (&x)[4]) {
  *reinterpret_cast<uint4*>(p) = make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]),
                                            __float_as_uint(x[2]), __float_as_uint(x[3]));
}
template <> __device__ __forceinline__ void store16<double>(double* p, const double (&x)[2]) {
  const unsigned long long a = static_cast<unsigned long long>(__double_as_longlong(x[0]));
  const unsigned long long b = static_cast<unsigned long long>(__double_as_longlong(x[1]));
  *reinterpret_cast<uint4*>(p) =
      make_uint4(static_cast<unsigned>(a), static_cast<unsigned>(a >> 32),
                 static_cast<unsigned>(b), static_cast<unsigned>(b >> 32));
}
template <class H> __device__ __forceinline__ void store16_half(H* p, const float (&x)[8]) {
  unsigned w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = half_bits(from_compute<H>(x[2 * i])) | (half_bits(from_compute<H>(x[2 * i + 1])) << 16);
  *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}
template <> __device__ __forceinline__ void store16<__half>(__half* p, const float (&x)[8]) {
  store16_half(p, x);
}
template <> __device__ __forceinline__ void store16<__nv_bfloat16>(__nv_bfloat16* p,
                                                                  const float (&x)[8]) {
  store16_half(p, x);
}

// ----------------------------------------------------------------- row plan
// The largest b in [0, batch) with offsets[b] <= r (offsets non-decreasing, offsets[0] <= r):
// the sample of packed row r (row offsets), of frame r (frame offsets: cumsum of T_b), or of
// label slot r (label offsets: cumsum of U_b + 1).
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

// ----------------------------------------------------------------- row groups
constexpr int kRowBlock = 256;  // threads per block of the kernels working row by row

// Row kernels run TPR threads per row (32: a warp per row, kRowBlock / 32 rows per block;
// kRowBlock: a block per row). A thread's rows: i = first, first + step, ... (< n_rows).
// With TPR = kRowBlock the block is one group (its barriers stay uniform); with TPR = 32
// a warp works alone (warp shuffles, no block barrier).
template <int TPR>
struct RowLoop {
  static constexpr int kRows = kRowBlock / TPR;  // rows per block
  int lane;
  long long first, step;
  __device__ __forceinline__ RowLoop()
      : lane(static_cast<int>(threadIdx.x) % TPR),
        first(static_cast<long long>(blockIdx.x) * kRows + threadIdx.x / TPR),
        step(static_cast<long long>(gridDim.x) * kRows) {}
};

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
