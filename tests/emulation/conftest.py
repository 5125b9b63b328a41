"""Fixtures of the emulation / NVRTC tests."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # emu_support, whatever the import mode

from emu_support import module  # noqa: E402


@pytest.fixture
def emu():
    """emu(file, mode='fiber', order='forward', seed=0) -> EmulatedModule (memoised per session)."""
    return module
