#!/usr/bin/env bash
# Compat step (issue 6): uvloop's and anyio's own test suites on our loop.
#
#   bash .ci/steps/compat.sh            (from .ci/run: CI_STEPS="compat", or by hand)
#
# Installs what it needs into venvs under $WORK (exported by .ci/run; a new
# temp dir otherwise), runs compat/uvloop/run.py and compat/anyio/run.py side
# by side, and prints their reports.  One "SUMMARY: " line per suite and loop:
#   SUMMARY: uvloop-suite io_uring: P passed, F failed, E excluded, X expected failures (listed), S skipped
#   SUMMARY: anyio-suite io_uring: P passed, F failed, S skipped; D pass on stdlib but not here (L listed, U unlisted)
# (and the same for the emulated backend and the stdlib control runs).
# Exits non-zero if a suite misses its criteria (see docs/compat.md).
#
# COMPAT_PYTHON=/path/to/python   interpreter for the venvs (default: 3.11)
# COMPAT_BACKENDS=io_uring,emulated
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${WORK:-$(mktemp -d /tmp/iocp-compat.XXXXXX)}
C=$WORK/compat
mkdir -p "$C"
BACKENDS=${COMPAT_BACKENDS:-io_uring,emulated}
START=$(date +%s)

pick_python() {
  local p
  for p in "$HOME"/.pyenv/versions/3.11*/bin/python3 "$(command -v python3.11 2>/dev/null)" "$(command -v python3)"; do
    [ -n "$p" ] && [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}
PY=${COMPAT_PYTHON:-$(pick_python)} || { echo "SUMMARY: compat: FAILED (no Python 3 found)"; exit 1; }

# One wheel of iocp-policy for both venvs (pip must not build in the source tree twice at once).
echo "compat: building iocp-policy with $("$PY" -V 2>&1) ($PY)"
"$PY" -m venv "$C/venv-build" && "$C/venv-build/bin/pip" wheel -q --no-deps -w "$C/wheel" "$ROOT" \
  >"$C/build.log" 2>&1 || { tail -30 "$C/build.log"; echo "SUMMARY: compat: FAILED (building iocp-policy)"; exit 1; }
WHEEL=$(ls "$C"/wheel/iocp_policy-*.whl)

install() {  # install NAME: venv for one suite, its requirements.txt and our wheel
  local venv=$C/venv-$1
  "$PY" -m venv "$venv" && "$venv/bin/pip" install -q "$WHEEL" -r "$ROOT/compat/$1/requirements.txt" \
    >"$C/pip-$1.log" 2>&1 || { tail -30 "$C/pip-$1.log"; return 1; }
}
install uvloop & p1=$!
install anyio & p2=$!
wait $p1 || { echo "SUMMARY: uvloop-suite: FAILED (install, see $C/pip-uvloop.log)"; exit 1; }
wait $p2 || { echo "SUMMARY: anyio-suite: FAILED (install, see $C/pip-anyio.log)"; exit 1; }

# A green compat step must mean the native backend was tested.
# (From $C: in the checkout, `python -c` would import the unbuilt source tree.)
if [[ ,$BACKENDS, == *,io_uring,* ]] && ! (cd "$C" && "$C/venv-uvloop/bin/python" -c \
    "import iocp_policy; iocp_policy.new_event_loop(backend='io_uring').close()") 2>"$C/native.log"; then
  tail -5 "$C/native.log"; echo "SUMMARY: compat: FAILED (io_uring backend unavailable)"; exit 1
fi

# Both suites side by side: 2 cores, 3 pytest processes at a time.
"$C/venv-uvloop/bin/python" "$ROOT/compat/uvloop/run.py" --work "$C/uvloop" --backends "$BACKENDS" --parallel 2 \
  >"$C/uvloop.out" 2>&1 & u=$!
"$C/venv-anyio/bin/python" "$ROOT/compat/anyio/run.py" --work "$C/anyio" --backends "$BACKENDS" --parallel 1 \
  >"$C/anyio.out" 2>&1 & a=$!
urc=0; arc=0
wait $u || urc=$?
wait $a || arc=$?

# Lint our compat code (the lint step covers iocp_policy/ and tests/); after the
# suites, as anyio (which compat/anyio imports) is installed by its run.py.
lint_rc=0
"$C/venv-anyio/bin/pip" install -q mypy ruff >"$C/pip-lint.log" 2>&1 || lint_rc=1
if [ $lint_rc -eq 0 ]; then
  "$C/venv-anyio/bin/ruff" check --config "$ROOT/pyproject.toml" "$ROOT/compat" >"$C/lint.log" 2>&1 || lint_rc=1
  for dir in lib uvloop anyio wine; do  # one mypy per directory: uvloop/ and anyio/ both have a run.py
    (cd "$ROOT/compat/$dir" && MYPYPATH=$ROOT/compat/lib "$C/venv-anyio/bin/mypy" --strict --python-version 3.11 \
       --explicit-package-bases --follow-imports=silent --no-incremental ./*.py $( [ $dir = uvloop ] && echo shim/uvloop/__init__.py )) \
      >>"$C/lint.log" 2>&1 || lint_rc=1
  done
fi
if [ $lint_rc -eq 0 ]; then echo "SUMMARY: compat lint (ruff, mypy --strict on compat/): OK"
else cat "$C/lint.log"; echo "SUMMARY: compat lint (ruff, mypy --strict on compat/): FAILED"; fi

for suite in uvloop anyio; do
  echo "================ $suite suite ($C/$suite.out)"
  grep -v '^SUMMARY: ' "$C/$suite.out"
done
echo "================"
grep -h '^SUMMARY: ' "$C/uvloop.out" "$C/anyio.out"
[ $urc -eq 0 ] || echo "SUMMARY: uvloop-suite: FAILED (exit $urc)"
[ $arc -eq 0 ] || echo "SUMMARY: anyio-suite: FAILED (exit $arc)"
echo "compat: done in $(( $(date +%s) - START ))s"
[ $urc -eq 0 ] && [ $arc -eq 0 ] && [ $lint_rc -eq 0 ]
