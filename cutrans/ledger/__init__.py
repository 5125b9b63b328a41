"""Performance ledger: modelled H100 time and memory of a call, without a GPU.

From the real launch sequence of a call (the real orchestration driven on a recording
backend: ``record``, ``dry_run``), the bytes each kernel must move and the GEMM FLOPs are
turned into a modelled H100 time (``model``: bandwidth and matmul rates measured in
GPU-FINDINGS.md, two constants fitted to its profile). ``replay`` holds the validation
gate: a hand-written replay of the profiled commit (5684109) must reproduce its profile
within 2x. ``report`` is ``python -m cutrans ledger``.

Every figure is MODELLED. The ledger never replaces a measurement.
"""
from .dryrun import DryRun, dry_run, get_shape
from .model import cost, gemm_roof
from .record import Launch, RecordingBackend

__all__ = ["DryRun", "Launch", "RecordingBackend", "cost", "dry_run", "gemm_roof", "get_shape"]
