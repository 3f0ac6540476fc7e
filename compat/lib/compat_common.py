"""Shared by the compat runners (``compat/uvloop/run.py``, ``compat/anyio/run.py``).

- :func:`fetch_sdist`: the pinned source distribution of a suite, fetched with
  pip at run time, checked against its sha256 and unpacked (their code is
  never committed here).
- :class:`Recorder`: a pytest plugin that writes one outcome per test id to a
  JSON file, with the exception behind each failure (type, message, and
  whether it was raised inside ``iocp_policy``).
- :class:`Rules`: the reasoned lists in a suite's ``expectations.toml``
  (``[[exclude]]`` and ``[[expected-failure]]``), matched against test ids.
- :func:`run_all`: the pytest runs of a suite in child processes, started by
  a :class:`Launcher` (this interpreter, or with :func:`wine_launcher` the
  Windows CPython under Wine, whose environment :func:`wine_env` and
  :func:`install_for_windows` prepare: ``compat/anyio/run.py --wine``).

Imported by the runners and, inside the pytest child processes, by the suite
plugins (``PYTHONPATH`` holds this directory, never ``compat/`` itself, where
the directory ``uvloop`` would pass for the uvloop package).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Outcomes a test id can have in a report.
PASSED, FAILED, ERROR, SKIPPED, XFAILED, XPASSED = "passed", "failed", "error", "skipped", "xfailed", "xpassed"
BAD = (FAILED, ERROR)


# --------------------------------------------------------------------------- sdist


@dataclass(frozen=True)
class Pin:
    """``pin.toml`` of a suite: the sdist it runs (its test dependencies are in
    ``requirements.txt`` beside it)."""

    name: str
    version: str
    sha256: str

    @classmethod
    def load(cls, path: Path) -> Pin:
        data = tomllib.loads(path.read_text())
        sdist = data["sdist"]
        return cls(sdist["name"], sdist["version"], sdist["sha256"].lower())

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sdist(pin: Pin, dest: Path) -> Path:
    """Download (once) and unpack the pinned sdist into ``dest``; return its root.

    The archive comes from PyPI through ``pip download`` and must match the
    pinned sha256, or this raises ``RuntimeError``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / pin.filename
    if not (archive.exists() and sha256_of(archive) == pin.sha256):
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", str(dest), f"{pin.name}=={pin.version}"]
        subprocess.run(cmd, check=True)
    got = sha256_of(archive)
    if got != pin.sha256:
        raise RuntimeError(f"{archive.name}: sha256 {got} does not match the pinned {pin.sha256}")
    root = dest / f"{pin.name}-{pin.version}"
    if not root.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    return root


# --------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Rule:
    """One reasoned entry of ``expectations.toml``.

    ``match`` holds test ids or ``fnmatch`` patterns (a module path matches
    every test in it); ``backends`` limits the rule to some of our backends.
    """

    kind: str
    reason: str
    match: tuple[str, ...]
    cause: str = ""
    backends: tuple[str, ...] = ()
    #: A race: the test fails only sometimes, so passing does not make the entry stale.
    flaky: bool = False

    def applies_to(self, backend: str) -> bool:
        return not self.backends or backend in self.backends

    def matches(self, test_id: str) -> bool:
        return any(_id_matches(pattern, test_id) for pattern in self.match)


def _id_matches(pattern: str, test_id: str) -> bool:
    """``pattern`` is the test id itself (ids with ``[params]`` are matched
    literally first), the module path of the test, or an ``fnmatch`` pattern."""
    if pattern == test_id or ("::" not in pattern and test_id.split("::", 1)[0] == pattern):
        return True
    return fnmatch.fnmatchcase(test_id, pattern)


CAUSES = ("missing", "bug", "stdlib", "environment", "timing")


@dataclass
class Rules:
    exclude: list[Rule] = field(default_factory=list)
    expected_failure: list[Rule] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Rules:
        data = tomllib.loads(path.read_text())
        rules = cls()
        for key, target in (("exclude", rules.exclude), ("expected-failure", rules.expected_failure)):
            for entry in data.get(key, ()):
                match = entry["match"]
                reason = entry.get("reason", "").strip()
                if not reason:
                    raise ValueError(f"{path}: an [[{key}]] entry for {match!r} states no reason")
                cause = entry.get("cause", "")
                if key == "expected-failure" and cause not in CAUSES:
                    raise ValueError(f"{path}: [[{key}]] {match!r}: cause must be one of {CAUSES}")
                target.append(Rule(key, reason, tuple([match] if isinstance(match, str) else match),
                                   cause, tuple(entry.get("backends", ())), bool(entry.get("flaky", False))))
        return rules

    def excluded(self, test_id: str, backend: str) -> Rule | None:
        return _first(self.exclude, test_id, backend)

    def expected(self, test_id: str, backend: str) -> Rule | None:
        return _first(self.expected_failure, test_id, backend)

    def stale(self, passed: Iterable[str], backend: str) -> list[str]:
        """Passing tests that a non-flaky ``[[expected-failure]]`` entry lists."""
        return sorted(t for t in passed if (rule := self.expected(t, backend)) is not None and not rule.flaky)


def _first(rules: Sequence[Rule], test_id: str, backend: str) -> Rule | None:
    for rule in rules:
        if rule.applies_to(backend) and rule.matches(test_id):
            return rule
    return None


# --------------------------------------------------------------------------- recording


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _exception_summary(exc: BaseException) -> dict[str, Any]:
    """Type and first message line of ``exc``; whether its innermost frame is in
    our package; and, if a ``NotImplementedError`` is anywhere in its chain,
    the function that raised it (``missing``: an event loop method we lack)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = bool(frames) and f"{os.sep}iocp_policy{os.sep}" in frames[-1].filename
    text = str(exc).strip()
    summary: dict[str, Any] = {"type": type(exc).__name__, "message": text.splitlines()[0][:300] if text else "",
                               "from_iocp_policy": ours, "missing": None}
    for link in _chain(exc):
        if isinstance(link, NotImplementedError):
            tb = traceback.extract_tb(link.__traceback__)
            summary["missing"] = f"{tb[-1].name}() {link}".strip() if tb else str(link)
            break
    return summary


class Recorder:
    """pytest plugin: writes a JSON-lines report as the session goes, so that a
    crash (a segfault in a native extension, an INTERNALERROR) loses nothing
    that ran before it.

    Lines: ``{"collected": [ids in run order], "excluded": {id: reason},
    "meta": {...}}`` once collection is done; ``{"id": ..., "outcome", "when",
    "exc", "longrepr"}`` per finished test (a test whose teardown fails after
    it passed counts as ``error``); ``{"finished": true, "threads_at_exit":
    [...]}`` at the end of the session.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.excluded: dict[str, str] = {}
        self.meta: dict[str, Any] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._exc: dict[tuple[str, str], dict[str, Any]] = {}
        self._file = path.open("w", encoding="utf-8")

    def _emit(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def exclude(self, test_id: str, reason: str) -> None:
        self.excluded[test_id] = reason

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._emit({"collected": [item.nodeid for item in session.items], "excluded": self.excluded,
                    "meta": self.meta})

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
        report = yield
        if call.excinfo is not None and not isinstance(call.excinfo.value, pytest.skip.Exception):
            self._exc[(item.nodeid, call.when)] = _exception_summary(call.excinfo.value)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self._pending.setdefault(report.nodeid, {"outcome": PASSED, "when": "", "exc": None,
                                                         "duration": 0.0})
        entry["duration"] = round(entry["duration"] + report.duration, 3)
        if entry["outcome"] in BAD:
            return  # the first failure of a test is the one that counts
        outcome = _outcome(report)
        if outcome is None:
            return
        if outcome in BAD:
            entry.update(outcome=outcome, when=report.when,
                         exc=self._exc.pop((report.nodeid, report.when), None),
                         longrepr=report.longreprtext[-3000:])
        elif outcome != PASSED or report.when == "call":
            entry.update(outcome=outcome, when=report.when)
            if outcome == SKIPPED and isinstance(report.longrepr, tuple):
                entry["reason"] = str(report.longrepr[2])

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        entry = self._pending.pop(nodeid, None)
        if entry is not None:
            self._emit({"id": nodeid, **entry})

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._emit({"finished": True, "threads_at_exit": _live_threads()})
        self._file.close()


def _live_threads() -> list[str]:
    """Non-daemon threads other than this one, each with its innermost frames:
    what interpreter exit will wait for."""
    frames = sys._current_frames()
    out = []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon or thread.ident is None:
            continue
        stack = traceback.extract_stack(frames.get(thread.ident)) if thread.ident in frames else []
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack[-4:]))
        out.append(f"{thread.name}: {where}")
    return out


def _outcome(report: pytest.TestReport) -> str | None:
    if hasattr(report, "wasxfail"):
        return XPASSED if report.passed else XFAILED
    if report.skipped:
        return SKIPPED
    if report.failed:
        return FAILED if report.when == "call" else ERROR
    return PASSED if report.when == "call" else None


def add_options(parser: pytest.Parser) -> None:
    """The options every suite plugin takes (``run.py`` passes them)."""
    group = parser.getgroup("compat", "iocp-policy compat runner")
    group.addoption("--compat-report", type=Path, default=None, help="write outcomes as JSON here")
    group.addoption("--compat-loop", default="stdlib", help="stdlib, or the backend of ours this run uses")
    group.addoption("--compat-expectations", type=Path, default=None, help="the suite's expectations.toml")


@dataclass
class Session:
    """What a suite plugin knows in a pytest process: where to record, which
    loop this run is about, the suite's rules."""

    recorder: Recorder
    loop: str
    rules: Rules

    @property
    def ours(self) -> bool:
        return self.loop != "stdlib"


def configure(config: pytest.Config) -> Session | None:
    """Register the recorder; ``None`` when pytest runs without ``--compat-report``
    (the suite plugin then stays out of the way)."""
    report = config.getoption("compat_report")
    if report is None:
        return None
    recorder = Recorder(Path(report))
    config.pluginmanager.register(recorder, "compat-recorder")
    path = config.getoption("compat_expectations")
    rules = Rules.load(Path(path)) if path else Rules()
    return Session(recorder, str(config.getoption("compat_loop")), rules)


# --------------------------------------------------------------------------- running


@dataclass
class Run:
    """One pytest run of a suite (one or more pytest processes) and what it recorded."""

    label: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    returncodes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ids(self, *outcomes: str) -> set[str]:
        return {tid for tid, r in self.results.items() if r["outcome"] in outcomes}

    def count(self, *outcomes: str) -> int:
        return len(self.ids(*outcomes))

    def slowest(self, n: int) -> list[tuple[float, str]]:
        return sorted(((r.get("duration", 0.0), t) for t, r in self.results.items()), reverse=True)[:n]

    #: Set when some collected tests never ran (the run was over its time
    #: limit, or crashed more often than it is continued).
    incomplete: bool = False


# A pytest run that finished its session but has not exited this long after
# is stuck at interpreter exit (typically an executor thread blocked in a call
# a failed test left behind): it is killed, and the run says so.
EXIT_GRACE = 60.0
# A pytest process that dies before its session finishes (a crash, an
# INTERNALERROR) is followed by one on the tests it had not run yet, at most
# this many times per run; the test it died in is recorded as an error.
MAX_CONTINUATIONS = 5


@dataclass
class _Job:
    """One pytest run of a suite, made of one pytest process or, after a crash,
    several (each on the tests the previous ones did not get to)."""

    label: str
    args: list[str]
    targets: list[str]
    env: Mapping[str, str]
    out_dir: Path
    deadline: float
    run: Run
    launcher: Launcher
    collected: list[str] = field(default_factory=list)
    part: int = 0
    proc: subprocess.Popen[bytes] | None = None
    report: Path = Path()
    started: float = 0.0
    finished_at: float | None = None

    def start(self, cwd: Path) -> None:
        self.part += 1
        suffix = "" if self.part == 1 else f"-part{self.part}"
        self.report = self.out_dir / f"{self.label}{suffix}.jsonl"
        log = self.out_dir / f"{self.label}{suffix}.log"
        self.report.unlink(missing_ok=True)  # a report left by an earlier run must not pass for this one's
        launcher = self.launcher
        targets = [f"@{launcher.path(Path(t[1:]))}" if t.startswith("@") else t for t in self.targets]
        cmd = [*launcher.pytest, *self.args, *targets, "--compat-report", launcher.path(self.report)]
        with log.open("wb") as f:
            f.write((" ".join(cmd) + "\n").encode())
            f.flush()
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=dict(self.env), stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL if launcher.own_session else None,
                                         start_new_session=launcher.own_session)
        self.run.logs.append(log)
        self.started = time.monotonic()
        self.finished_at = None

    def _session_finished(self) -> bool:
        if self.finished_at is None and self.report.exists():
            tail = self.report.read_bytes()[-400:]
            if b'"finished": true' in tail:
                self.finished_at = time.monotonic()
        return self.finished_at is not None

    def poll(self, t0: float) -> bool:
        """Whether the current process is over (exited, or killed as stuck or late)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        now = time.monotonic()
        if self._session_finished() and now - (self.finished_at or now) > EXIT_GRACE:
            self.run.notes.append(
                f"pytest killed {EXIT_GRACE:.0f}s after its session finished: stuck at interpreter exit")
        elif now - t0 > self.deadline:
            self.run.notes.append(f"pytest killed after {self.deadline:.0f}s: over the time limit of the run")
            self.run.incomplete = True
        else:
            return False
        if self.launcher.own_session:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the wrapper and what it started
        else:
            self.proc.kill()
        self.proc.wait()
        return True

    def absorb(self) -> list[str]:
        """Merge the current process's report into the run; return the tests
        still to run (non-empty only after a crash)."""
        assert self.proc is not None
        rc = self.proc.returncode
        self.run.returncodes.append(rc)
        finished = False
        header = False
        lines = self.report.read_text(encoding="utf-8").splitlines() if self.report.exists() else []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if "collected" in record:
                header = True
                if self.part == 1:
                    self.collected = record["collected"]
                    self.run.excluded.update(record["excluded"])
                    self.run.meta.update(record["meta"])
            elif "id" in record:
                test_id = record.pop("id")
                self.run.results[test_id] = record
            elif record.get("finished"):
                finished = True
                self.run.meta.setdefault("threads_at_exit", []).extend(record["threads_at_exit"])
        if not header:
            if self.part == 1:
                tail = self.run.logs[-1].read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.label}: pytest exited {rc} before collecting; "
                                   f"end of {self.run.logs[-1]}:\n{tail}")
            return []
        remaining = [t for t in self.collected if t not in self.run.results]
        if self.run.incomplete:
            self.run.notes.append(f"{len(remaining)} tests not run")
            return []
        if (finished and rc != 3) or not remaining:
            return []
        crashed, rest = remaining[0], remaining[1:]
        how = "an INTERNALERROR" if rc == 3 else f"exit status {rc}" if rc >= 0 else f"signal {-rc}"
        self.run.results[crashed] = {"outcome": ERROR, "when": "crash", "exc": {
            "type": "Crash", "message": f"the pytest process ended with {how} while this test ran",
            "from_iocp_policy": False, "missing": None}, "longrepr": f"see {self.run.logs[-1]}"}
        self.run.notes.append(f"pytest ended with {how} in {crashed}")
        if self.part > MAX_CONTINUATIONS and rest:
            self.run.notes.append(f"gave up after {self.part} pytest processes; {len(rest)} tests not run")
            self.run.incomplete = True
            return []
        return rest


@dataclass(frozen=True)
class Launcher:
    """How a pytest process is started: the command before pytest's arguments,
    how a path on this side is written for it, and whether it gets a session
    of its own (a wrapper script whose process group is killed as a whole;
    its stdin is then ``/dev/null``)."""

    pytest: tuple[str, ...] = (sys.executable, "-m", "pytest")
    path: Callable[[Path], str] = str
    own_session: bool = False


def run_all(jobs: Sequence[tuple[str, Sequence[str], Sequence[str], Mapping[str, str]]], *, cwd: Path,
            out_dir: Path, parallel: int, deadline: float = 2400.0, launcher: Launcher | None = None
            ) -> dict[str, Run]:
    """Run pytest once per job ``(label, args, targets, env)``, ``parallel`` at a
    time, recording into ``out_dir/LABEL*.jsonl``; return the runs by label.

    A run whose pytest process dies goes on in a new process with the tests it
    had not run (``@file`` arguments); one stuck at exit after its session, or
    past ``deadline`` seconds, is killed.  ``launcher`` starts pytest (default:
    this interpreter).
    """
    # A background job of a non-interactive shell (``cmd &`` in .ci/steps/compat.sh)
    # starts with SIGINT ignored, and exec keeps it ignored in the children; the
    # suites' signal tests send SIGINT to subprocesses and expect KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    pending = [_Job(label, list(args), list(targets), env, out_dir, deadline, Run(label), launcher or Launcher())
               for label, args, targets, env in jobs]
    running: list[tuple[_Job, float]] = []
    done: dict[str, Run] = {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            job = pending.pop(0)
            print(f"compat: starting {job.label}", flush=True)
            job.start(cwd)
            running.append((job, time.monotonic()))
        for job, t0 in list(running):
            if not job.poll(t0):
                continue
            rest = job.absorb()
            if rest:
                argsfile = out_dir / f"{job.label}-part{job.part + 1}.args"
                argsfile.write_text("".join(f"{test_id}\n" for test_id in rest))
                job.targets = [f"@{argsfile}"]
                print(f"compat: {job.label}: {job.run.notes[-1]}; going on with the {len(rest)} tests left",
                      flush=True)
                job.start(cwd)
                continue
            running.remove((job, t0))
            done[job.label] = job.run
            notes = f"; {'; '.join(job.run.notes)}" if job.run.notes else ""
            print(f"compat: {job.label} finished (pytest exit {job.run.returncodes}{notes})", flush=True)
        time.sleep(0.5)
    return done


def child_env(extra_path: Sequence[Path], **overrides: str) -> dict[str, str]:
    """The environment of a pytest child: ``extra_path`` first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(overrides)
    return env


# --------------------------------------------------------------------------- Windows CPython under Wine

#: ``compat/wine``: what the Windows interpreter under Wine gets on its
#: ``sys.path`` and Linux runs never do (a ``sitecustomize``, the trustme stand-in).
WINE_ONLY = Path(__file__).resolve().parents[1] / "wine"
REPO = Path(__file__).resolve().parents[2]
WINDOWS_WHEELS = ("--platform", "win_amd64", "--python-version", "3.13", "--implementation", "cp", "--abi", "cp313")


def wine_path(path: Path) -> str:
    """``path`` as the Windows interpreter under Wine sees it: drive ``Z:`` is ``/``."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


def wine_launcher(wine_dir: Path) -> Launcher:
    """pytest in the Windows CPython under Wine (``shared/wine/python.sh -m pytest``)."""
    return Launcher((str(wine_dir / "python.sh"), "-m", "pytest"), wine_path, own_session=True)


def pins(requirements: Path) -> dict[str, str]:
    """The ``name==version`` lines of a requirements file, by normalised name."""
    out: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def install_for_windows(requirements: Path, target: Path) -> None:
    """Install ``requirements`` (every dependency listed) into ``target`` for the
    Windows CPython 3.13 under Wine: win_amd64/cp313 or pure wheels, no
    dependency resolution (pip would evaluate markers against this host)."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
           "--target", str(target), "--upgrade", *WINDOWS_WHEELS, "--only-binary", ":all:", "--no-deps",
           "-r", str(requirements)]
    subprocess.run(cmd, check=True)


def wine_env(work: Path, python_path: Sequence[Path], hide_modules: Sequence[str] = ()) -> dict[str, str]:
    """The environment of a pytest child in the Windows CPython under Wine.

    ``sys.path`` gets the checkout (``iocp_policy``), ``compat/wine`` and
    ``python_path``, before what ``WINEPY_PYTHONPATH`` holds already; the
    trustme stand-in serves certificates made now with the host's openssl;
    bytecode goes to ``work/pycache`` (for the child processes the suite
    starts too), never beside the sources; ``hide_modules`` cannot be
    imported.  See ``compat/wine/sitecustomize.py``.
    """
    certs = work / "trustme"
    subprocess.run([sys.executable, str(WINE_ONLY / "trustme.py"), "make", str(certs)], check=True)
    env = dict(os.environ)
    paths = [str(p) for p in (WINE_ONLY, *python_path)] + env.get("WINEPY_PYTHONPATH", "").split(":")
    env.update(WINEPY_PROJECT_ROOT=str(REPO), WINEPY_PYTHONPATH=":".join(dict.fromkeys(filter(None, paths))),
               PYTHONUTF8="1", IOCP_WINE_TRUSTME_DIR=wine_path(certs),
               IOCP_WINE_PYCACHE_PREFIX=wine_path(work / "pycache"), IOCP_WINE_LINECACHE_ONCE="1",
               IOCP_WINE_HIDE_MODULES=",".join(hide_modules), PYTHONDONTWRITEBYTECODE="1")
    return env


def describe_failure(result: Mapping[str, Any]) -> str:
    """One line for a failed test: where, the exception, whether it came from us."""
    exc = result.get("exc")
    if not exc:
        last = [ln for ln in str(result.get("longrepr", "")).splitlines() if ln.startswith("E ")]
        return f"{result.get('when')}: {last[-1][1:].strip() if last else 'failed'}"[:240]
    where = " (raised in iocp_policy)" if exc["from_iocp_policy"] else ""
    missing = f" (missing: {exc['missing']})" if exc.get("missing") else ""
    return f"{result.get('when')}: {exc['type']}: {exc['message']}{where}{missing}"[:300]


def suggested_cause(result: Mapping[str, Any]) -> str:
    """A first guess at why a test failed, for ``--suggest``: ``missing`` when a
    ``NotImplementedError`` is behind it, else ``bug`` (to be checked by hand)."""
    exc = result.get("exc") or {}
    return "missing" if exc.get("missing") or "NotImplementedError" in str(result.get("longrepr", "")) else "bug"


def classify(test_ids: Iterable[str], rules: Rules, backend: str) -> tuple[dict[Rule, list[str]], list[str]]:
    """Split failing test ids into those an ``[[expected-failure]]`` entry lists
    (by entry) and the unlisted rest."""
    listed: dict[Rule, list[str]] = {}
    unlisted: list[str] = []
    for test_id in sorted(test_ids):
        rule = rules.expected(test_id, backend)
        if rule is None:
            unlisted.append(test_id)
        else:
            listed.setdefault(rule, []).append(test_id)
    return listed, unlisted


def print_run_notes(run: Run) -> None:
    """What happened to the pytest processes beyond their test outcomes."""
    for note in run.notes:
        print(f"  note: {note}")
    total = sum(r.get("duration", 0.0) for r in run.results.values())
    slow = ", ".join(f"{t.rsplit('::', 1)[-1]} {d:.0f}s" for d, t in run.slowest(3))
    print(f"  time in tests: {total:.0f}s (slowest: {slow})")
    threads = run.meta.get("threads_at_exit") or []
    if threads:
        print(f"  non-daemon threads alive when the session finished ({len(threads)}):")
        for line in threads:
            print(f"    {line}")


def print_listed(listed: Mapping[Rule, list[str]]) -> None:
    for rule, ids in listed.items():
        print(f"  expected failures [{rule.cause}] {rule.reason} ({len(ids)}):")
        for test_id in ids:
            print(f"    {test_id}")


def print_suggestions(run: Run, test_ids: Iterable[str], backend: str) -> None:
    """TOML ``[[expected-failure]]`` entries for ``test_ids``, grouped by the
    exception behind each failure, for a maintainer to check and reason."""
    groups: dict[tuple[str, str], list[str]] = {}
    for test_id in test_ids:
        result = run.results.get(test_id, {"outcome": "not run"})
        exc = result.get("exc") or {}
        what = (f"missing: {exc['missing']}" if exc.get("missing") else f"{exc['type']}: {exc['message']}"
                ) if exc else str(result.get("outcome"))
        groups.setdefault((suggested_cause(result), what), []).append(test_id)
    print(f"  suggested entries for {backend} (check each by hand before listing):")
    for (cause, what), ids in sorted(groups.items()):
        print(f'\n[[expected-failure]]\ncause = "{cause}"\nbackends = ["{backend}"]\nreason = {json.dumps(what)}')
        print("match = [\n" + "".join(f'  "{test_id}",\n' for test_id in ids) + "]")
