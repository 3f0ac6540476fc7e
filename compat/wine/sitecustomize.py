"""Wine only: imported at start-up by the Windows CPython that the CI steps run
under Wine (``.ci/steps/wine.sh``, ``.ci/steps/compat-wine.sh`` put this
directory on its ``sys.path``; nothing else does).

1. Wine 8.0 aborts the whole process on ``platform.uname()``: CPython 3.12+
   asks WMI through ``_wmi``, and Wine's ``propsys.dll`` lacks
   ``VariantToString`` ("Unimplemented function propsys.dll.VariantToString").
   Hiding ``_wmi`` makes ``platform`` fall back to ``sys.getwindowsversion()``,
   as it does on Windows builds without WMI.

2. With ``IOCP_WINE_LINECACHE_ONCE=1`` (set by ``compat-wine.sh`` only):
   ``linecache.checkcache(filename)`` stats a cached source file once, not on
   every call.  asyncio's debug mode, which anyio's suite turns on for every
   test, captures a stack (``traceback.extract_stack`` -> ``checkcache`` ->
   ``os.stat`` of each frame's file) for every callback scheduled; under Wine a
   ``stat`` is a round trip to ``wineserver`` (about 0.5 ms), and measured on
   anyio's ``test_synchronization.py`` 30 s of its 40 s were those ``stat``
   calls.  Source files do not change while the suite runs (pytester writes its
   files under new paths), so the cache stays right; the same on every loop.

3. ``IOCP_WINE_PYCACHE_PREFIX`` (a Windows path; set by ``compat-wine.sh``)
   becomes ``sys.pycache_prefix``, in the processes the suite starts too (the
   launcher scripts unset ``PYTHONPYCACHEPREFIX``, which on the host names a
   Linux path), and bytecode is written there although
   ``PYTHONDONTWRITEBYTECODE`` is set: it then never lands beside the sources
   (the checkout), this file's included.

4. ``IOCP_WINE_HIDE_MODULES=trio`` (comma-separated; set by ``compat-wine.sh``):
   those modules cannot be imported, in the processes the suite starts too, as
   if they were not installed.  The shared Wine interpreter has trio, which
   does not start under Wine (``SIO_BSP_HANDLE_SELECT`` fails with
   ``WSAEOPNOTSUPP``: ../shared/wine/README.md); the Linux runs of anyio's
   suite do not install it, and the suite then skips what needs it, with its
   own reason ("trio is not available").
"""

from __future__ import annotations

import os
import sys

sys.modules.setdefault("_wmi", None)  # type: ignore[arg-type]

if os.environ.get("IOCP_WINE_PYCACHE_PREFIX"):
    sys.pycache_prefix = os.environ["IOCP_WINE_PYCACHE_PREFIX"]
    sys.dont_write_bytecode = False

for _name in filter(None, os.environ.get("IOCP_WINE_HIDE_MODULES", "").split(",")):
    sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError

if os.environ.get("IOCP_WINE_LINECACHE_ONCE") == "1":
    import linecache

    _checkcache = linecache.checkcache
    _checked: set[str] = set()

    def _checkcache_once(filename: str | None = None) -> None:
        if filename is None:
            _checkcache()
        elif filename not in _checked:
            _checkcache(filename)
            if filename in linecache.cache:
                _checked.add(filename)

    linecache.checkcache = _checkcache_once
