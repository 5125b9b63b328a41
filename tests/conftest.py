import os
import sys

# make tests/oracles.py importable as ``oracles`` from every test folder
sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["emu_health"]  # emulated launches crash-isolated behind a child health check
