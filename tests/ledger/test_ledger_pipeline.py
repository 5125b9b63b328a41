"""The ledger's model of the pipelined one pass: the side stream's lattices, recorded as
stream 1 between fork/mark/join dependencies, overlapped by ``model.gpu_seconds``."""
import numpy as np
import pytest

from cutrans.ledger import dryrun as dr
from cutrans.ledger import model
from cutrans.ledger.model import SYNC_KINDS
from cutrans.ledger.record import Launch
from cutrans.ledger.report import evaluate


def _t(seconds, stream=0):
    """A launch whose modelled cost is ``seconds`` (a memset of that many bytes at BW)."""
    return Launch("memset", "memset", "float32", 0, 0, written=int(round(seconds * model.BW)),
                  stream=stream)


def _sync(kind, slot, stream):
    return Launch(kind, kind, "", 0, 0, stream=stream, slot=slot)


def test_gpu_seconds_follows_the_dependencies():
    one = 1e-3
    seq = [_t(one), _sync("fork", 0, 1), _t(2 * one, 1), _sync("mark", 0, 1),  # L0 after a
           _t(one),                                                         # b beside L0
           _sync("fork", 1, 1), _t(2 * one, 1), _sync("mark", 1, 1),        # L1 after L0, b
           _sync("join", 0, 0), _t(one),                                    # c after L0
           _sync("join", 1, 0), _t(one)]                                    # d after L1
    # main: a 0-1, b 1-2, c 3-4 (waits for L0 ending at 3), d 5-6 (L1: 3-5)
    assert model.gpu_seconds(seq) == pytest.approx(6 * one)
    assert sum(model.cost(r).seconds for r in seq) == pytest.approx(8 * one)
    assert model.gpu_seconds([_t(one), _t(2 * one)]) == pytest.approx(3 * one)  # one stream


def test_pipelined_dry_run_overlaps_only_the_lattices():
    T = np.full(12, 9)
    U = np.full(12, 3)
    shape = dr.Shape("uniform", T, U, 40, 24, 9, 3)
    budget = dr._fused.workspace_bytes(*dr._inputs(shape, np.float32)[:3], 4 * 36)
    one = dr.dry_run(shape, "float32", budget=budget)
    run = dr.dry_run(shape, "float32", budget=budget, pipeline=True)
    assert not any(r.stream for r in one.launches) and run.config["pipeline"]
    side = [r for r in run.launches if r.stream and r.kind not in SYNC_KINDS]
    assert side and {r.name for r in side} <= {"lattice", "lattice_grad"}
    groups = run.schedule["groups"]
    assert groups > 3 and sum(r.name == "lattice" for r in side) == groups
    for kind in SYNC_KINDS:
        assert sum(r.kind == kind for r in run.launches) == groups
    ev, ev1 = evaluate(run), evaluate(one)
    assert ev["overlapped"] and not ev1["overlapped"]
    assert ev["modelled_ms"] < ev["serial_ms"]
    assert ev1["modelled_ms"] == pytest.approx(ev1["serial_ms"])
    assert ev["launches"] == sum(r.kind not in SYNC_KINDS for r in run.launches)
    # the same work either way: the lattices hidden, the rest in sequence on the main stream
    lattice = sum(model.cost(r).seconds for r in side) * 1e3
    assert ev["modelled_ms"] >= ev["serial_ms"] - lattice - 1e-9
