"""Run anyio's own test suite on the asyncio backend: stdlib loop vs. ours.

    python compat/anyio/run.py [--work DIR] [--backends io_uring,emulated] [--parallel 2] [--suggest]
    python compat/anyio/run.py --wine ../shared/wine [--work DIR] [--backends iocp]

Needs the packages of ``requirements.txt`` and iocp_policy installed in the
running interpreter.  With ``--wine`` (``.ci/steps/compat-wine.sh``) the suite
runs in the Windows CPython under Wine instead, from the checkout, one pytest
process at a time; this interpreter needs only pytest and pip: it installs
``requirements-wine.txt`` for Windows into ``WORK/wine-site`` and makes the
certificates of the trustme stand-in (``compat/wine/trustme.py``).  The control
is then the stdlib's ``ProactorEventLoop`` (what ``asyncio.new_event_loop()``
gives on Windows) and the default backend ``iocp``.  Steps:

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
    Launcher,
    Pin,
    Rules,
    Run,
    child_env,
    classify,
    describe_failure,
    fetch_sdist,
    install_for_windows,
    pins,
    print_listed,
    print_run_notes,
    print_suggestions,
    run_all,
    wine_env,
    wine_launcher,
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


def report(run: Run, backend: str, control: Run, rules: Rules, suggest: bool, where: str = "") -> bool:
    """Print the comparison of one backend with the control; return whether it meets the target."""
    differ = control.ids(PASSED) - run.ids(PASSED)
    listed, unlisted = classify(differ, rules, backend)
    stale = rules.stale(run.ids(PASSED), backend)
    only_ours = sorted(run.ids(PASSED) - control.ids(PASSED))
    n_listed = sum(len(v) for v in listed.values())
    line = (f"SUMMARY: {SUITE} {backend}{where}: {run.count(PASSED)} passed, {run.count(*BAD)} failed, "
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


def prepare_wine(wine_dir: Path, work: Path) -> tuple[dict[str, str], Launcher]:
    """The environment and launcher of the pytest runs under Wine (see the module docstring)."""
    requirements = HERE / "requirements-wine.txt"
    linux = pins(HERE / "requirements.txt")
    drift = {name: (version, linux[name]) for name, version in pins(requirements).items()
             if name in linux and linux[name] != version}
    if drift:
        raise SystemExit(f"compat: {requirements.name} and requirements.txt pin different versions: {drift}")
    site = work / "wine-site"
    install_for_windows(requirements, site)
    # trio as on Linux, where requirements.txt leaves it out: not importable (it does not start under
    # Wine), and hypothesis does not load the plugin trio's metadata still registers (the only one there is).
    env = wine_env(work, [HERE.parent / "lib", HERE, site], hide_modules=["trio"])
    env["HYPOTHESIS_NO_PLUGINS"] = "1"
    return env, wine_launcher(wine_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--backends", default=None,
                        help="our backends to run (comma-separated; default io_uring,emulated, under Wine iocp)")
    parser.add_argument("--parallel", type=int, default=2, help="pytest runs at once (under Wine: 1)")
    parser.add_argument("--wine", type=Path, default=None, metavar="DIR",
                        help="run in the Windows CPython under Wine (DIR: shared/wine, set up)")
    parser.add_argument("--suggest", action="store_true", help="print TOML entries for unlisted differences")
    parser.add_argument("--select", action="append", default=None, metavar="PATH_OR_ID",
                        help="run only these tests (repeatable; default: the whole suite)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options (after --)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="compat-anyio-"))
    work.mkdir(parents=True, exist_ok=True)
    pin = Pin.load(HERE / "pin.toml")
    sdist = fetch_sdist(pin, work / "sdist")
    rules = Rules.load(HERE / "expectations.toml")
    print(f"compat: {SUITE}: anyio {pin.version} (sha256 {pin.sha256[:12]}...) in {sdist}", flush=True)

    launcher: Launcher | None = None
    if args.wine is None:
        ensure_installed(pin, work / "sdist" / pin.filename)
        env = child_env([HERE.parent / "lib", HERE])
        backends_arg, parallel = args.backends or "io_uring,emulated", args.parallel
        control_label, where = "stdlib (control)", ""
    else:
        # anyio itself is the shared Wine interpreter's (the same release; checked below).
        env, launcher = prepare_wine(args.wine, work)
        backends_arg, parallel = args.backends or "iocp", 1
        control_label, where = "stdlib-proactor (wine, control)", " (wine)"
    env.pop("IOCP_POLICY_BACKEND", None)
    backends = [b for b in backends_arg.split(",") if b]
    targets = args.select or ["tests"]
    jobs = [("stdlib", pytest_args("stdlib", args.pytest_args), targets, env)]
    jobs += [(b, pytest_args(b, args.pytest_args), targets, {**env, "IOCP_POLICY_BACKEND": b}) for b in backends]
    runs = run_all(jobs, cwd=sdist, out_dir=work, parallel=parallel, launcher=launcher,
                   deadline=2400.0 if launcher is None else 1200.0)

    control = runs["stdlib"]
    print(f"SUMMARY: {SUITE} {control_label}: {control.count(PASSED)} passed, {control.count(*BAD)} failed, "
          f"{control.count(SKIPPED)} skipped")
    print_run_notes(control)
    ok = not control.incomplete
    ok = all([report(runs[b], b, control, rules, args.suggest, where) for b in backends]) and ok
    for label, run in runs.items():
        if run.meta.get("anyio") != pin.version:
            print(f"compat: {SUITE}: the {label} run imported anyio {run.meta.get('anyio')}, not {pin.version}")
            ok = False
    print(f"compat: {SUITE}: {'OK' if ok else 'FAILED'} (logs in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
