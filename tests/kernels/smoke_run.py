"""Run every kernel once on a tiny case under the CPU emulation; exits 0 if results match NumPy.

``python smoke_run.py none|address|thread``. ``none``: the plain emulation (fibers), the
session's crash-isolation health check (tests/emu_health.py). ``address``/``thread``: under a
sanitizer, with the environment of cutrans.emulation.sanitizer_env (test_kernel_sanitizers.py);
``thread`` uses one OS thread per CUDA thread, so ThreadSanitizer sees shared-memory races of
the .cu code.
"""
import copy
import sys

import numpy as np

import cutrans
from cutrans._fused import workspace_bytes
from cutrans.backends import NumpyBackend
from cutrans.backends.kernel_backend import emulated_backend


class _LatticeSpy:
    """A kernel provider that forwards to ``inner`` and records (kernel, threads) launched."""

    def __init__(self, inner):
        self.inner, self.launches = inner, []

    def launch(self, name, types, block, grid, *args, **kwargs):
        self.launches.append((name, block))
        return self.inner.launch(name, types, block, grid, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def lattice_only(be):
    """``be`` with the NumPy backend's row ops: only the lattice runs as a kernel."""
    hybrid = copy.copy(be)
    hybrid.provider = _LatticeSpy(be.provider)
    ref = NumpyBackend()
    hybrid.row_stats, hybrid.row_grad = ref.row_stats, ref.row_grad
    return hybrid


def main(sanitizer: str | None) -> int:
    mode = "thread" if sanitizer == "thread" else "fiber"
    be = emulated_backend(mode, "forward", sanitizer)
    rng = np.random.default_rng(0)
    for V in (5, 9000):  # a warp per row, a block per row (cross-warp reductions)
        z = rng.standard_normal((2, 3, 3, V)).astype(np.float32)
        args = (z, np.array([[1, 2], [3, 1]], np.int32), np.array([3, 2], np.int32),
                np.array([2, 1], np.int32))
        ref = cutrans.rnnt_loss(*args, return_grad=True, backend="numpy", fastemit_lambda=0.1)
        got = cutrans.rnnt_loss(*args, return_grad=True, backend=be, fastemit_lambda=0.1)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-6)
    # a lattice whose diagonals need 128 threads (cross-warp barriers in the wavefront); its
    # 4,900 rows go through the NumPy row ops (the row kernels ran above: 613 blocks of 256
    # OS threads each would take minutes under ThreadSanitizer), the lattice emulated
    T, U, V = 70, 69, 4
    args = (rng.standard_normal((1, T, U + 1, V)), rng.integers(1, V, size=(1, U)).astype(np.int32),
            np.array([T], np.int32), np.array([U], np.int32))
    lat = lattice_only(be)
    ref = cutrans.rnnt_loss(*args, return_grad=True, backend="numpy")
    got = cutrans.rnnt_loss(*args, return_grad=True, backend=lat)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-9, atol=1e-12)
    assert lat.provider.launches == [("lattice", 128), ("lattice_grad", 256)], \
        lat.provider.launches
    # the general row kernels (several blanks; duration logits: two block reductions per
    # row) with a warp and with a block per row, and the arc-table lattice (TDT with omega
    # runs both lattices; __syncthreads between diagonals, no warp-synchronous code). Small
    # row counts: under ThreadSanitizer every CUDA thread is an OS thread.
    multiblank = dict(variant="multiblank", blank=-1, big_blank_durations=(2, 3), sigma=0.05)
    tdt = dict(variant="tdt", durations=(0, 1, 2), sigma=0.05, omega=0.3)
    for (T, U, V), spec in (((3, 2, 9000), multiblank), ((2, 1, 9000), tdt),
                            ((12, 11, 5), tdt)):
        n = V + len(spec.get("durations", ()))
        args = (rng.standard_normal((1, T, U + 1, n)),
                rng.integers(1, 4, size=(1, U)).astype(np.int32), np.array([T], np.int32),
                np.array([U], np.int32))
        ref = cutrans.rnnt_loss(*args, return_grad=True, backend="numpy", clamp=0.5, **spec)
        got = cutrans.rnnt_loss(*args, return_grad=True, backend=be, clamp=0.5, **spec)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-9, atol=1e-12)
    H, V = 40, 6
    fused = (rng.standard_normal((2, 3, H)), rng.standard_normal((2, 3, H)),
             rng.standard_normal((V, H)), rng.standard_normal(V),
             np.array([[1, 2], [3, 1]], np.int32), np.array([3, 2], np.int32),
             np.array([2, 1], np.int32))
    budget = workspace_bytes(*fused[:3], rows_per_chunk=2)  # several chunks
    ref = cutrans.transducer_loss(*fused, backend="numpy", max_workspace_bytes=budget)
    got = cutrans.transducer_loss(*fused, backend=be, max_workspace_bytes=budget)
    for g, r in zip(got.grads, ref.grads):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    print("smoke run OK", sanitizer)
    return 0


if __name__ == "__main__":
    sys.exit(main(None if sys.argv[1] == "none" else sys.argv[1]))
