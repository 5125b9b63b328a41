"""Skip marks for optional packages, per test (never per module: tests/test_numpy_only.py).

``needs("torch")`` skips one test when torch is not importable; ``dtype_params(...)``
gives pytest parameters of storage dtypes whose ``"bfloat16"`` case skips without
ml_dtypes (NumPy's bfloat16 comes from it).
"""
from __future__ import annotations

import importlib.util

import pytest


def installed(name: str) -> bool:
    """Whether ``import name`` would find the package (False when it is blocked)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def needs(*names: str):
    """A skipif mark for a test that needs every package of ``names``."""
    missing = [n for n in names if not installed(n)]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


def dtype_params(*names: str):
    """pytest parameters of storage dtypes; bfloat16 skips (that case only) without
    ml_dtypes."""
    return [pytest.param(n, marks=needs("ml_dtypes")) if n == "bfloat16" else n
            for n in names]
