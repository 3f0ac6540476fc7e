"""Run anyio's own test suite on the asyncio backend: stdlib loop vs. ours.

    python compat/anyio/run.py [--work DIR] [--backends io_uring,emulated] [--parallel 2] [--suggest]

Needs the packages of ``requirements.txt`` and iocp_policy installed in the
running interpreter.  Steps:

1. fetch the anyio sdist pinned in ``pin.toml`` (pip download, sha256 checked),
   install it into this interpreter unless that exact version is there, and
   run its ``tests/`` with its own pytest configuration;
2. one run with every asyncio loop on the stdlib loop (the control) and one per
   backend of ours (``IOCP_POLICY_BACKEND``), all through the same
   ``loop_factory`` substitution (``anyio_suite_plugin.py``); tests on other
   backends (trio) are deselected, and so are the suite's ``network`` tests
   (this machine has no Internet; they fail on the control too);
3. compute, per backend, the tests that pass on the control and do not pass on
   ours: the target is that this set is empty.  ``expectations.toml`` may list
   known members with their cause and reason; every unlisted member fails.

Prints a ``SUMMARY:`` line per run and the difference with the exception behind
each test.  Exit status 1 if a difference is unlisted or a run crashed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
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

SUITE = "anyio-suite"


def ensure_installed(pin: Pin, archive: Path) -> None:
    """Install the verified sdist unless this exact version is installed already."""
    try:
        if importlib.metadata.version(pin.name) == pin.version:
            return
    except importlib.metadata.PackageNotFoundError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(archive)], check=True)


def pytest_args(loop: str, extra: list[str]) -> list[str]:
    return ["-p", "anyio_suite_plugin", "-p", "no:cacheprovider", "-q", "-m", "not network",
            f"--compat-loop={loop}", f"--compat-expectations={HERE / 'expectations.toml'}", *extra]


def _result_text(run: Run, test_id: str) -> str:
    result = run.results.get(test_id)
    if result is None:
        return "not run"
    if result["outcome"] in BAD:
        return describe_failure(result)
    return f"{result['outcome']}: {result.get('reason', '')}".strip().rstrip(":")


def report(run: Run, backend: str, control: Run, rules: Rules, suggest: bool) -> bool:
    """Print the comparison of one backend with the control; return whether it meets the target."""
    differ = control.ids(PASSED) - run.ids(PASSED)
    listed, unlisted = classify(differ, rules, backend)
    stale = rules.stale(run.ids(PASSED), backend)
    only_ours = sorted(run.ids(PASSED) - control.ids(PASSED))
    n_listed = sum(len(v) for v in listed.values())
    line = (f"SUMMARY: {SUITE} {backend}: {run.count(PASSED)} passed, {run.count(*BAD)} failed, "
            f"{run.count(SKIPPED)} skipped; {len(differ)} pass on stdlib but not here "
            f"({n_listed} listed, {len(unlisted)} unlisted)")
    if stale:
        line += f", {len(stale)} listed but now passing"
    print(line)
    print_run_notes(run)
    print_listed(listed)
    if unlisted:
        print(f"  UNLISTED ({len(unlisted)}): pass on the stdlib loop, not on {backend}:")
        for test_id in unlisted:
            print(f"    {test_id}  [{_result_text(run, test_id)}]")
    if stale:
        print(f"  listed in expectations.toml but passing on {backend} (remove the entries):")
        for test_id in stale:
            print(f"    {test_id}")
    if only_ours:
        print(f"  pass on {backend} but not on the stdlib loop ({len(only_ours)}):")
        for test_id in only_ours:
            print(f"    {test_id}  [stdlib: {_result_text(control, test_id)}]")
    if suggest and unlisted:
        print_suggestions(run, unlisted, backend)
    return not unlisted and not run.incomplete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--backends", default="io_uring,emulated", help="our backends to run (comma-separated)")
    parser.add_argument("--parallel", type=int, default=2, help="pytest runs at once")
    parser.add_argument("--suggest", action="store_true", help="print TOML entries for unlisted differences")
    parser.add_argument("--select", action="append", default=None, metavar="PATH_OR_ID",
                        help="run only these tests (repeatable; default: the whole suite)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options (after --)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="compat-anyio-"))
    work.mkdir(parents=True, exist_ok=True)
    pin = Pin.load(HERE / "pin.toml")
    sdist = fetch_sdist(pin, work / "sdist")
    ensure_installed(pin, work / "sdist" / pin.filename)
    rules = Rules.load(HERE / "expectations.toml")
    print(f"compat: {SUITE}: anyio {pin.version} (sha256 {pin.sha256[:12]}...) in {sdist}", flush=True)

    env = child_env([HERE.parent / "lib", HERE])
    env.pop("IOCP_POLICY_BACKEND", None)
    backends = [b for b in args.backends.split(",") if b]
    targets = args.select or ["tests"]
    jobs = [("stdlib", pytest_args("stdlib", args.pytest_args), targets, env)]
    jobs += [(b, pytest_args(b, args.pytest_args), targets, {**env, "IOCP_POLICY_BACKEND": b}) for b in backends]
    runs = run_all(jobs, cwd=sdist, out_dir=work, parallel=args.parallel)

    control = runs["stdlib"]
    print(f"SUMMARY: {SUITE} stdlib (control): {control.count(PASSED)} passed, {control.count(*BAD)} failed, "
          f"{control.count(SKIPPED)} skipped")
    print_run_notes(control)
    ok = not control.incomplete
    ok = all([report(runs[b], b, control, rules, args.suggest) for b in backends]) and ok
    print(f"compat: {SUITE}: {'OK' if ok else 'FAILED'} (logs in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
