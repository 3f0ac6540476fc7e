"""``python -m iocp_policy bench``: benchmarks against asyncio, uvloop and rloop (issue 7).

Layout: ``_cli`` (command line) runs ``_runner`` (processes, pinning, rounds)
over ``_workloads`` on ``_loops``; servers (``_servers``) and microbenchmarks
(``_micro``) run in child processes (``_child``), driven by the C load
generator (``loadgen.c``, built by ``_loadgen``); ``_stats``, ``_report`` and
``_plot`` turn the ``_results`` into tables and a chart.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from ._cli import main as cli_main

    return cli_main(argv)
