"""cutrans: exact, memory-bounded RNN-T (transducer) loss, sample-wise, with CUDA kernels.

``import cutrans`` needs only NumPy and never touches a GPU; CuPy, PyTorch and JAX are
imported lazily by the backends and adapters that need them.
"""
from ._status import raise_for_status
from .api import (DEFAULT_WORKSPACE_BYTES, CopyWarning, TransducerGrads, TransducerOutput,
                  rnnt_loss, rnnt_loss_backward, rnnt_loss_forward, transducer_backward,
                  transducer_forward, transducer_loss)
from .backends import BACKENDS, get_backend

__version__ = "0.1.0"

__all__ = ["BACKENDS", "DEFAULT_WORKSPACE_BYTES", "CopyWarning", "TransducerGrads",
           "TransducerOutput", "raise_for_status",
           "get_backend", "rnnt_loss", "rnnt_loss_backward", "rnnt_loss_forward",
           "transducer_backward", "transducer_forward", "transducer_loss"]
