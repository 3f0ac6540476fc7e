"""Command line: ``python -m iocp_policy {info,demo}``."""

from __future__ import annotations

import sys

USAGE = """usage: python -m iocp_policy COMMAND [options]

commands:
  info [--json]        backend, ring flags and features in use, compiled or pure
  demo [--backend B]   a sock_* echo server and client on this loop, with timings
  bench [options]      benchmarks against asyncio, uvloop, rloop (see --help)
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        from ._info import main as info_main

        return info_main(rest)
    if cmd == "demo":
        from ._demo import main as demo_main

        return demo_main(rest)
    if cmd == "bench":
        from ._bench import main as bench_main

        return bench_main(rest)
    print(f"unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
