"""``python -m iocp_policy bench``: run the benchmarks, print tables, write JSON and a chart."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shutil
import sys
import tempfile
from dataclasses import asdict

from . import _loadgen, _loops, _machine, _workloads
from ._progress import Progress
from ._report import markdown_report, text_report
from ._results import Results
from ._runner import Settings, choose_cpus, run_job, schedule

QUICK = {"rounds": 2, "warmup": 0.25, "duration": 0.5, "micro_timeout": 15.0}
FULL = {"rounds": 3, "warmup": 1.0, "duration": 3.0, "micro_timeout": 30.0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m iocp_policy bench",
        description="Benchmarks of iocp_policy's loops against asyncio, uvloop and rloop: echo servers "
                    "(sock_*, streams, Protocol), HTTP (httptools, uvicorn), connection churn and "
                    "loop-core microbenchmarks.  The default is the quick run (1-2 minutes).")
    p.add_argument("--full", action="store_true", help="every workload, longer windows, more rounds")
    p.add_argument("--loops", help=f"comma-separated loops (default: all of {','.join(_loops.ALL)})")
    p.add_argument("--workloads", help="comma-separated names or fnmatch patterns (see --list)")
    p.add_argument("--rounds", type=int, help="rounds over all loops (quick 2, full 3)")
    p.add_argument("--duration", type=float, help="seconds measured per network run (quick 0.5, full 3)")
    p.add_argument("--warmup", type=float, help="seconds of load before measuring (quick 0.25, full 1)")
    p.add_argument("--micro-ops", type=int, metavar="N",
                   help="operations per microbenchmark run instead of the preset (smoke tests, slow hosts)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write all results as JSON to PATH (no PATH or '-': stdout, tables go to stderr)")
    p.add_argument("--plot", metavar="PNG", help="write a bar chart of the ratios against asyncio")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.add_argument("--load", metavar="JSON", help="do not measure: report a run saved with --json")
    p.add_argument("--list", action="store_true", help="list the workloads and loops, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    return p


def _list() -> str:
    lines = ["workloads (q = in the quick run):"]
    for w in _workloads.ALL:
        lines.append(f"  {'q' if w.quick else ' '} {w.name:<28} {w.unit:<7} {w.description}")
    lines.append("loops: " + ", ".join(_loops.ALL))
    return "\n".join(lines)


def _available_workloads(chosen: list[_workloads.Workload], notes: list[str]) -> list[_workloads.Workload]:
    loadgen_missing = _loadgen.unavailable_reason()
    kept = []
    for w in chosen:
        if isinstance(w, _workloads.NetWorkload):
            if loadgen_missing:
                notes.append(f"skipped {w.name}: {loadgen_missing}")
                continue
            missing = [m for m in w.requires if importlib.util.find_spec(m) is None]
            if missing:
                notes.append(f"skipped {w.name}: {', '.join(missing)} not installed "
                             "(pip install 'iocp-policy[bench]')")
                continue
        kept.append(w)
    return kept


def _loop_table(names: list[str], notes: list[str]) -> dict[str, dict[str, object]]:
    """Availability and version of each requested loop, in a fixed column order (peers, then ours)."""
    table: dict[str, dict[str, object]] = {}
    for name in sorted(set(names), key=_loops.ALL.index):
        reason = _loops.unavailable_reason(name)
        if reason:
            notes.append(f"skipped loop {name}: {reason}")
        table[name] = {"available": reason is None, "reason": reason, "ours": _loops.SPECS[name].ours,
                       "version": _loops.version(name) if reason is None else None}
    return table


def _plan(args: argparse.Namespace) -> tuple[Results, Settings, list[_workloads.Workload]]:
    """What to run: settings, available loops and workloads, and the empty results."""
    base = FULL if args.full else QUICK
    names = args.loops.split(",") if args.loops else list(_loops.ALL)
    unknown = [n for n in names if n not in _loops.SPECS]
    if unknown:
        raise SystemExit(f"unknown loop(s): {', '.join(unknown)} (known: {', '.join(_loops.ALL)})")
    chosen = _workloads.select(args.workloads.split(",") if args.workloads else None, quick=not args.full)
    if not chosen:
        raise SystemExit(f"no workload matches {args.workloads!r} (see --list)")
    if args.micro_ops is not None and args.micro_ops < 1:
        raise SystemExit(f"--micro-ops must be at least 1, not {args.micro_ops}")
    notes: list[str] = []
    loops_info = _loop_table(names, notes)
    workloads = _available_workloads(chosen, notes)
    server_cpu, client_cpus, cpu_note = choose_cpus()
    if cpu_note:
        notes.append(cpu_note)
    st = Settings(rounds=args.rounds or int(base["rounds"]), warmup=args.warmup or base["warmup"],
                  duration=args.duration or base["duration"], full=args.full, server_cpu=server_cpu,
                  client_cpus=client_cpus, micro_timeout=base["micro_timeout"],
                  micro_ops=args.micro_ops)
    results = Results(
        config={**asdict(st), "mode": "full" if args.full else "quick",
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "argv": sys.argv[1:]},
        machine=_machine.describe(_loadgen.find_compiler()), loops=loops_info,
        workloads=[{"name": w.name, "group": w.group, "unit": w.unit, "description": w.description}
                   for w in workloads],
        notes=notes,
    )
    return results, st, workloads


def measure(args: argparse.Namespace) -> Results:
    results, st, workloads = _plan(args)
    jobs = schedule(workloads, results.loop_names(), st.rounds)
    build_dir = tempfile.mkdtemp(prefix="iocp-bench-")
    try:
        exe = None
        if any(isinstance(w, _workloads.NetWorkload) for w in workloads) and jobs:
            try:
                exe = _loadgen.build(build_dir)
            except (RuntimeError, OSError) as exc:
                results.notes.append(f"network workloads failed: {exc}")
        progress = Progress(len(jobs), enabled=not args.no_progress)
        for job in jobs:
            progress.start(f"{job[1].name} on {job[2]} (round {job[0] + 1})")
            run = run_job(job, st, exe)
            results.runs.append(run)
            progress.finish_job(run.ok)
        progress.close()
        results.machine["loadavg_at_end"] = _machine.loadavg()
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return results


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        print(_list())
        return 0
    if args.load:
        with open(args.load, encoding="utf-8") as f:
            results = Results.from_json(json.load(f))
    else:
        results = measure(args)
    report = markdown_report(results) if args.markdown else text_report(results)
    data = json.dumps(results.to_json(), indent=1)
    if args.json == "-":
        sys.stdout.write(data + "\n")
        sys.stderr.write(report)
    else:
        sys.stdout.write(report)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(data + "\n")
    if args.plot:
        try:
            from ._plot import plot

            plot(results, args.plot)
        except ImportError:
            print("--plot needs matplotlib: pip install 'iocp-policy[bench]'", file=sys.stderr)
            return 1
    return 0
