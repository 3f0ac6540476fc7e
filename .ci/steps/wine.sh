#!/usr/bin/env bash
# CI step: the test suite on Windows CPython 3.13 under Wine.
#
# Runs tests/ with the official Windows build of CPython (python.org's
# embeddable distribution) under Wine, on all three loops the differential
# harness knows on Windows: our `iocp` backend, our `emulated` backend and
# the stdlib's ProactorEventLoop.  Set-up and caveats: ../shared/wine/README.md.
#
# Prints exactly one line starting with "SUMMARY: "; exits non-zero when the
# suite fails or cannot run.  Environment:
#   WINE_PYTEST_ARGS   extra pytest arguments (e.g. "-k afd" while developing)
#   CI_WORK / WORK     scratch directory (default: a fresh mktemp -d)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRATCH=${WORK:-${CI_WORK:-$(mktemp -d /tmp/iocp-wine.XXXXXX)}}
LOGDIR=$SCRATCH/logs
mkdir -p "$LOGDIR"
LOG=$LOGDIR/wine-pytest.log
START=$(date +%s)

summary() { echo "SUMMARY: wine iocp/emulated/proactor: $* ($(( $(date +%s) - START ))s)"; }

# 1. Wine + Windows CPython, the metadata of iocp-policy, compat/wine (the
#    sitecustomize that works around Wine's platform.uname() abort, the
#    trustme stand-in) on the Windows sys.path: .ci/lib/wine-env.sh.
. "$ROOT/.ci/lib/wine-env.sh"
if ! wine_prepare "$ROOT" "$SCRATCH" "$LOGDIR" >"$LOGDIR/wine-prepare.txt"; then
  summary "FAILED: $(tail -1 "$LOGDIR/wine-prepare.txt")"
  exit 2
fi

# 2. TLS test certificates, made now with the host's openssl (trustme needs
#    cryptography, whose native extension does not load under Wine): the
#    trustme stand-in of compat/wine serves them to tests/test_tls.py.
if python3 "$ROOT/compat/wine/trustme.py" make "$SCRATCH/trustme" >"$LOGDIR/wine-tls.log" 2>&1; then
  export IOCP_WINE_TRUSTME_DIR="Z:$(realpath "$SCRATCH/trustme" | tr / '\\')"
fi

# 3. The suite, on the differential harness's Windows loops.
#    -p no:cacheprovider keeps .pytest_cache out of the checkout;
#    PYTHONDONTWRITEBYTECODE keeps the Windows interpreter's __pycache__ out
#    of it too.
cd "$ROOT" || exit 2
export PYTHONDONTWRITEBYTECODE=1
export IOCP_TEST_REQUIRE_NATIVE=1  # a missing iocp backend is a failure, not a skip
unset IOCP_POLICY_BACKEND IOCP_TEST_LOOPS
# shellcheck disable=SC2086
timeout 1500 "$WINE_DIR/pytest.sh" -q -p no:cacheprovider -rfEs ${WINE_PYTEST_ARGS:-} tests/ \
  >"$LOG" 2>&1
rc=$?
# Wine's helper processes outlive python.exe for a few seconds; they exit by
# themselves and hold nothing of ours.

# pytest's last line: "12 passed, 3 skipped in 4.56s" (with -q, maybe ===-framed).
counts=$(grep -E '(passed|failed|errors?|skipped|deselected|no tests ran)( |,).* in [0-9.]+s' "$LOG" | tail -1 \
         | sed -E 's/^=+ //; s/ in [0-9.]+s.*$//; s/ =+$//')
if [ $rc -eq 0 ] && [ -n "$counts" ]; then
  summary "$counts"
  exit 0
fi
tail -60 "$LOG"
if [ -z "$counts" ]; then
  counts="pytest died (rc=$rc) before its summary; see $LOG"
  [ $rc -eq 124 ] && counts="timed out after 1500 s; see $LOG"
fi
summary "FAILED: $counts"
[ $rc -ne 0 ] && exit $rc
exit 1
