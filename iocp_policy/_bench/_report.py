"""Tables of a run: plain text for the terminal, Markdown for docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable

from . import _loops
from ._results import Results
from ._stats import Summary, ratio, summarize

Cell = Callable[[str, str], str]  # (workload, loop) -> cell text


def si(value: float | None) -> str:
    """3 significant digits with a k/M suffix: 1234 -> 1.23k."""
    if value is None:
        return "-"
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


class _Tables:
    """The cells of every table, computed once from the summaries."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.s = summarize(results)
        self.loops = [n for n in results.loops if results.loops[n].get("available")]
        self.workloads = [w for w in results.workloads if any((w["name"], n) in self.s for n in self.loops)]
        self.baselines = [b for b in _loops.BASELINES if b in self.loops]

    def _get(self, workload: str, loop: str) -> Summary | None:
        return self.s.get((workload, loop))

    def throughput(self, workload: str, loop: str) -> str:
        s = self._get(workload, loop)
        if s is None:
            return ""
        if s.median is None:
            return "failed"
        spread = f" [{si(s.low)}-{si(s.high)}]" if s.ok_runs > 1 else ""
        flag = "†" if s.client_saturated else ""
        partial = f" ({s.failed_runs} failed)" if s.failed_runs else ""
        return f"{si(s.median)}{spread}{flag}{partial}"

    def per_cpu(self, workload: str, loop: str) -> str:
        s = self._get(workload, loop)
        if s is None:
            return ""
        return "failed" if s.per_cpu_median is None else si(s.per_cpu_median)

    def _ratios(self, workload: str, loop: str, per_cpu: bool) -> str:
        s = self._get(workload, loop)
        if s is None:
            return ""
        if s.median is None:
            return "failed"
        parts = []
        for b in self.baselines:
            r = ratio(self.s, workload, loop, b, per_cpu=per_cpu)
            parts.append("-" if r is None else f"{r:.2f}")
        return " / ".join(parts)

    def ratios(self, workload: str, loop: str) -> str:
        return self._ratios(workload, loop, per_cpu=False)

    def ratios_cpu(self, workload: str, loop: str) -> str:
        return self._ratios(workload, loop, per_cpu=True)

    def bandwidth(self, workload: str, loop: str) -> str:
        s = self._get(workload, loop)
        if s is None:
            return ""
        return "failed" if s.mib_s is None else f"{s.mib_s:.0f}"

    def latency(self, workload: str, loop: str) -> str:
        s = self._get(workload, loop)
        if s is None:
            return ""
        if s.median is None:
            return "failed"
        return f"{_ms(s.p50_us)} / {_ms(s.p99_us)}"

    def client(self, workload: str, loop: str) -> str:
        s = self._get(workload, loop)
        if s is None or s.client_busy_max is None:
            return ""
        return f"{s.client_busy_max * 100:.0f}%"

    def rows(self, cell: Cell, unit: bool = False, only_net: bool = False) -> list[list[str]]:
        return [
            [w["name"], *([w["unit"]] if unit else []), *(cell(w["name"], n) for n in self.loops)]
            for w in self.workloads
            if not only_net or w["group"] != "micro"
        ]

    def header(self, unit: bool = False) -> list[str]:
        loops = [f"{n}*" if _is_ours(self.results, n) else n for n in self.loops]
        return ["workload", *(["unit"] if unit else []), *loops]

    def sections(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """(title, header, rows) of each table."""
        against = " / ".join(f"x {b}" for b in self.baselines) or "no baseline loop ran"
        runs = self.results.config.get("rounds", "?")
        h, hu = self.header(), self.header(unit=True)
        return [
            (f"Throughput per second: median of {runs} rounds [min-max]", hu,
             self.rows(self.throughput, unit=True)),
            (f"Throughput ratio: median over median ({against})", h, self.rows(self.ratios)),
            ("Throughput per CPU-second of the server process (micro: of the benchmark process)", hu,
             self.rows(self.per_cpu, unit=True)),
            (f"Per-CPU-second ratio ({against})", h, self.rows(self.ratios_cpu)),
            ("Reply bytes in MiB/s (median over rounds)", h, self.rows(self.bandwidth, only_net=True)),
            ("Latency p50 / p99 in ms (median over rounds)", h, self.rows(self.latency, only_net=True)),
            ("Load generator CPU: busiest round, share of its core", h,
             self.rows(self.client, only_net=True)),
        ]

    def footnotes(self) -> list[str]:
        notes = ["loop* = one of ours (iocp_policy backends); † = the load generator was busier than 90% "
                 "of its core in some round, so it may have been the bottleneck"]
        failures: dict[tuple[str, str], list[str]] = {}
        for s in self.s.values():
            if s.failed_runs:
                failures.setdefault((s.loop, s.error or "?"), []).append(s.workload)
        for (loop, error), workloads in failures.items():
            notes.append(f"failed on {loop}: {', '.join(workloads)}: {error}")
        notes.extend(self.results.notes)
        return notes


def context_lines(results: Results) -> list[str]:
    """Where and with what the numbers were measured."""
    m, c = results.machine, results.config
    loops = ", ".join(f"{n} {info.get('version')}" for n, info in results.loops.items() if info.get("available"))
    packages = ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items() if v)
    load = m.get("loadavg_at_start")
    cpus = ",".join(map(str, c.get("client_cpus") or [])) or "any"
    lines = [
        f"machine: {m.get('cpu')}, {m.get('cores')} cores; {m.get('kernel')}; {m.get('python')}",
        f"loops: {loops}" + (f"; packages: {packages}" if packages else ""),
        f"run: {c.get('mode')}, {c.get('rounds')} rounds, {c.get('warmup')} s warm-up + {c.get('duration')} s "
        f"measured; server on CPU {c.get('server_cpu')}, load generator on CPUs {cpus}; "
        f"started {c.get('started')}" + (f", load average {load[0]:.2f}" if load else ""),
    ]
    return lines


def _is_ours(results: Results, loop: str) -> bool:
    return bool(results.loops[loop].get("ours"))


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    left = 2 if header[1] == "unit" else 1
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(r))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    left = 2 if header[1] == "unit" else 1
    align = ["---"] * left + ["---:"] * (len(header) - left)
    return "\n".join([line(header), "| " + " | ".join(align) + " |", *(line(r) for r in rows)])


def text_report(results: Results) -> str:
    t = _Tables(results)
    if not t.workloads:
        return "no measurements\n" + "\n".join(t.footnotes()) + "\n"
    parts = ["\n".join(context_lines(results))]
    parts += [f"{title}\n{_text_table(header, rows)}" for title, header, rows in t.sections() if rows]
    parts.append("\n".join(t.footnotes()))
    return "\n\n".join(parts) + "\n"


def markdown_report(results: Results) -> str:
    t = _Tables(results)
    parts = ["\n".join(f"- {line}" for line in context_lines(results))]
    parts += [f"### {title}\n\n{_markdown_table(header, rows)}" for title, header, rows in t.sections() if rows]
    parts.append("\n".join(f"- {n}" for n in t.footnotes()))
    return "\n\n".join(parts) + "\n"
