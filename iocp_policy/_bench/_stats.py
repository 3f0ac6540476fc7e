"""Medians, spreads and ratios over the rounds of a run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._results import Results, Run

SATURATED = 0.9  # a load generator busier than this was probably the bottleneck


@dataclass
class Summary:
    workload: str
    loop: str
    ok_runs: int
    failed_runs: int
    error: str | None  # the first failure's message
    median: float | None
    low: float | None
    high: float | None
    per_cpu_median: float | None
    per_cpu_low: float | None
    per_cpu_high: float | None
    mib_s: float | None
    p50_us: float | None
    p99_us: float | None
    client_busy_max: float | None
    client_saturated: bool


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def summarize_runs(workload: str, loop: str, runs: list[Run]) -> Summary:
    ok = [r for r in runs if r.ok]
    failed = [r for r in runs if not r.ok]
    values = [r.value for r in ok]
    per_cpu = _present([r.per_cpu for r in ok])
    busy = _present([r.client_busy for r in ok])
    return Summary(
        workload=workload, loop=loop, ok_runs=len(ok), failed_runs=len(failed),
        error=failed[0].error if failed else None,
        median=_median(values), low=min(values, default=None), high=max(values, default=None),
        per_cpu_median=_median(per_cpu), per_cpu_low=min(per_cpu, default=None),
        per_cpu_high=max(per_cpu, default=None),
        mib_s=_median(_present([r.mib_s for r in ok])),
        p50_us=_median(_present([r.p50_us for r in ok])),
        p99_us=_median(_present([r.p99_us for r in ok])),
        client_busy_max=max(busy, default=None),
        client_saturated=bool(busy) and max(busy) >= SATURATED,
    )


def summarize(results: Results) -> dict[tuple[str, str], Summary]:
    """One Summary per (workload, loop) that has runs, in workload then loop order."""
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in results.runs:
        grouped.setdefault((run.workload, run.loop), []).append(run)
    out: dict[tuple[str, str], Summary] = {}
    for w in results.workloads:
        for loop in results.loops:
            key = (w["name"], loop)
            if key in grouped:
                out[key] = summarize_runs(w["name"], loop, grouped[key])
    return out


def ratio(summaries: dict[tuple[str, str], Summary], workload: str, loop: str, baseline: str,
          per_cpu: bool = False) -> float | None:
    """Median of ``loop`` over median of ``baseline`` for one workload, or None."""
    a, b = summaries.get((workload, loop)), summaries.get((workload, baseline))
    if a is None or b is None:
        return None
    x, y = (a.per_cpu_median, b.per_cpu_median) if per_cpu else (a.median, b.median)
    if x is None or y is None or y == 0:
        return None
    return x / y
