# shellcheck shell=bash
# Sourced by the CI steps that run the Windows CPython under Wine
# (.ci/steps/wine.sh, .ci/steps/compat-wine.sh).  Set-up and caveats of that
# interpreter: ../shared/wine/README.md.
#
#   wine_prepare ROOT SCRATCH LOGDIR
#
# 1. ../shared/wine/setup.sh (idempotent: about 45 s cold, 2 s when cached),
#    with our test dependencies that are not in the shared requirements
#    (.ci/wine-requirements.txt; every step passes the same file, so the shared
#    site-packages is not reinstalled from one step to the next).
# 2. No install step on Windows (nothing to compile): the checkout goes first
#    on sys.path.  What an install would add besides the code is the
#    distribution metadata, i.e. the pytest11 entry point that autoloads
#    iocp_policy.pytest_plugin; it is written (name, version, entry points from
#    pyproject.toml) into SCRATCH/wine-dist, where importlib.metadata finds it.
# 3. compat/wine goes on the Windows sys.path too: its sitecustomize works
#    around Wine's platform.uname() abort, and its trustme stand-in serves
#    certificates made with the host's openssl (see both files).
#
# Exports WINE_DIR, WINEPY_EXTRA_REQUIREMENTS, WINEPY_PROJECT_ROOT,
# WINEPY_PYTHONPATH, PYTHONUTF8 (call it in the step's own shell, not in $(...)).
# On failure, prints why on stdout (last line: the reason) and returns 2.
wine_prepare() {
  local root=$1 scratch=$2 logdir=$3
  WINE_DIR=$(cd "$root/.." && pwd)/shared/wine
  export WINE_DIR
  if [ ! -x "$WINE_DIR/setup.sh" ]; then
    echo "$WINE_DIR/setup.sh not found (../shared must sit beside the checkout)"
    return 2
  fi
  export WINEPY_EXTRA_REQUIREMENTS="$root/.ci/wine-requirements.txt"
  if ! "$WINE_DIR/setup.sh" >"$logdir/wine-setup.log" 2>&1; then
    tail -30 "$logdir/wine-setup.log"
    echo "Wine set-up failed (see $logdir/wine-setup.log)"
    return 2
  fi
  if ! python3 - "$root/pyproject.toml" "$scratch/wine-dist" <<'PY'
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
    echo "cannot read pyproject.toml (needs a host python3 >= 3.11 for tomllib)"
    return 2
  fi
  export WINEPY_PROJECT_ROOT=$root
  export WINEPY_PYTHONPATH=$root/compat/wine:$scratch/wine-dist
  export PYTHONUTF8=1
}
