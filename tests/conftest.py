import os
import sys

# JAX takes 75% of a GPU's memory at its first use by default; test processes that share
# one GPU (pytest-xdist workers, CuPy inside the callbacks) then run out of memory. Set
# before any test imports JAX; no effect on a machine without a GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# make tests/oracles.py importable as ``oracles`` from every test folder
sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["emu_health"]  # emulated launches crash-isolated behind a child health check
