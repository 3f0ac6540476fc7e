"""Smoke test of ``python -m iocp_policy bench``: the smallest configuration
(our loop and the stdlib loop, one round, sub-second windows) and the shape
of what it prints.  No timing thresholds: the numbers are not checked, only
that they are there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iocp_policy._bench import _cli, _loadgen, _loops

OURS = _loops.NATIVE if _loops.unavailable_reason(_loops.NATIVE) is None else "emulated"
NET = "echo-sock-1k-c10"
MICRO = "call_soon-chained"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd away from the checkout: the children must find the same iocp_policy as this process.
    return subprocess.run([sys.executable, "-m", "iocp_policy", "bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def smallest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    proc = bench("--loops", f"asyncio,{OURS}", "--workloads", f"{NET},{MICRO}", "--rounds", "1",
                 "--warmup", "0.1", "--duration", "0.3",
                 # a small fixed size: under Wine one ProactorEventLoop iteration costs ~0.1 ms
                 "--micro-ops", "5000", "--json", str(out), "--no-progress", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout, tmp


def test_json_shape(smallest_run: tuple[dict[str, Any], str, Path]) -> None:
    data, _, _ = smallest_run
    assert data["schema"] == 1
    assert data["config"]["rounds"] == 1
    assert {"cpu", "cores", "kernel", "python"} <= data["machine"].keys()
    assert list(data["loops"]) == ["asyncio", OURS]
    assert all(info["available"] and info["version"] for info in data["loops"].values())
    assert data["loops"][OURS]["ours"] and not data["loops"]["asyncio"]["ours"]
    names = [w["name"] for w in data["workloads"]]
    expect_net = _loadgen.unavailable_reason() is None
    assert names == ([NET, MICRO] if expect_net else [MICRO])
    assert len(data["runs"]) == 2 * len(names)
    for run in data["runs"]:
        assert run["ok"], run
        assert run["value"] > 0 and run["seconds"] > 0
        assert run["loop_class"]
    assert {(s["workload"], s["loop"]) for s in data["summary"]} == {(w, lp) for w in names
                                                                   for lp in ("asyncio", OURS)}
    if expect_net:
        net = [r for r in data["runs"] if r["workload"] == NET]
        assert all(r["p50_us"] > 0 and r["p99_us"] >= r["p50_us"] and r["client_cpu_s"] is not None
                   for r in net)
    else:
        assert any(NET in note for note in data["notes"])


def test_text_tables(smallest_run: tuple[dict[str, Any], str, Path]) -> None:
    data, stdout, _ = smallest_run
    assert "Throughput per second: median of 1 rounds" in stdout
    assert "Throughput ratio: median over median (x asyncio" in stdout
    assert "Per-CPU-second ratio" in stdout
    ratios = stdout.split("Throughput ratio")[1].split("\n\n")[0]
    header = ratios.splitlines()[1].split()
    assert header == ["workload", "asyncio", f"{OURS}*"]
    row = next(line for line in ratios.splitlines() if line.startswith(MICRO)).split()
    assert row[1] == "1.00"  # asyncio over itself (uvloop did not run: no second ratio)
    assert float(row[2]) > 0


def test_load_markdown_and_plot(smallest_run: tuple[dict[str, Any], str, Path]) -> None:
    _, _, tmp = smallest_run
    proc = bench("--load", str(tmp / "results.json"), "--markdown", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert f"| workload | asyncio | {OURS}* |" in proc.stdout
    if os.environ.get("IOCP_TEST_UNDER_ASAN") == "1":
        pytest.skip("matplotlib's C++ exceptions trip a preloaded AddressSanitizer")
    pytest.importorskip("matplotlib")
    png = tmp / "chart.png"
    proc = bench("--load", str(tmp / "results.json"), "--plot", str(png), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_peer_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _loops.LoopSpec("uvloop", False, "no_such_module_for_bench_test", "uvloop")
    monkeypatch.setitem(_loops.SPECS, "uvloop", spec)
    notes: list[str] = []
    table = _cli._loop_table(["asyncio", "uvloop"], notes)
    assert table["asyncio"]["available"] and not table["uvloop"]["available"]
    assert len(notes) == 1 and notes[0].startswith("skipped loop uvloop: not installed")


def test_list_and_bad_arguments(tmp_path: Path) -> None:
    proc = bench("--list", cwd=tmp_path)
    assert proc.returncode == 0 and NET in proc.stdout and "loops: asyncio" in proc.stdout
    proc = bench("--loops", "nosuchloop", cwd=tmp_path)
    assert proc.returncode != 0 and "unknown loop" in proc.stderr
