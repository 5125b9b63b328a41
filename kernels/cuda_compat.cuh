// cuda_compat.cuh -- include first in every kernel source.
//
// Under NVRTC: pulls in the 16-bit float types and defines CUTRANS_DYN_SHARED(type, name),
// the ONE way to declare dynamic shared memory (`type* name` pointing at it, 16-byte aligned).
// Under the CPU emulation (-DCUTRANS_EMULATION, cuda_emu.h force-included) everything is
// already defined and this file is empty.
// Kernels must not use INFINITY/NAN (undefined under NVRTC): use __int_as_float(0x7f800000)
// for +inf, __int_as_float(0xff800000) for -inf (see cutrans::neg_inf in common.cuh).
#ifndef CUTRANS_CUDA_COMPAT_CUH
#define CUTRANS_CUDA_COMPAT_CUH

#ifndef CUTRANS_EMULATION
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define CUTRANS_DYN_SHARED(type, name)                                      \
  extern __shared__ __align__(16) unsigned char cutrans_dyn_shared_raw_[]; \
  type* name = reinterpret_cast<type*>(cutrans_dyn_shared_raw_)
#endif

#endif  // CUTRANS_CUDA_COMPAT_CUH
