"""What a benchmark run produced, and its JSON form (``--json``, ``--load``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1


@dataclass
class Run:
    """One measurement: one workload on one loop in one round."""

    workload: str
    loop: str
    round: int
    ok: bool = True
    error: str | None = None
    value: float = 0.0  # throughput in the workload's unit, per wall-clock second
    seconds: float = 0.0  # length of the measured window
    cpu_s: float | None = None  # CPU time of the server process (micro: of the benchmark process)
    per_cpu: float | None = None  # throughput per CPU-second of that process
    client_cpu_s: float | None = None  # CPU time of the load generator in the window
    mib_s: float | None = None  # reply bytes per second
    p50_us: float | None = None
    p99_us: float | None = None
    loop_class: str | None = None  # what the child process actually ran
    note: str | None = None  # e.g. the last line the server wrote on stderr

    @property
    def client_busy(self) -> float | None:
        """Fraction of its core the load generator used; near 1.0 means it was the bottleneck."""
        if self.client_cpu_s is None or self.seconds <= 0:
            return None
        return self.client_cpu_s / self.seconds


@dataclass
class Results:
    config: dict[str, Any]
    machine: dict[str, Any]
    loops: dict[str, dict[str, Any]]  # name -> {"available", "version", "reason", "ours"}
    workloads: list[dict[str, Any]]  # name, group, unit, description, in run order
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def loop_names(self) -> list[str]:
        return [name for name, info in self.loops.items() if info.get("available")]

    def to_json(self) -> dict[str, Any]:
        from ._stats import summarize

        return {
            "schema": SCHEMA,
            "config": self.config,
            "machine": self.machine,
            "loops": self.loops,
            "workloads": self.workloads,
            "notes": self.notes,
            "runs": [dataclasses.asdict(r) for r in self.runs],
            "summary": [dataclasses.asdict(s) for s in summarize(self).values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unsupported results schema {data.get('schema')!r} (expected {SCHEMA})")
        names = {f.name for f in dataclasses.fields(Run)}
        runs = [Run(**{k: v for k, v in r.items() if k in names}) for r in data["runs"]]
        return cls(config=data["config"], machine=data["machine"], loops=data["loops"],
                   workloads=data["workloads"], runs=runs, notes=data.get("notes", []))
