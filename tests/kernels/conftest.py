"""Fixtures of the kernel tests: the emulated backend and an error-statistics collector.

``CUTRANS_ERROR_REPORT=path.json`` writes the max abs/rel error of every op and dtype
(emulated vs NumPy) seen in the session to that file.
"""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # kcases, kops


@pytest.fixture(scope="session")
def emu():
    from cutrans.backends.kernel_backend import emulated_backend
    return emulated_backend()


_STATS: dict = {}


@pytest.fixture(scope="session")
def err_stats():
    return _STATS


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("CUTRANS_ERROR_REPORT")
    if path and _STATS:
        with open(path, "w") as f:
            json.dump({k: {"max_abs": v[0], "max_rel": v[1]} for k, v in sorted(_STATS.items())},
                      f, indent=1)
