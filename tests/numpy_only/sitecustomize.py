"""Makes the optional frameworks unimportable: a numpy-only environment inside a full one.

Put this folder first on ``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up):

    PYTHONPATH=tests/numpy_only python -m pytest -q -ra

``import torch`` (and the others below) then raises ModuleNotFoundError and
``importlib.util.find_spec`` returns None, as if they were not installed. NumPy, pytest and
hypothesis (the ``test`` extra's test tools) stay importable.
"""
import sys

BLOCKED = ("torch", "torchaudio", "jax", "jaxlib", "ml_dtypes", "cupy", "cupyx",
           "cupy_backends", "fastrlock", "nvidia", "numba", "llvmlite", "warprnnt_numba",
           "matplotlib")

for _name in BLOCKED:
    sys.modules[_name] = None  # "import of <name> halted; None in sys.modules"
