"""``python -m cutrans bench``: memory and time of cutrans vs the batched computation.

Modules: ``workloads`` (named shapes, length distributions, inputs), ``methods`` (what is
compared, memory estimates), ``baseline`` (the PyTorch batched joint + RNN-T loss),
``worker`` (one method measured in a fresh process), ``measure`` (memory probes, timers,
environment), ``runner`` (the run, ratios, agreement check), ``report`` (table, JSON,
plot), ``cli`` (options). Nothing here is imported by ``import cutrans``, and this
package imports its modules lazily (``python -m cutrans.bench.worker`` runs cleanly).
"""


def main(argv=None) -> int:
    """``python -m cutrans bench`` (see ``cutrans.bench.cli``)."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
