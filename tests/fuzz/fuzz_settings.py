"""Profiles of the property-based tests, picked by ``CUTRANS_FUZZ``.

* ``ci`` (default): the per-test example counts of the test modules (>= 1,000 cases in all),
  fixed seed ``FUZZ_SEED``: a failure reproduces with the same command.
* ``long``: 10x the examples and a random seed unless ``CUTRANS_FUZZ_SEED`` is set, for local
  runs:  ``CUTRANS_FUZZ=long python -m pytest tests/fuzz``
* ``smoke``: a few examples per test (the numpy-only collection guard uses it).

Every failure prints the profile and the seed (tests/fuzz/conftest.py) next to hypothesis'
falsifying example. No example database (runs do not depend on local state); no deadline
(the emulated kernels run CUDA threads as fibers, timing varies). Needs no hypothesis to
import: without it the fuzz modules skip themselves (hypothesis is in the ``test`` extra).
"""
import os
import random

PROFILE = os.environ.get("CUTRANS_FUZZ", "ci")
if PROFILE not in ("ci", "long", "smoke"):
    raise ValueError(f"CUTRANS_FUZZ: expected ci, long or smoke, got {PROFILE!r}")
_seed = os.environ.get("CUTRANS_FUZZ_SEED")
FUZZ_SEED = int(_seed) if _seed else (20261125 if PROFILE != "long"
                                      else random.SystemRandom().randrange(2**32))
SCALE = {"ci": 1.0, "long": 10.0, "smoke": 0.02}[PROFILE]

try:
    from hypothesis import HealthCheck, settings
except ImportError:
    settings = None

if settings is not None:
    for _name in ("ci", "long", "smoke"):
        settings.register_profile(
            f"cutrans-{_name}", deadline=None, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much])
    settings.load_profile(f"cutrans-{PROFILE}")


def examples(n: int) -> int:
    """The example count of a test: ``n`` scaled by the profile (at least 2)."""
    return max(2, int(n * SCALE))


def reproduce_line(nodeid: str) -> str:
    return (f"profile {PROFILE}, seed {FUZZ_SEED}; reproduce: CUTRANS_FUZZ={PROFILE} "
            f"CUTRANS_FUZZ_SEED={FUZZ_SEED} python -m pytest '{nodeid}'")
