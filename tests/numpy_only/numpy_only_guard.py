"""pytest plugin of the numpy-only guard (tests/test_numpy_only.py), ``-p numpy_only_guard``.

Per test module it records: items collected, items skipped by their skip/skipif marks,
whether collection skipped or failed the module (a module-level ``importorskip``), and, if
the tests run, their outcomes.
Writes JSON to ``$CUTRANS_NUMPY_ONLY_REPORT`` at the end of the session.
"""
import importlib.util
import json
import os

import pytest

_MODULES: dict = {}


def _entry(path):
    return _MODULES.setdefault(path, {"items": 0, "mark_skipped": 0, "collect": "ok",
                                      "reason": "", "passed": 0, "failed": [],
                                      "skipped": []})


def _module_path(nodeid):
    return nodeid.split("::", 1)[0]


def pytest_collectreport(report):
    path = _module_path(report.nodeid)
    if not path.endswith(".py") or "::" in report.nodeid:
        return
    e = _entry(path)
    if report.skipped:
        e["collect"] = "skipped"
        e["reason"] = str(report.longrepr[-1] if isinstance(report.longrepr, tuple)
                          else report.longrepr)
    elif report.failed:
        e["collect"] = "failed"
        e["reason"] = str(report.longrepr)[-2000:]


def _skipped_by_marks(item):
    try:
        from _pytest.skipping import evaluate_skip_marks
        return evaluate_skip_marks(item) is not None
    except ImportError:  # pragma: no cover - older/newer pytest: bool conditions only
        for mark in item.iter_markers():
            if mark.name == "skip" or (mark.name == "skipif" and all(
                    isinstance(c, bool) and c for c in mark.args)):
                return True
        return False


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    for item in items:
        e = _entry(_module_path(item.nodeid))
        e["items"] += 1
        e["mark_skipped"] += bool(_skipped_by_marks(item))


def pytest_runtest_logreport(report):
    e = _entry(_module_path(report.nodeid))
    if report.failed:
        e["failed"].append(f"{report.nodeid} ({report.when}): "
                           f"{str(report.longrepr).splitlines()[-1] if report.longrepr else ''}")
    elif report.when == "call" and report.passed:
        e["passed"] += 1
    elif report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else ""
        e["skipped"].append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("CUTRANS_NUMPY_ONLY_REPORT")
    if path:
        blocked = {m: importlib.util.find_spec(m) is None for m in ("torch", "jax", "cupy",
                                                                    "ml_dtypes")}
        with open(path, "w") as f:
            json.dump({"modules": _MODULES, "blocked": blocked, "exitstatus": int(exitstatus)},
                      f, indent=1)
