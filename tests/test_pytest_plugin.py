"""The pytest plugin (``iocp_policy.pytest_plugin``, a ``pytest11`` entry point).

Each test runs an inner pytest session (pytester) whose tests print the class
of the loop they run on; the outer test asserts those classes and that the
inner tests ran and passed.  Without opting in, nothing changes.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import re

import pytest

import iocp_policy
from iocp_policy.pytest_plugin import ANYIO_BACKEND, anyio_backend_on_our_loop

pytest_plugins = ["pytester"]

OURS = f"{iocp_policy.Loop.__module__}.{iocp_policy.Loop.__qualname__}"
PYTEST_ASYNCIO = tuple(int(p) for p in importlib.metadata.version("pytest-asyncio").split(".")[:2])
HAS_ANYIO = importlib.util.find_spec("anyio") is not None
needs_anyio = pytest.mark.skipif(not HAS_ANYIO, reason="anyio is not installed in this environment")

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
{extra}
"""

ASYNCIO_TESTS = """
import asyncio
import pytest
import pytest_asyncio

def show(where):
    loop = asyncio.get_running_loop()
    print(f"LOOP {where} {type(loop).__module__}.{type(loop).__qualname__}")

@pytest_asyncio.fixture
async def async_fixture():
    show("fixture")
    return 1

@pytest.mark.asyncio
async def test_function(async_fixture):
    show("test_function")

class TestClass:
    @pytest.mark.asyncio
    async def test_method(self):
        show("test_method")
"""

ANYIO_CONFTEST = """
import pytest

@pytest.fixture(params=[{params}])
def anyio_backend(request):
    return request.param
"""

ANYIO_TESTS = """
import asyncio
import pytest

pytestmark = pytest.mark.anyio

async def test_anyio(anyio_backend_name):
    loop = asyncio.get_running_loop()
    print(f"LOOP anyio-debug={loop.get_debug()} {type(loop).__module__}.{type(loop).__qualname__}")
"""


def loops_seen(result: pytest.RunResult) -> list[str]:
    """``["where class", ...]`` from the inner tests' LOOP lines."""
    return [f"{m.group(1)} {m.group(2)}" for m in re.finditer(r"LOOP (\S+) (\S+)", result.stdout.str())]


def collected_ids(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", *args)
    return [line for line in result.stdout.lines if "::" in line]


def _module_name(pytester: pytest.Pytester) -> str:
    (module,) = pytester.path.glob("test_*.py")
    return module.stem


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-s", "-v", "-p", "no:cacheprovider", *args)


def stdlib_loop_name() -> str:
    loop = asyncio.new_event_loop()
    try:
        return f"{type(loop).__module__}.{type(loop).__qualname__}"
    finally:
        loop.close()


@pytest.mark.parametrize("how", ["option", "ini"])
def test_pytest_asyncio_tests_and_fixtures_run_on_our_loop(pytester: pytest.Pytester, how: str) -> None:
    pytester.makeini(INI.format(extra="iocp_loop = true" if how == "ini" else ""))
    pytester.makepyfile(ASYNCIO_TESTS)
    result = run_inner(pytester, *(["--iocp-loop"] if how == "option" else []))
    result.assert_outcomes(passed=2)
    assert sorted(loops_seen(result)) == sorted(
        [f"fixture {OURS}", f"test_function {OURS}", f"test_method {OURS}"])
    # One factory: the test ids are those of a run without the plugin.
    module = _module_name(pytester)
    assert collected_ids(pytester, "--iocp-loop") == collected_ids(pytester) == [
        f"{module}.py::test_function", f"{module}.py::TestClass::test_method"]


def test_without_opting_in_nothing_changes(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(ASYNCIO_TESTS)
    result = run_inner(pytester)
    result.assert_outcomes(passed=2)
    stdlib = stdlib_loop_name()
    assert sorted(loops_seen(result)) == sorted(
        [f"fixture {stdlib}", f"test_function {stdlib}", f"test_method {stdlib}"])


def test_ini_false_and_no_option_is_off(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra="iocp_loop = false"))
    pytester.makepyfile(ASYNCIO_TESTS)
    result = run_inner(pytester)
    result.assert_outcomes(passed=2)
    assert OURS not in " ".join(loops_seen(result))


@pytest.mark.skipif(PYTEST_ASYNCIO < (1, 4), reason="pytest-asyncio < 1.4 has no loop_factories")
def test_marker_selects_our_factory_by_name(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra="iocp_loop = true"))
    pytester.makepyfile("""
        import asyncio, pytest

        @pytest.mark.asyncio(loop_factories=["iocp"])
        async def test_named():
            print("LOOP named", type(asyncio.get_running_loop()).__qualname__)
    """)
    result = run_inner(pytester)
    result.assert_outcomes(passed=1)
    assert loops_seen(result) == ["named Loop"]


def test_opting_in_without_pytest_asyncio_is_harmless(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_sync():
            pass
    """)
    result = run_inner(pytester, "-p", "no:asyncio", "--iocp-loop")
    result.assert_outcomes(passed=1)


def test_fixtures_available_without_opting_in(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile("""
        import asyncio
        import iocp_policy

        def test_event_loop(iocp_event_loop):
            assert type(iocp_event_loop) is iocp_policy.Loop
            assert iocp_event_loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"

        def test_factory(iocp_loop_factory):
            loop = iocp_loop_factory()
            try:
                assert type(loop) is iocp_policy.Loop
            finally:
                loop.close()
    """)
    result = run_inner(pytester)
    result.assert_outcomes(passed=2)


def test_event_loop_fixture_is_closed_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile("""
        seen = []

        def test_one(iocp_event_loop):
            seen.append(iocp_event_loop)

        def test_two():
            assert seen[0].is_closed()
    """)
    run_inner(pytester).assert_outcomes(passed=2)


@needs_anyio
@pytest.mark.parametrize("opt_in", [True, False], ids=["opted-in", "not-opted-in"])
def test_anyio_asyncio_backend_runs_on_our_loop(pytester: pytest.Pytester, opt_in: bool) -> None:
    pytester.makeconftest(ANYIO_CONFTEST.format(params='"asyncio", ("asyncio", {"debug": True})'))
    pytester.makepyfile(ANYIO_TESTS)
    result = run_inner(pytester, "-p", "no:asyncio", *(["--iocp-loop"] if opt_in else []))
    result.assert_outcomes(passed=2)
    loop = OURS if opt_in else stdlib_loop_name()
    assert sorted(loops_seen(result)) == [f"anyio-debug=False {loop}", f"anyio-debug=True {loop}"]


@needs_anyio
def test_anyio_default_backend_fixture_runs_on_our_loop(pytester: pytest.Pytester) -> None:
    """anyio's own ``anyio_backend`` fixture (no conftest override), asyncio only."""
    pytester.makepyfile(ANYIO_TESTS.replace("async def test_anyio(anyio_backend_name):", """
@pytest.fixture
def anyio_backend():
    return "asyncio"

async def test_anyio(anyio_backend_name):"""))
    result = run_inner(pytester, "-p", "no:asyncio", "--iocp-loop")
    result.assert_outcomes(passed=1)
    assert loops_seen(result) == [f"anyio-debug=False {OURS}"]


@needs_anyio
def test_anyio_explicit_loop_factory_is_left_alone(pytester: pytest.Pytester) -> None:
    stdlib = '("asyncio", {"loop_factory": __import__("asyncio").new_event_loop})'
    pytester.makeconftest(ANYIO_CONFTEST.format(params=stdlib))
    pytester.makepyfile(ANYIO_TESTS)
    result = run_inner(pytester, "-p", "no:asyncio", "--iocp-loop")
    result.assert_outcomes(passed=1)
    assert loops_seen(result) == [f"anyio-debug=False {stdlib_loop_name()}"]


def test_anyio_backend_rewrite_rules() -> None:
    assert anyio_backend_on_our_loop("asyncio") == ANYIO_BACKEND
    assert anyio_backend_on_our_loop(("asyncio", {"debug": True})) == (
        "asyncio", {"debug": True, "loop_factory": iocp_policy.new_event_loop})
    for unchanged in ("trio", ("trio", {}), ("asyncio", {"use_uvloop": True}),
                      ("asyncio", {"loop_factory": asyncio.new_event_loop}), "curio"):
        assert anyio_backend_on_our_loop(unchanged) is unchanged
