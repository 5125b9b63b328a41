"""Device-side checks (``checks="device"``): a status word instead of a host round trip
(also the internal word of the host checks on device arrays, ``api._run_checked``: the
fused op adds ``NON_FINITE_INPUT``, the loss on logits ``NON_FINITE_ROWS``; read once at
the end).

With ``checks="device"`` the fused op reads nothing back to the host: the labels are
checked by a kernel and non-finite log-likelihoods are flagged on the device, both ORed
into a caller-visible int32 ``status`` array of shape () on the data's device (0: all
good). ``raise_for_status(status)`` reads it (one device-to-host copy, when the caller
chooses) and raises the ``ValueError`` the host checks would have raised.

A flagged call does not crash (kernels never read a label outside [0, V)), but its loss
and gradients are undefined (NaN or inf): check the status before using them -- e.g.
skip the optimizer step, as ``torch.amp.GradScaler`` does for overflowed steps.
"""
from __future__ import annotations

import numpy as np

from . import _validate as v

BAD_LABEL = 1  # a label within target_lengths outside [0, V) (kernels/row_ops.cu)
BLANK_LABEL = 2  # the blank id within target_lengths
NON_FINITE = 4  # a non-finite log-likelihood: NaN/inf inputs, or a float16 GEMM overflow
NON_FINITE_INPUT = 8  # NaN/inf in a float input (the deferred host checks: api._run_checked)
NON_FINITE_ROWS = 16  # rnnt_loss: a row's blank log-probability is not finite (NaN/inf logits)

MESSAGES = {
    BAD_LABEL: "targets: a label within target_lengths is outside [0, V)",
    BLANK_LABEL: "targets: the blank id appears within target_lengths",
    NON_FINITE: "a log-likelihood is not finite (NaN/inf in the inputs, or a float16 GEMM "
                "overflow |z| > 65504)",
    NON_FINITE_INPUT: "a float input (enc, pred, weight or bias) holds NaN or infinity",
    NON_FINITE_ROWS: v.LOG_PROBS_ERROR,
}


def new_status(xp):
    """A zeroed status word (int32, shape ()) in ``xp``."""
    return xp.zeros((), dtype=np.int32)


def check_status_array(status, xp):
    """``status`` must be an int32 array of shape () of the backend's kind."""
    if type(status).__module__.split(".")[0] != xp.__name__ or status.shape != () or \
            status.dtype != np.int32:
        raise TypeError(f"status: expected an int32 {xp.__name__} array of shape (), got "
                        f"{type(status).__module__}.{type(status).__name__} "
                        f"{getattr(status, 'dtype', '')} {getattr(status, 'shape', '')}")


def flag_non_finite(status, x, xp, bit: int = NON_FINITE) -> None:
    """``status |= bit`` if any of ``x`` is NaN/inf (device ops, no read): ``NON_FINITE``
    for log-likelihoods, ``NON_FINITE_ROWS`` for the rows' blank log-probabilities (where
    ``check_log_probs`` of ``cutrans._validate`` would raise)."""
    _flag_unless(status, xp.isfinite(x), bit)


def flag_non_finite_inputs(status, arrays, xp) -> None:
    """``status |= NON_FINITE_INPUT`` if any array holds NaN/inf (``check_finite``'s test
    of ``cutrans._validate``, as device ops with no read)."""
    _flag_unless(status, v.finite_flags(arrays, xp), NON_FINITE_INPUT)


def _flag_unless(status, ok, bit: int) -> None:
    """``status |= bit`` unless every entry of the boolean array ``ok`` holds (no read)."""
    status |= (~ok.all()).astype(np.int32) * np.int32(bit)


def raise_for_status(status) -> None:
    """Raise ``ValueError`` naming every problem a ``checks="device"`` call flagged; does
    nothing for 0. Reads ``status`` (any array kind) on the host."""
    flags = int(v.host_read(status))  # the module's: tests count the reads
    if flags:
        raise ValueError("; ".join(m for bit, m in MESSAGES.items() if flags & bit))
