#!/usr/bin/env bash
# Compat step, Windows part (issue 6): anyio's own test suite on our `iocp`
# backend, in the official Windows CPython 3.13 under Wine.
#
#   bash .ci/steps/compat-wine.sh      (from .ci/run: CI_STEPS="compat-wine", or by hand)
#
# Runs the tests of anyio 4.16.0 (the sdist pinned in compat/anyio/pin.toml,
# sha256 checked) twice under Wine, one pytest process at a time: on the
# stdlib's ProactorEventLoop (the control) and on our iocp backend, through
# the same loop_factory substitution as the Linux runs (compat/anyio/run.py
# --wine; docs/compat.md, "anyio under Wine (iocp)").  Prints the report and
# one line per run:
#   SUMMARY: anyio-suite stdlib-proactor (wine, control): P passed, F failed, S skipped
#   SUMMARY: anyio-suite iocp (wine): P passed, F failed, S skipped; D pass on stdlib but not here (L listed, U unlisted)
# Exits non-zero if a test passes on the control and not on iocp without a
# reasoned entry in compat/anyio/expectations.toml, or a run did not complete.
#
# Needs ../shared/wine beside the checkout and a host python3 >= 3.11 (with
# venv and openssl); installs the rest itself under $WORK (exported by
# .ci/run; a new temp dir otherwise).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/iocp-compat-wine.XXXXXX)}
C=$WORK/compat-wine
mkdir -p "$C"
START=$(date +%s)
fail() { echo "SUMMARY: anyio-suite (wine): FAILED ($*)"; exit 1; }

# 1. Wine, the Windows CPython and what every Wine step puts on its sys.path.
. "$ROOT/.ci/lib/wine-env.sh"
wine_prepare "$ROOT" "$C" "$C" >"$C/wine-prepare.txt" || { cat "$C/wine-prepare.txt"; fail "$(tail -1 "$C/wine-prepare.txt")"; }

# 2. The host side of the runner (compat/anyio/run.py --wine): fetches the
#    sdist, installs compat/anyio/requirements-wine.txt for Windows, makes the
#    trustme stand-in's certificates, starts the Windows pytest processes and
#    compares their reports.  It needs pytest (compat_common is a pytest
#    plugin too; the version of requirements.txt) and pip.
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "the host python3 is older than 3.11"
PYTEST_PIN=$(grep -E '^pytest==' "$ROOT/compat/anyio/requirements.txt")
{ python3 -m venv "$C/venv" && "$C/venv/bin/pip" install -q --disable-pip-version-check "$PYTEST_PIN"; } \
  >"$C/pip.log" 2>&1 || { tail -20 "$C/pip.log"; fail "host venv, see $C/pip.log"; }

# 3. Both runs (about 3.5 minutes each on 2 cores).
timeout 1500 "$C/venv/bin/python" "$ROOT/compat/anyio/run.py" --wine "$WINE_DIR" --work "$C/anyio" \
  >"$C/anyio.out" 2>&1
rc=$?
grep -v '^SUMMARY: ' "$C/anyio.out"
grep '^SUMMARY: ' "$C/anyio.out"
[ $rc -eq 124 ] && echo "SUMMARY: anyio-suite (wine): FAILED (timed out after 1500 s)"
[ $rc -eq 0 ] || grep -q '^SUMMARY: anyio-suite iocp' "$C/anyio.out" || echo "SUMMARY: anyio-suite (wine): FAILED (exit $rc)"
echo "compat-wine: done in $(( $(date +%s) - START ))s"
exit $rc
