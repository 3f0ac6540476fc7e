"""pytest plugin for uvloop's test suite on iocp_policy (``run.py`` loads it with ``-p``).

uvloop's test base runs each test class twice: a ``UVTestCase`` variant
(``uvloop.new_event_loop()``, which the stand-in ``uvloop`` module on
``PYTHONPATH`` makes ours) and an ``AIOTestCase`` variant (the stdlib loop).
One pytest run is about one loop (``--compat-loop``):

- ``stdlib``: the ``AIOTestCase`` variants only: the control.
- a backend of ours: every other test (the ``UVTestCase`` variants and the
  plain ``unittest.TestCase`` classes that use the ``uvloop`` module), less the
  ``[[exclude]]`` entries of ``expectations.toml`` (recorded with their reason).

Modules excluded as a whole are not even imported, on either run (some
import ``uvloop.loop``, which the stand-in does not have): on ours their
tests are counted from the source and recorded as excluded.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from compat_common import Session, add_options, configure

_session: Session | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    global _session
    _session = configure(config)


def _module_rule_reason(path: Path, config: pytest.Config) -> str | None:
    if _session is None:
        return None
    try:
        rel = path.relative_to(config.rootpath).as_posix()
    except ValueError:
        return None
    for rule in _session.rules.exclude:
        if rule.applies_to(_session.loop) and rel in rule.match:
            return rule.reason
    return None


def _test_ids_in_source(path: Path, rel: str) -> list[str]:
    """``rel::Class::test_x`` for each test method of each ``Test*`` class in the file."""
    tree = ast.parse(path.read_text())
    ids = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            ids += [f"{rel}::{node.name}::{fn.name}" for fn in node.body
                    if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and fn.name.startswith("test")]
    return ids


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    reason = _module_rule_reason(collection_path, config)
    if reason is None or _session is None:
        return None
    rel = collection_path.relative_to(config.rootpath).as_posix()
    if _session.ours and _selected(rel, config):
        for test_id in _test_ids_in_source(collection_path, rel):
            _session.recorder.exclude(test_id, reason)
    return True


def _selected(rel: str, config: pytest.Config) -> bool:
    """Whether the command line asked for the module ``rel`` (pytest also offers
    the modules beside a selected one to ``pytest_ignore_collect``)."""
    for arg in config.args:
        path = arg.split("::", 1)[0].rstrip("/")
        if rel == path or rel.startswith(path + "/"):
            return True
    return False


def _is_control(item: pytest.Item) -> bool:
    testbase = sys.modules.get("uvloop._testbase")
    cls = getattr(item, "cls", None)
    return testbase is not None and isinstance(cls, type) and issubclass(cls, testbase.AIOTestCase)


def _control_classes(items: list[pytest.Item]) -> dict[str, str]:
    """``{UV class id: AIO class id}``: the asyncio sibling of each uvloop variant
    (same module, same test mixins)."""
    testbase = sys.modules.get("uvloop._testbase")
    if testbase is None:
        return {}
    variant_bases = (testbase.UVTestCase, testbase.AIOTestCase)
    by_mixins: dict[tuple[str, tuple[type, ...]], str] = {}
    uv: dict[str, tuple[str, tuple[type, ...]]] = {}
    for item in items:
        cls = getattr(item, "cls", None)
        if not isinstance(cls, type) or item.parent is None:
            continue
        module = item.nodeid.split("::", 1)[0]
        mixins = tuple(b for b in cls.__bases__ if b not in variant_bases)
        if issubclass(cls, testbase.AIOTestCase):
            by_mixins[(module, mixins)] = item.parent.nodeid
        elif issubclass(cls, testbase.UVTestCase) and mixins:
            uv[item.parent.nodeid] = (module, mixins)
    return {uv_id: by_mixins[key] for uv_id, key in uv.items() if key in by_mixins}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _session is None:
        return
    _session.recorder.meta["control_class"] = _control_classes(items)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        if _is_control(item) == _session.ours:
            drop.append(item)
            continue
        rule = _session.rules.excluded(item.nodeid, _session.loop) if _session.ours else None
        if rule is not None:
            _session.recorder.exclude(item.nodeid, rule.reason)
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
