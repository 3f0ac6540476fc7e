"""Run uvloop's own test suite against iocp_policy.

    python compat/uvloop/run.py [--work DIR] [--backends io_uring,emulated] [--parallel 2] [--suggest]

Needs the packages of ``requirements.txt`` and iocp_policy installed in the
running interpreter.  Steps:

1. fetch the uvloop sdist pinned in ``pin.toml`` (pip download, sha256 checked)
   and copy its ``tests/`` into ``WORK/run``;
2. build the stand-in ``uvloop`` package in ``WORK/shim``: our ``shim/uvloop``
   plus uvloop's own ``_testbase.py`` from the sdist;
3. run pytest once on the stdlib loop (the ``AIOTestCase`` variants: the
   control) and once per backend of ours (``IOCP_POLICY_BACKEND``) on the rest,
   less the reasoned exclusions of ``expectations.toml``;
4. print per run a ``SUMMARY:`` line and the failing test ids, grouped by the
   ``[[expected-failure]]`` entry that lists them (with its reason) or as
   unlisted failures with the exception behind each.

Exit status 1 if a run of ours has a failure that ``expectations.toml`` does
not list (or a run crashed), else 0.  Listed failures that now pass are
reported as stale entries.  ``--suggest`` prints TOML entries for the unlisted
failures, grouped by a first guess at the cause, for a maintainer to check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))

from compat_common import (  # noqa: E402
    BAD,
    PASSED,
    SKIPPED,
    Pin,
    Rules,
    Run,
    child_env,
    classify,
    describe_failure,
    fetch_sdist,
    print_listed,
    print_run_notes,
    print_suggestions,
    run_all,
)

SUITE = "uvloop-suite"
STDLIB_AS_UV = "stdlib-as-uvloop"
PYTEST_INI = """\
# Written by compat/uvloop/run.py: uvloop's own pytest options (--capture=no
# matters: test_process_streams_redirect redirects the process's real fd 1 and 2).
[pytest]
addopts = --capture=no --assert=plain --strict-markers --tb=native --import-mode=importlib -p no:cacheprovider
filterwarnings = default
"""


def prepare(work: Path) -> tuple[Pin, Path, Path]:
    """Fetch the sdist; return (pin, run dir with tests/, shim dir for PYTHONPATH)."""
    pin = Pin.load(HERE / "pin.toml")
    sdist = fetch_sdist(pin, work / "sdist")
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(sdist / "tests", run_dir / "tests")
    (run_dir / "pytest.ini").write_text(PYTEST_INI)
    shim = work / "shim"
    shutil.rmtree(shim, ignore_errors=True)
    shutil.copytree(HERE / "shim", shim, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(sdist / "uvloop" / "_testbase.py", shim / "uvloop" / "_testbase.py")
    return pin, run_dir, shim


def pytest_args(loop: str, timeout: int, extra: list[str]) -> list[str]:
    return ["-p", "uvloop_suite_plugin", "-p", "timeout", "-p", "no:asyncio", f"--timeout={timeout}", "-q", "-rfE",
            f"--compat-loop={loop}", f"--compat-expectations={HERE / 'expectations.toml'}", *extra]


def report_ours(run: Run, backend: str, rules: Rules, control: Run | None, as_uv: Run | None,
                suggest: bool) -> bool:
    """Print the summary of one run of ours; return whether it meets the criteria."""
    listed, unlisted = classify(run.ids(*BAD), rules, backend)
    stale = rules.stale(run.ids(PASSED), backend)
    n_listed = sum(len(v) for v in listed.values())
    line = (f"SUMMARY: {SUITE} {backend}: {run.count(PASSED)} passed, {len(unlisted)} failed, "
            f"{len(run.excluded)} excluded, {n_listed} expected failures (listed), {run.count(SKIPPED)} skipped")
    if stale:
        line += f", {len(stale)} listed but now passing"
    print(line)
    print_run_notes(run)
    print_listed(listed)
    control_of: dict[str, str] = run.meta.get("control_class", {})
    if unlisted:
        print(f"  UNLISTED failures ({len(unlisted)}): each must pass or be listed in "
              "compat/uvloop/expectations.toml with its reason")
        for test_id in unlisted:
            note = _control_note(test_id, control_of, control)
            if as_uv is not None:
                note += f" (on the stdlib loop: {as_uv.results.get(test_id, {}).get('outcome', 'not run')})"
            print(f"    {test_id}  [{describe_failure(run.results[test_id])}]{note}")
    if stale:
        print(f"  listed as expected failures but passing on {backend} (remove from expectations.toml):")
        for test_id in stale:
            print(f"    {test_id}")
    if suggest and unlisted:
        print_suggestions(run, unlisted, backend)
    return not unlisted and not run.incomplete


def _control_note(test_id: str, control_of: dict[str, str], control: Run | None) -> str:
    cls, _, name = test_id.rpartition("::")
    if control is None or cls not in control_of:
        return ""
    twin = f"{control_of[cls]}::{name}"
    outcome = control.results.get(twin, {}).get("outcome", "not run")
    return f" (asyncio variant: {outcome})"


def report_control(run: Run, title: str) -> None:
    failing = sorted(run.ids(*BAD))
    print(f"SUMMARY: {title}: {run.count(PASSED)} passed, {len(failing)} failed, {run.count(SKIPPED)} skipped")
    print_run_notes(run)
    for test_id in failing:
        print(f"    {test_id}  [{describe_failure(run.results[test_id])}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--backends", default="io_uring,emulated", help="our backends to run (comma-separated)")
    parser.add_argument("--no-control", action="store_true", help="skip the stdlib control run")
    parser.add_argument("--uv-on-stdlib", action="store_true",
                        help="diagnostic: also run the uvloop variants on the stdlib loop, and show for each "
                             "failure of ours how the stdlib loop did on the same test")
    parser.add_argument("--parallel", type=int, default=2, help="pytest runs at once")
    parser.add_argument("--timeout", type=int, default=90, help="per-test timeout in seconds")
    parser.add_argument("--suggest", action="store_true", help="print TOML entries for unlisted failures")
    parser.add_argument("--select", action="append", default=None, metavar="PATH_OR_ID",
                        help="run only these tests (repeatable; default: the whole suite)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options (after --)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="compat-uvloop-"))
    work.mkdir(parents=True, exist_ok=True)
    pin, run_dir, shim = prepare(work)
    rules = Rules.load(HERE / "expectations.toml")
    print(f"compat: {SUITE}: uvloop {pin.version} (sha256 {pin.sha256[:12]}...) in {run_dir}", flush=True)

    backends = [b for b in args.backends.split(",") if b]
    targets = args.select or ["tests"]
    jobs = []
    env = child_env([shim, HERE.parent / "lib", HERE])
    env.pop("IOCP_POLICY_BACKEND", None)
    if not args.no_control:
        jobs.append(("stdlib", pytest_args("stdlib", args.timeout, args.pytest_args), targets, env))
    for backend in backends:
        jobs.append((backend, pytest_args(backend, args.timeout, args.pytest_args), targets,
                     {**env, "IOCP_POLICY_BACKEND": backend}))
    if args.uv_on_stdlib:
        jobs.append((STDLIB_AS_UV, pytest_args(STDLIB_AS_UV, args.timeout, args.pytest_args), targets,
                     {**env, "IOCP_COMPAT_SHIM_LOOP": "stdlib"}))
    runs = run_all(jobs, cwd=run_dir, out_dir=work, parallel=args.parallel)

    control = runs.get("stdlib")
    if control is not None:
        report_control(control, f"{SUITE} stdlib (asyncio variants, control)")
    as_uv = runs.get(STDLIB_AS_UV)
    if as_uv is not None:
        report_control(as_uv, f"{SUITE} stdlib as uvloop (uvloop variants on the stdlib loop, diagnostic)")
    ok = all([report_ours(runs[b], b, rules, control, as_uv, args.suggest) for b in backends])
    print(f"compat: {SUITE}: {'OK' if ok else 'FAILED'} (logs in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
