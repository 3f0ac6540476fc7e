#!/usr/bin/env bash
# The full benchmark run behind docs/benchmarks.md.
#
#   bench/run_full.sh [extra `python -m iocp_policy bench` options, e.g. --rounds 5]
#
# Needs the package installed with the bench extra in the interpreter it uses
# ($PYTHON, default python3):  pip install -e '.[bench]'
# Writes bench/results/full-<UTC time>.{json,txt,md} and docs/benchmarks.png.
# Run it on a quiet machine: nothing else busy on its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=$(date -u +%Y%m%dT%H%MZ)
out=bench/results/full-$stamp
mkdir -p bench/results
"$PY" -m iocp_policy info --json > "$out.info.json"
"$PY" -m iocp_policy bench --full --json "$out.json" --plot docs/benchmarks.png "$@" | tee "$out.txt"
"$PY" -m iocp_policy bench --load "$out.json" --markdown > "$out.md"
echo "results: $out.json  tables: $out.txt, $out.md (Markdown for docs/benchmarks.md)  chart: docs/benchmarks.png"
