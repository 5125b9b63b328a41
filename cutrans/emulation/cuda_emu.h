// cuda_emu.h -- run CUDA C++ kernels on the CPU (g++ >= 10, C++20, Linux x86-64/aarch64).
//
// Force-included (`-include cuda_emu.h -DCUTRANS_EMULATION`) before a .cu file by
// cutrans.emulation; kernels include "cuda_compat.cuh", which is empty under emulation.
//
// Contract (what a kernel author may rely on):
//  * keywords __global__ __device__ __host__ __forceinline__ __noinline__ __launch_bounds__(...)
//    __restrict__ __align__(n) __constant__ are macros; threadIdx/blockIdx (uint3) and
//    blockDim/gridDim (dim3) are thread-local; warpSize == 32.
//  * blocks run one after another, so there is no grid-wide synchronisation and no inter-block
//    spin lock. `__shared__` is static storage, filled with 0xff bytes before every block
//    (uninitialised float reads give NaN). Dynamic shared memory: CUTRANS_DYN_SHARED(type, name)
//    only (never `extern __shared__`), also poisoned.
//  * __syncthreads / __syncthreads_count/_and/_or wait for all non-exited threads of the block
//    and must be reached at the same source line by all of them (else: error "divergent").
//    __syncwarp and the *_sync warp intrinsics wait for all non-exited lanes of `mask`; every
//    participant must pass the same mask and call the same intrinsic. A lane that reads a
//    non-participating lane gets poison bits (NaN). A state where no thread can advance is
//    reported as "deadlock". All errors unwind the threads and come back to Python as
//    EmulationError -- the process never hangs on a barrier and never aborts.
//  * two schedulers: fibers (one OS thread, deterministic, order forward/reverse/shuffle) and
//    one OS thread per CUDA thread (for ThreadSanitizer; barriers are mutex + condvar).
//  * not emulated: flush-to-zero, fast-math intrinsics precision, memory-model subtleties
//    (warp shuffles order shared memory here), clock(), cooperative groups, texture memory.
#pragma once
#ifndef CUTRANS_CUDA_EMU_H
#define CUTRANS_CUDA_EMU_H

#ifndef CUTRANS_EMULATION
#define CUTRANS_EMULATION 1
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <mutex>
#include <pthread.h>
#include <random>
#include <setjmp.h>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>
#include <utility>
#include <vector>
#include <dlfcn.h>
#include <link.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUTRANS_EMU_ASAN 1
#endif
#if __has_include(<source_location>)
#include <source_location>
#endif

// NVRTC defines neither INFINITY nor NAN: keep the emulation equally strict.
#undef INFINITY
#undef NAN

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
// Non-template statics land in this section; template-instantiated ones are found by the
// Python side in the module's object file (g++ ignores section attributes on COMDAT data;
// see cutrans/emulation/_static_shared.py).
#define __shared__ static __attribute__((section("cutrans_shared")))
#define CUTRANS_DYN_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::cutrans_emu::g_dyn_shared)

// ------------------------------------------------------------------------------------------
// vector types
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
#define CUTRANS_EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N { T x, y; }; \
  inline N make_##N(T x, T y) { return N{x, y}; }
#define CUTRANS_EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
  inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
CUTRANS_EMU_VEC2(int, int2, 8)
CUTRANS_EMU_VEC2(unsigned int, uint2, 8)
CUTRANS_EMU_VEC2(float, float2, 8)
CUTRANS_EMU_VEC2(double, double2, 16)
CUTRANS_EMU_VEC4(int, int4, 16)
CUTRANS_EMU_VEC4(unsigned int, uint4, 16)
CUTRANS_EMU_VEC4(float, float4, 16)
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ------------------------------------------------------------------------------------------
// 16-bit floating point types (storage only; arithmetic goes through float)
namespace cutrans_emu {
inline uint16_t float_to_half_bits(float f) {  // round to nearest even, overflow -> inf
  uint32_t x = std::bit_cast<uint32_t>(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x47800000u)  // >= 65536 (all of these round to inf), inf or nan
    return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax < 0x38800000u) {  // result subnormal or zero: let the FPU round (RNE) at 2^-24
    float r = std::bit_cast<float>(ax) + 0.5f;
    return uint16_t(sign | (std::bit_cast<uint32_t>(r) - 0x3f000000u));
  }
  uint32_t odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + odd;  // rebias exponent (127 -> 15) and round half to even
  return uint16_t(sign | (ax >> 13));
}
inline float half_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    float v = float(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) | sign);
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }
}  // namespace cutrans_emu

struct __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(cutrans_emu::float_to_half_bits(f)) {}
  operator float() const { return cutrans_emu::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(cutrans_emu::float_to_bf16_bits(f)) {}
  operator float() const { return cutrans_emu::bf16_bits_to_float(__x); }
};
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }

// ------------------------------------------------------------------------------------------
// math
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>; return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>; return C(a) < C(b) ? C(b) : C(a);
}
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __uint_as_float(unsigned i) { return std::bit_cast<float>(i); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline double __longlong_as_double(long long i) { return std::bit_cast<double>(i); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }

// ------------------------------------------------------------------------------------------
// atomics (relaxed, like CUDA's): real atomics so that the threads scheduler is correct
#define CUTRANS_EMU_ATOMIC_INT(T)                                                               \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }         \
  inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }         \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }       \
  inline T atomicCAS(T* a, T cmp, T v) {                                                        \
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);         \
    return cmp;                                                                                 \
  }                                                                                             \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }         \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }           \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }         \
  inline T atomicMax(T* a, T v) {                                                               \
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                               \
    while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED,         \
                                                    __ATOMIC_RELAXED)) {}                       \
    return old;                                                                                 \
  }                                                                                             \
  inline T atomicMin(T* a, T v) {                                                               \
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                               \
    while (v < old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED,         \
                                                   __ATOMIC_RELAXED)) {}                        \
    return old;                                                                                 \
  }
CUTRANS_EMU_ATOMIC_INT(int)
CUTRANS_EMU_ATOMIC_INT(unsigned int)
CUTRANS_EMU_ATOMIC_INT(unsigned long long)
CUTRANS_EMU_ATOMIC_INT(long long)
#define CUTRANS_EMU_ATOMIC_FLOAT(T)                                                             \
  inline T atomicAdd(T* a, T v) {                                                               \
    T old;                                                                                      \
    __atomic_load(a, &old, __ATOMIC_RELAXED);                                                   \
    T nv = old + v;                                                                             \
    while (!__atomic_compare_exchange(a, &old, &nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))  \
      nv = old + v;                                                                             \
    return old;                                                                                 \
  }                                                                                             \
  inline T atomicExch(T* a, T v) {                                                              \
    T old;                                                                                      \
    __atomic_exchange(a, &v, &old, __ATOMIC_RELAXED);                                           \
    return old;                                                                                 \
  }
CUTRANS_EMU_ATOMIC_FLOAT(float)
CUTRANS_EMU_ATOMIC_FLOAT(double)
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ------------------------------------------------------------------------------------------
// the block scheduler
namespace cutrans_emu {

#if defined(__cpp_lib_source_location)
using srcloc = std::source_location;
#define CUTRANS_EMU_LOC std::source_location loc = std::source_location::current()
#define CUTRANS_EMU_SITE ::cutrans_emu::Site{loc.file_name(), unsigned(loc.line())}
#else
#define CUTRANS_EMU_LOC int loc_unused = 0
#define CUTRANS_EMU_SITE ::cutrans_emu::Site{__builtin_FILE(), unsigned(__builtin_LINE())}
#endif

struct Abort {};  // unwinds a CUDA thread after an error elsewhere
struct Site {
  const char* file = "?";
  unsigned line = 0;
  bool operator==(const Site& o) const { return line == o.line && std::strcmp(file, o.file) == 0; }
  std::string str() const {
    const char* f = std::strrchr(file, '/');
    return std::string(f ? f + 1 : file) + ":" + std::to_string(line);
  }
};
enum class St : uint8_t { RUN, BAR, WARP, EXITED };
enum class Op : uint8_t { SYNCWARP, SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL };
inline const char* op_name(Op o) {
  static constexpr const char* n[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                      "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync"};
  return n[int(o)];
}
constexpr uint64_t POISON = ~uint64_t(0);

struct TS {  // one CUDA thread
  St st = St::RUN;
  Op op = Op::SYNCWARP;
  unsigned mask = 0;
  int param = 0, width = 32, pred = 0;
  uint64_t val = 0, res = 0;
  Site site;
  bool started = false;
  jmp_buf jb;
  ucontext_t uc;
};

struct LaunchCfg {  // must match launcher.py
  uint32_t grid[3], block[3];
  uint64_t shared_mem, max_dynamic_shared, stack_bytes, seed;
  int32_t mode, order;  // mode: 0 fibers, 1 threads; order: 0 forward, 1 reverse, 2 shuffle
};

inline unsigned char* g_dyn_shared = nullptr;  // dynamic shared memory of the running block
inline std::vector<std::pair<unsigned char*, size_t>> g_static_shared;  // poisoned per block

struct Block {
  int n = 0, mode = 0;
  std::vector<TS> ts;
  int live = 0, nbar = 0, nblocked = 0;
  bool aborted = false;
  std::string err;
  std::mutex mu;
  // threads mode: a thread waits on its warp's condition variable; `notify` wakes the warps
  // that had a thread released (a barrier: all of them), or every warp once aborted -- not
  // every thread of the block at each warp collective
  std::unique_ptr<std::condition_variable[]> warp_cv;
  std::vector<char> warp_released;
  std::function<void()> body;
  jmp_buf sched_jb;
  ucontext_t sched_uc;
  uint3 bidx{};

  unsigned lanes_present(int w) const {  // lanes of warp w that exist and have not exited
    unsigned m = 0;
    for (int l = 0; l < 32 && w * 32 + l < n; ++l)
      if (ts[w * 32 + l].st != St::EXITED) m |= 1u << l;
    return m;
  }
  void fail(const std::string& msg) {
    if (!aborted) {
      aborted = true;
      err = msg + " [block (" + std::to_string(bidx.x) + "," + std::to_string(bidx.y) + "," +
            std::to_string(bidx.z) + ")]";
    }
  }
  std::string describe() const {  // who waits where, grouped
    std::vector<std::pair<std::string, int>> g;
    for (int t = 0; t < n; ++t) {
      const TS& s = ts[t];
      if (s.st != St::BAR && s.st != St::WARP) continue;
      char m[32];
      std::snprintf(m, sizeof m, "(0x%08x)", s.mask);
      std::string k = (s.st == St::BAR ? std::string("__syncthreads") : std::string(op_name(s.op)) + m) +
                      " at " + s.site.str();
      auto it = std::find_if(g.begin(), g.end(), [&](auto& p) { return p.first == k; });
      if (it == g.end()) g.push_back({k, 1}); else ++it->second;
    }
    std::string r;
    for (auto& [k, c] : g) r += "; " + std::to_string(c) + " thread(s) waiting in " + k;
    return r;
  }
  void release(int t) {
    ts[t].st = St::RUN;
    --nblocked;
    if (!warp_released.empty()) warp_released[t / 32] = 1;
  }
  void notify() {  // threads mode, `mu` held
    for (size_t w = 0; w < warp_released.size(); ++w)
      if (aborted || warp_released[w]) { warp_released[w] = 0; warp_cv[w].notify_all(); }
  }

  // Nothing can proceed: name the most specific cause.
  void deadlock() {
    for (int t = 0; t < n; ++t) {
      const TS& a = ts[t];
      if (a.st != St::WARP) continue;
      int w = t / 32;
      unsigned need = a.mask & lanes_present(w);
      for (int j = 0; j < 32; ++j) {
        const TS& b = ts[w * 32 + j];
        if ((need >> j & 1u) && b.st == St::WARP && (b.mask != a.mask || b.op != a.op)) {
          fail(std::string("warp collective mismatch in warp ") + std::to_string(w) + ": lane " +
               std::to_string(t % 32) + " " + op_name(a.op) + "(0x" + hex(a.mask) + ") at " + a.site.str() +
               ", lane " + std::to_string(j) + " " + op_name(b.op) + "(0x" + hex(b.mask) + ") at " + b.site.str());
          return;
        }
      }
    }
    fail("deadlock: no thread can proceed" + describe());
  }

  // Complete every barrier/warp collective that can complete. Returns true if something did
  // (or an error was recorded). Caller holds `mu` in threads mode. `warp` >= 0: only that
  // warp's collectives are examined -- the event (an arrival or an exit) happened there, and
  // a collective's readiness depends on its own warp's lanes only (O(32^2) per event
  // instead of O(32 n): blocks of 256 OS threads under ThreadSanitizer).
  bool resolve(int warp = -1) {
    bool any = false;
    if (nbar > 0 && nbar == live) {
      Site s0; bool first = true; std::string div;
      int count = 0;
      for (int t = 0; t < n; ++t) {
        if (ts[t].st != St::BAR) continue;
        count += ts[t].pred != 0;
        if (first) { s0 = ts[t].site; first = false; }
        else if (!(ts[t].site == s0) && div.empty())
          div = "thread " + std::to_string(t) + " at " + ts[t].site.str() + ", thread(s) before at " + s0.str();
      }
      if (!div.empty()) { fail("divergent __syncthreads: " + div); return true; }
      for (int t = 0; t < n; ++t)
        if (ts[t].st == St::BAR) { ts[t].res = uint64_t(count); release(t); }
      nbar = 0;
      any = true;
    }
    const int w_end = warp < 0 ? (n + 31) / 32 : warp + 1;
    for (int w = warp < 0 ? 0 : warp; w < w_end; ++w) {
      unsigned present = lanes_present(w);
      for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
        TS& a = ts[w * 32 + l];
        if (a.st != St::WARP) continue;
        if (!(a.mask >> l & 1u)) {
          fail(std::string(op_name(a.op)) + " at " + a.site.str() + ": calling lane " + std::to_string(l) +
               " is not in mask");
          return true;
        }
        unsigned need = a.mask & present;
        bool ready = true;
        unsigned ballot = 0;
        for (int j = 0; j < 32 && ready; ++j) {
          if (!(need >> j & 1u)) continue;
          const TS& b = ts[w * 32 + j];
          // a lane in another collective may still complete that one first: not ready (yet)
          ready = b.st == St::WARP && b.mask == a.mask && b.op == a.op;
          if (b.pred) ballot |= 1u << j;
        }
        if (!ready) continue;
        for (int j = 0; j < 32; ++j) {
          if (!(need >> j & 1u)) continue;
          TS& b = ts[w * 32 + j];
          b.res = collective_result(b, j, w, need, ballot);
          release(w * 32 + j);
        }
        any = true;
      }
    }
    return any;
  }
  static std::string hex(unsigned m) { char b[16]; std::snprintf(b, sizeof b, "%08x", m); return b; }
  uint64_t collective_result(const TS& b, int lane, int w, unsigned need, unsigned ballot) const {
    int width = b.width, base = lane & ~(width - 1), src = lane;
    switch (b.op) {
      case Op::SYNCWARP: return 0;
      case Op::BALLOT: return ballot;
      case Op::ANY: return ballot != 0;
      case Op::ALL: return ballot == need;
      case Op::SHFL_IDX: src = base + (b.param & (width - 1)); break;
      case Op::SHFL_UP: src = (lane - base) >= b.param ? lane - b.param : lane; break;
      case Op::SHFL_DOWN: src = (lane - base) + b.param < width ? lane + b.param : lane; break;
      case Op::SHFL_XOR: src = lane ^ b.param; if ((src & ~(width - 1)) != base) src = lane; break;
    }
    if (src < 0 || src > 31 || !(need >> src & 1u)) return POISON;
    return ts[w * 32 + src].val;
  }
};

inline thread_local Block* tl_block = nullptr;
inline thread_local int tl_tid = 0;

// AddressSanitizer must be told about fiber stack switches (else: false positives).
struct AsanSwitch {
  void* fake = nullptr;
  const void* bottom = nullptr;
  size_t size = 0;
};
inline AsanSwitch g_sched_asan;                  // the scheduler's (OS thread's) stack
inline std::vector<AsanSwitch> g_fiber_asan;     // one per fiber
inline void asan_start(void** fake, const void* bottom, size_t size) {
#ifdef CUTRANS_EMU_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#else
  (void)fake; (void)bottom; (void)size;
#endif
}
inline void asan_finish(void* fake, const void** bottom, size_t* size) {
#ifdef CUTRANS_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
  (void)fake; (void)bottom; (void)size;
#endif
}
inline void to_scheduler(Block& b, jmp_buf* save, bool exiting) {  // fiber -> scheduler
  asan_start(exiting ? nullptr : &g_fiber_asan[tl_tid].fake, g_sched_asan.bottom, g_sched_asan.size);
  if (!save || !_setjmp(*save)) _longjmp(b.sched_jb, 1);
  asan_finish(g_fiber_asan[tl_tid].fake, &g_sched_asan.bottom, &g_sched_asan.size);
}

inline void set_thread_index(const Block& b, int t) {
  threadIdx.x = unsigned(t) % blockDim.x;
  threadIdx.y = (unsigned(t) / blockDim.x) % blockDim.y;
  threadIdx.z = unsigned(t) / (blockDim.x * blockDim.y);
  (void)b;
}

// Wait at a barrier/collective. `fill` records the thread's arrival data.
template <class F>
inline TS& arrive(St kind, F&& fill) {
  Block* bp = tl_block;
  if (!bp) throw std::runtime_error("CUDA barrier called outside a kernel");
  Block& b = *bp;
  TS& s = b.ts[tl_tid];
  if (b.mode == 0) {
    if (b.aborted) throw Abort{};
    fill(s);
    s.st = kind;
    ++b.nblocked;
    if (kind == St::BAR) ++b.nbar;
    to_scheduler(b, &s.jb, false);
    if (b.aborted) throw Abort{};
    return s;
  }
  std::unique_lock<std::mutex> lk(b.mu);
  if (b.aborted) throw Abort{};
  fill(s);
  s.st = kind;
  ++b.nblocked;
  if (kind == St::BAR) ++b.nbar;
  if (!b.resolve(tl_tid / 32) && b.nblocked == b.live) b.deadlock();
  b.notify();
  b.warp_cv[tl_tid / 32].wait(lk, [&] { return s.st == St::RUN || b.aborted; });
  if (b.aborted) throw Abort{};
  return s;
}

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp shuffle of a type > 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}
template <class T>
inline T shfl(Op op, unsigned mask, T var, int param, int width, Site site) {
  if (width < 1 || width > 32 || (width & (width - 1)))
    throw std::runtime_error(std::string(op_name(op)) + " at " + site.str() + ": width must be a power of 2 <= 32");
  TS& s = arrive(St::WARP, [&](TS& t) {
    t.op = op; t.mask = mask; t.param = param; t.width = width; t.val = to_bits(var); t.pred = 0; t.site = site;
  });
  return from_bits<T>(s.res);
}
inline uint64_t warp_vote(Op op, unsigned mask, int pred, Site site) {
  return arrive(St::WARP, [&](TS& t) {
    t.op = op; t.mask = mask; t.param = 0; t.width = 32; t.val = 0; t.pred = pred != 0; t.site = site;
  }).res;
}
inline int block_barrier(int pred, Site site) {
  return int(arrive(St::BAR, [&](TS& t) { t.pred = pred != 0; t.site = site; }).res);
}

// ---- running a thread's body (both schedulers)
inline void thread_body(Block& b, int t) {
  try {
    b.body();
  } catch (Abort&) {
  } catch (std::exception& e) {
    std::unique_lock<std::mutex> lk(b.mu, std::defer_lock);
    if (b.mode == 1) lk.lock();
    b.fail(std::string("thread ") + std::to_string(t) + ": " + e.what());
    if (b.mode == 1) b.notify();
  } catch (...) {
    std::unique_lock<std::mutex> lk(b.mu, std::defer_lock);
    if (b.mode == 1) lk.lock();
    b.fail("unknown C++ exception in thread " + std::to_string(t));
    if (b.mode == 1) b.notify();
  }
}

// ---- fibers
inline void fiber_entry() {
  asan_finish(nullptr, &g_sched_asan.bottom, &g_sched_asan.size);
  Block& b = *tl_block;
  int t = tl_tid;
  thread_body(b, t);
  b.ts[t].st = St::EXITED;
  --b.live;
  to_scheduler(b, nullptr, true);
}
struct Stacks {
  std::vector<char*> base;
  size_t size = 0, guard = 0;
  void ensure(int n, size_t bytes) {
    size_t page = 4096;
    bytes = (bytes + page - 1) / page * page;
    if (bytes != size) release();
    size = bytes; guard = page;
    while (int(base.size()) < n) {
      void* p = mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::runtime_error("cannot allocate fiber stacks");
      mprotect(p, guard, PROT_NONE);  // overflow -> SIGSEGV instead of silent corruption
      base.push_back(static_cast<char*>(p));
    }
  }
  void release() { for (char* p : base) munmap(p, size + guard); base.clear(); }
  ~Stacks() { release(); }
};

inline void run_block_fibers(Block& b, const LaunchCfg& c, std::mt19937_64& rng, Stacks& stacks) {
  stacks.ensure(b.n, c.stack_bytes);
  g_fiber_asan.assign(b.n, AsanSwitch{});
  std::vector<int> order(b.n);
  for (int i = 0; i < b.n; ++i) order[i] = c.order == 1 ? b.n - 1 - i : i;
  auto enter = [&](int t) {
    tl_tid = t;
    set_thread_index(b, t);
    TS& s = b.ts[t];
    if (!_setjmp(b.sched_jb)) {
      asan_start(&g_sched_asan.fake, stacks.base[t] + stacks.guard, stacks.size);
      if (!s.started) {
        s.started = true;
        getcontext(&s.uc);
        s.uc.uc_stack.ss_sp = stacks.base[t] + stacks.guard;
        s.uc.uc_stack.ss_size = stacks.size;
        s.uc.uc_link = nullptr;
        makecontext(&s.uc, fiber_entry, 0);
        swapcontext(&b.sched_uc, &s.uc);
      } else {
        _longjmp(s.jb, 1);
      }
    }
    asan_finish(g_sched_asan.fake, nullptr, nullptr);
  };
  while (b.live > 0) {
    if (c.order == 2) std::shuffle(order.begin(), order.end(), rng);
    for (int t : order)
      if (b.ts[t].st == St::RUN) enter(t);
    if (b.aborted || b.live == 0) break;
    if (b.nblocked == b.live && !b.resolve()) b.deadlock();
    if (b.aborted) break;
  }
  if (b.aborted)  // unwind every started thread (Abort is thrown at its barrier)
    for (int t = 0; t < b.n; ++t) {
      TS& s = b.ts[t];
      if (s.st == St::EXITED) continue;
      if (s.started) enter(t);
      else { s.st = St::EXITED; --b.live; }
    }
}

// ---- OS threads
struct ThreadArg { Block* b; int t; const LaunchCfg* c; };
inline void* thread_main(void* p) {
  ThreadArg* a = static_cast<ThreadArg*>(p);
  Block& b = *a->b;
  tl_block = &b; tl_tid = a->t;
  gridDim = dim3(a->c->grid[0], a->c->grid[1], a->c->grid[2]);
  blockDim = dim3(a->c->block[0], a->c->block[1], a->c->block[2]);
  blockIdx = b.bidx;
  set_thread_index(b, a->t);
  thread_body(b, a->t);
  std::lock_guard<std::mutex> lk(b.mu);
  b.ts[a->t].st = St::EXITED;
  --b.live;
  if (!b.aborted && !b.resolve(a->t / 32) && b.live > 0 && b.nblocked == b.live)
    b.deadlock();
  b.notify();
  return nullptr;
}
inline void run_block_threads(Block& b, const LaunchCfg& c) {
  const int warps = (b.n + 31) / 32;
  b.warp_cv.reset(new std::condition_variable[warps]);
  b.warp_released.assign(warps, 0);
  std::vector<pthread_t> th(b.n);
  std::vector<ThreadArg> args(b.n);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, std::max<size_t>(c.stack_bytes, 256 * 1024));
  int started = 0;
  for (int t = 0; t < b.n; ++t) {
    args[t] = ThreadArg{&b, t, &c};
    if (pthread_create(&th[t], &attr, thread_main, &args[t]) != 0) {
      std::lock_guard<std::mutex> lk(b.mu);
      b.fail("pthread_create failed for thread " + std::to_string(t));
      for (int u = t; u < b.n; ++u) { b.ts[u].st = St::EXITED; --b.live; }
      b.notify();
      break;
    }
    ++started;
  }
  pthread_attr_destroy(&attr);
  for (int t = 0; t < started; ++t) pthread_join(th[t], nullptr);
}

// ---- static __shared__ storage: registered once per module, poisoned before every block
struct ModuleSegments {
  uintptr_t self = 0, base = 0;
  bool found = false;
  std::vector<std::pair<uintptr_t, uintptr_t>> writable, excluded;  // [lo, hi)
};
inline int collect_segments(dl_phdr_info* info, size_t, void* data) {
  auto* m = static_cast<ModuleSegments*>(data);
  bool mine = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& p = info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + p.p_vaddr;
    mine |= p.p_type == PT_LOAD && m->self >= lo && m->self - lo < p.p_memsz;
  }
  if (!mine) return 0;
  m->found = true;
  m->base = info->dlpi_addr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& p = info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + p.p_vaddr;
    if (p.p_type == PT_LOAD && (p.p_flags & PF_W)) m->writable.push_back({lo, lo + p.p_memsz});
    if (p.p_type == PT_GNU_RELRO || p.p_type == PT_TLS) m->excluded.push_back({lo, lo + p.p_memsz});
  }
  return 1;
}
// Registers the ranges (offsets from the load base of the module that contains `self`) for
// poison_shared. Every range must lie inside one writable PT_LOAD segment and outside
// PT_GNU_RELRO (read-only after relocation) and the PT_TLS image. Returns -1 when all do; else
// the index of the first bad range (-2: module not found), and the registration is unchanged.
inline int set_static_shared(const void* self, const unsigned long long* off, const unsigned long long* sz,
                             int n) {
  ModuleSegments m;
  m.self = reinterpret_cast<uintptr_t>(self);
  dl_iterate_phdr(collect_segments, &m);
  if (!m.found) return -2;
  for (int i = 0; i < n; ++i) {
    uintptr_t lo = m.base + off[i], hi = lo + sz[i];
    bool ok = off[i] < UINTPTR_MAX - m.base && hi >= lo;
    bool in = false, hit = false;
    for (auto& [a, b] : m.writable) in |= lo >= a && hi <= b;
    for (auto& [a, b] : m.excluded) hit |= lo < b && a < hi;
    if (!ok || !in || hit) return i;
  }
  g_static_shared.clear();
  for (int i = 0; i < n; ++i)
    g_static_shared.push_back({reinterpret_cast<unsigned char*>(m.base + off[i]), size_t(sz[i])});
  return -1;
}

// ---- the grid
inline void poison_shared(size_t dyn_bytes) {
  for (auto& [p, n] : g_static_shared) std::memset(p, 0xff, n);
  if (dyn_bytes) std::memset(g_dyn_shared, 0xff, dyn_bytes);
}
inline void check_cfg(const LaunchCfg& c) {
  auto e = [](const std::string& m) { throw std::runtime_error("invalid launch configuration: " + m); };
  for (int i = 0; i < 3; ++i)
    if (c.grid[i] == 0 || c.block[i] == 0) e("zero grid or block dimension");
  if (c.block[0] > 1024 || c.block[1] > 1024 || c.block[2] > 64) e("block dimension over (1024, 1024, 64)");
  if (uint64_t(c.block[0]) * c.block[1] * c.block[2] > 1024)
    e("block of " + std::to_string(uint64_t(c.block[0]) * c.block[1] * c.block[2]) + " threads > 1024");
  if (c.grid[0] > 2147483647u || c.grid[1] > 65535 || c.grid[2] > 65535) e("grid dimension over (2^31-1, 65535, 65535)");
  if (c.shared_mem > c.max_dynamic_shared)
    e("shared_mem=" + std::to_string(c.shared_mem) + " bytes > max_dynamic_shared_size_bytes=" +
      std::to_string(c.max_dynamic_shared));
  if (c.mode != 0 && c.mode != 1) e("mode");
}

inline void run_grid(const LaunchCfg& c, std::function<void()> body) {
  check_cfg(c);
  int n = int(c.block[0] * c.block[1] * c.block[2]);
  std::vector<unsigned char> dyn(c.shared_mem + 16 + 1);
  g_dyn_shared = dyn.data() + (16 - reinterpret_cast<uintptr_t>(dyn.data()) % 16) % 16;
  gridDim = dim3(c.grid[0], c.grid[1], c.grid[2]);
  blockDim = dim3(c.block[0], c.block[1], c.block[2]);
  std::mt19937_64 rng(c.seed);
  Stacks stacks;
  for (uint32_t z = 0; z < c.grid[2]; ++z)
    for (uint32_t y = 0; y < c.grid[1]; ++y)
      for (uint32_t x = 0; x < c.grid[0]; ++x) {
        Block b;
        b.n = n; b.mode = c.mode; b.ts.resize(n); b.live = n; b.body = body;
        b.bidx = uint3{x, y, z};
        blockIdx = b.bidx;
        poison_shared(c.shared_mem);
        tl_block = &b;
        if (c.mode == 0) run_block_fibers(b, c, rng, stacks);
        else run_block_threads(b, c);
        tl_block = nullptr;
        if (b.aborted) throw std::runtime_error(b.err);
      }
}

// ---- marshalling (cudaLaunchKernel style: args[i] points at the i-th argument value)
template <class T> constexpr char kind_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, bool>) return 'b';
  else if constexpr (std::is_same_v<U, __half> || std::is_same_v<U, __nv_bfloat16>) return 'h';
  else if constexpr (std::is_floating_point_v<U>) return 'f';
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>) return 'i';
  else if constexpr (std::is_integral_v<U>) return 'u';
  else if constexpr (std::is_void_v<U>) return 'v';
  else if constexpr (std::is_pointer_v<U>) return 'p';
  else return 'o';
}
struct ParamInfo {  // must match launcher.py
  uint64_t size, pointee_size;
  char kind, is_pointer, pointee_const, pointee_kind;
  uint32_t pad;
};
template <class T> ParamInfo param_info() {
  ParamInfo p{};
  p.size = sizeof(T);
  p.kind = kind_of<T>();
  if constexpr (std::is_pointer_v<T>) {
    using E = std::remove_pointer_t<T>;
    p.is_pointer = 1;
    p.pointee_const = std::is_const_v<E>;
    p.pointee_kind = kind_of<E>();
    if constexpr (!std::is_void_v<E>) p.pointee_size = sizeof(E);
  }
  return p;
}
template <class... A>
int signature(void (*)(A...), ParamInfo* out, int max) {
  ParamInfo p[] = {param_info<std::remove_cv_t<A>>()..., ParamInfo{}};
  for (int i = 0; i < int(sizeof...(A)) && i < max; ++i) out[i] = p[i];
  return int(sizeof...(A));
}
template <class... A, size_t... I>
void invoke(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <class... A>
int launch(void (*f)(A...), const LaunchCfg* c, void** args, char* err, size_t errlen) noexcept {
  try {
    run_grid(*c, [f, args] { invoke(f, args, std::index_sequence_for<A...>{}); });
    return 0;
  } catch (std::exception& e) {
    std::snprintf(err, errlen, "%s", e.what());
  } catch (...) {
    std::snprintf(err, errlen, "unknown C++ exception");
  }
  return 1;
}

}  // namespace cutrans_emu

// ------------------------------------------------------------------------------------------
// CUDA intrinsics
#define CUTRANS_EMU_FULL 0xffffffffu
inline void __syncthreads(CUTRANS_EMU_LOC) { cutrans_emu::block_barrier(0, CUTRANS_EMU_SITE); }
inline int __syncthreads_count(int p, CUTRANS_EMU_LOC) { return cutrans_emu::block_barrier(p, CUTRANS_EMU_SITE); }
inline int __syncthreads_or(int p, CUTRANS_EMU_LOC) { return cutrans_emu::block_barrier(p, CUTRANS_EMU_SITE) != 0; }
inline int __syncthreads_and(int p, CUTRANS_EMU_LOC) {
  return cutrans_emu::block_barrier(!p, CUTRANS_EMU_SITE) == 0;
}
inline void __syncwarp(unsigned mask = CUTRANS_EMU_FULL, CUTRANS_EMU_LOC) {
  cutrans_emu::warp_vote(cutrans_emu::Op::SYNCWARP, mask, 0, CUTRANS_EMU_SITE);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, CUTRANS_EMU_LOC) {
  return cutrans_emu::shfl(cutrans_emu::Op::SHFL_IDX, mask, v, src, width, CUTRANS_EMU_SITE);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32, CUTRANS_EMU_LOC) {
  return cutrans_emu::shfl(cutrans_emu::Op::SHFL_UP, mask, v, int(d), width, CUTRANS_EMU_SITE);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32, CUTRANS_EMU_LOC) {
  return cutrans_emu::shfl(cutrans_emu::Op::SHFL_DOWN, mask, v, int(d), width, CUTRANS_EMU_SITE);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32, CUTRANS_EMU_LOC) {
  return cutrans_emu::shfl(cutrans_emu::Op::SHFL_XOR, mask, v, m, width, CUTRANS_EMU_SITE);
}
inline unsigned __ballot_sync(unsigned mask, int p, CUTRANS_EMU_LOC) {
  return unsigned(cutrans_emu::warp_vote(cutrans_emu::Op::BALLOT, mask, p, CUTRANS_EMU_SITE));
}
inline int __any_sync(unsigned mask, int p, CUTRANS_EMU_LOC) {
  return int(cutrans_emu::warp_vote(cutrans_emu::Op::ANY, mask, p, CUTRANS_EMU_SITE));
}
inline int __all_sync(unsigned mask, int p, CUTRANS_EMU_LOC) {
  return int(cutrans_emu::warp_vote(cutrans_emu::Op::ALL, mask, p, CUTRANS_EMU_SITE));
}
inline unsigned __activemask() {
  cutrans_emu::Block* b = cutrans_emu::tl_block;
  return b ? b->lanes_present(cutrans_emu::tl_tid / 32) : 0u;
}
[[noreturn]] inline void __trap() { throw std::runtime_error("__trap() called"); }

#endif  // CUTRANS_CUDA_EMU_H
