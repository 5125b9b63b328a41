"""CPU emulation of the CUDA kernels (g++ + ctypes)."""
