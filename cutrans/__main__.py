"""Command line: ``python -m cutrans <command>`` (also the ``cutrans`` console script).

Commands:
    bench   compare cutrans fused / sample-wise against the batched PyTorch computation
            and loss-on-logits libraries (memory, time, agreement); see ``bench --help``.
    ledger  modelled H100 time and memory of a call from its launch sequence (no GPU;
            never a measurement); see ``ledger --help``.
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = {"bench": "benchmark memory and time (python -m cutrans bench --help)",
            "ledger": "modelled H100 time and memory, no GPU (python -m cutrans ledger --help)"}


def main(argv=None) -> int:
    """Dispatch to a sub-command; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m cutrans",
                                     description="cutrans command line (also the 'cutrans' "
                                                 "console script).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(
                                         f"  {k:<8}{v}" for k, v in COMMANDS.items()))
    parser.add_argument("command", choices=sorted(COMMANDS), help="bench or ledger")
    parser.add_argument("args", nargs="*", default=[], help="the command's options")
    if argv and argv[0] == "bench":  # let bench's own parser see --help and every option
        from .bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "ledger":
        from .ledger.report import main as ledger_main

        return ledger_main(argv[1:])
    parser.parse_args(argv)  # prints usage / errors for anything else
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
