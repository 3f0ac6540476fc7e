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
WINE_DIR=$ROOT/../shared/wine
SCRATCH=${WORK:-${CI_WORK:-$(mktemp -d /tmp/iocp-wine.XXXXXX)}}
LOGDIR=$SCRATCH/logs
mkdir -p "$LOGDIR"
LOG=$LOGDIR/wine-pytest.log
START=$(date +%s)

summary() { echo "SUMMARY: wine iocp/emulated/proactor: $* ($(( $(date +%s) - START ))s)"; }

if [ ! -x "$WINE_DIR/setup.sh" ]; then
  summary "FAILED: $WINE_DIR/setup.sh not found (../shared must sit beside the checkout)"
  exit 2
fi

# 1. Wine + Windows CPython (idempotent: about 45 s cold, 2 s when cached),
#    plus our test dependencies that are not in the shared requirements.
export WINEPY_EXTRA_REQUIREMENTS="$ROOT/.ci/wine-requirements.txt"
if ! "$WINE_DIR/setup.sh" >"$LOGDIR/wine-setup.log" 2>&1; then
  tail -30 "$LOGDIR/wine-setup.log"
  summary "FAILED: Wine set-up failed (see $LOGDIR/wine-setup.log)"
  exit 2
fi

# 2. Wine 8.0 aborts the whole process on platform.uname() (CPython 3.12+
#    asks WMI through _wmi, and Wine's propsys.dll lacks VariantToString:
#    "Unimplemented function propsys.dll.VariantToString").  Hiding _wmi
#    makes platform fall back to sys.getwindowsversion(), as it does on
#    Windows builds without WMI.  Wine only: this directory is put on the
#    Windows sys.path by this script and nowhere else.
SHIM=$SCRATCH/wine-sitecustomize
mkdir -p "$SHIM"
cat >"$SHIM/sitecustomize.py" <<'PY'
# Written by .ci/steps/wine.sh: Wine 8.0 has no propsys.VariantToString, so
# platform's WMI query kills the process.  Without _wmi, platform uses
# sys.getwindowsversion() instead.
import sys

sys.modules.setdefault("_wmi", None)
PY

# 3. No install step on Windows (nothing to compile): the project root goes
#    first on sys.path.  What an install would add besides the code is the
#    distribution metadata, i.e. the pytest11 entry point that autoloads
#    iocp_policy.pytest_plugin; write that (name, version, entry points from
#    pyproject.toml) beside the shim so importlib.metadata finds it.
if ! python3 - "$ROOT/pyproject.toml" "$SHIM" <<'PY'
import os, sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
name, version = project["name"], project["version"]
info = os.path.join(sys.argv[2], f"{name.replace('-', '_')}-{version}.dist-info")
os.makedirs(info, exist_ok=True)
with open(os.path.join(info, "METADATA"), "w") as f:
    f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
with open(os.path.join(info, "entry_points.txt"), "w") as f:
    for group, entries in project.get("entry-points", {}).items():
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n")
PY
then
  summary "FAILED: cannot read pyproject.toml (needs a host python3 >= 3.11 for tomllib)"
  exit 2
fi

# 3b. TLS test certificates, made now with the host's openssl (trustme needs
#     cryptography, whose native extension does not load under Wine): a CA and
#     a server certificate for localhost/127.0.0.1.  tests/test_tls.py reads
#     them from IOCP_TEST_TLS_DIR when trustme is not importable.
TLS_DIR=$SCRATCH/tls
mkdir -p "$TLS_DIR"
if command -v openssl >/dev/null 2>&1; then
  (
    cd "$TLS_DIR" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=iocp-policy test CA" \
      -keyout ca.key -out ca.pem -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -addext "subjectKeyIdentifier=hash" &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr &&
    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): key usage and key ids.
    printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=CA:FALSE' \
      'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
      'subjectKeyIdentifier=hash' 'authorityKeyIdentifier=keyid,issuer' >ext.cnf &&
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile ext.cnf -out server.pem
  ) >"$LOGDIR/wine-tls.log" 2>&1 && export IOCP_TEST_TLS_DIR=$TLS_DIR
fi

# 4. The suite, on the differential harness's Windows loops.
#    -p no:cacheprovider keeps .pytest_cache out of the checkout;
#    PYTHONDONTWRITEBYTECODE keeps the Windows interpreter's __pycache__ out
#    of it too.
cd "$ROOT" || exit 2
export WINEPY_PROJECT_ROOT=$ROOT
export WINEPY_PYTHONPATH=$SHIM
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUTF8=1
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
