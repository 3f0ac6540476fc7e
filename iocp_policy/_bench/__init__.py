"""Benchmarks (issue 7): placeholder until the bench package lands."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    print("python -m iocp_policy bench: not implemented yet")
    return 2
