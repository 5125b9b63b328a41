"""Hypothesis profiles of the property-based tests (``CUTRANS_FUZZ=ci|long|smoke``, see
fuzz_cases.py) and the profile/seed line printed with every failure."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fuzz_settings  # noqa: E402  (registers and loads the hypothesis profile)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("cutrans fuzz", fuzz_settings.reproduce_line(item.nodeid)))
