"""Issue 9 item 4, modelled: memory at the headline (B=1024, T=1000, U=200, V=1024, H=512)
from a dry run of the real one-pass orchestration (lazily allocated inputs)."""
import json
import subprocess
import sys

import pytest

from optional_deps import dtype_params, installed, needs

GB = 1e9
OWN_PER_POSITION = 8  # bytes per B (T + U): report.OWN_PER_POSITION

CODE = r"""
import json
from cutrans.ledger import dry_run, get_shape
from cutrans.ledger.report import evaluate
shape = get_shape("paper-headline")
out = {}
for dt in DTYPES:
    ev = evaluate(dry_run(shape, dt))
    out[dt] = {"memory": ev["memory"], "x_roof": ev["x_roof"], "config": ev["config"],
               "schedule": ev["schedule"]}
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
out["vm_hwm_bytes"] = int(hwm) * 1024
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def headline():
    dtypes = ["float32"] + (["bfloat16"] if installed("ml_dtypes") else [])
    res = subprocess.run([sys.executable, "-c", f"DTYPES = {dtypes!r}\n" + CODE],
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_dry_run_touches_no_gigabytes(headline):
    """Inputs and gradients of ~5 GB are never touched: the process stays small."""
    assert headline["float32"]["memory"]["inputs"] > 2.5 * GB
    assert headline["vm_hwm_bytes"] < 1.5 * GB


@pytest.mark.parametrize("dtype, limit_gb", [
    ("float32", 6.0), pytest.param("bfloat16", 3.5, marks=needs("ml_dtypes"))])
def test_headline_total_peak_modelled(headline, dtype, limit_gb):
    mem, cfg = headline[dtype]["memory"], headline[dtype]["config"]
    assert (cfg["batch"], cfg["frames"], cfg["labels"], cfg["vocab"], cfg["hidden"]) == \
        (1024, 1000, 200, 1024, 512)
    assert mem["total"] == mem["inputs"] + mem["gradients"] + mem["own"]
    assert mem["total"] <= limit_gb * GB


@pytest.mark.parametrize("dtype", dtype_params("float32", "bfloat16"))
def test_headline_own_allocation_within_budget(headline, dtype):
    """One-pass path: own allocation <= max_workspace_bytes + 8 B (T + U) bytes."""
    mem, cfg = headline[dtype]["memory"], headline[dtype]["config"]
    bound = cfg["budget"] + OWN_PER_POSITION * cfg["batch"] * (cfg["frames"] + cfg["labels"])
    assert mem["own"] <= bound
    assert mem["own"] >= 0.9 * cfg["budget"]  # the workspace is really counted
