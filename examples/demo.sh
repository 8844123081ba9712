#!/usr/bin/env bash
# The README's main job: start a coordinator, share a numpy array between a producer and a
# consumer process, run the example pipeline against the same store, and stop cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
workdir=$(mktemp -d)
sock="$workdir/plasma.sock"
cleanup() {
    if [ -n "${coord:-}" ] && kill -0 "$coord" 2>/dev/null; then kill -TERM "$coord"; wait "$coord" || true; fi
    rm -rf "$workdir"
}
trap cleanup EXIT

echo "== plasma-coord topology"
$PY -m plasma topology

echo "== start the coordinator on $sock"
coproc COORD { exec $PY -m plasma serve --socket "$sock" --memory 1GiB; }
coord=$COORD_PID
read -r ready <&"${COORD[0]}"
echo "coordinator: $ready (pid $coord)"

echo "== a producer and a consumer share a 64 MiB array"
$PY clients/producer.py --socket "$sock" --name demo/matrix --shape 4096,2048 --dtype float64
$PY clients/consumer.py --socket "$sock" --name demo/matrix

echo "== the example pipeline (dynamic fan-out over Arrow partitions)"
$PY -m plasma dag run examples/pipeline.yaml --socket "$sock" --record "$workdir/run.json"

echo "== store statistics"
$PY -m plasma stats --socket "$sock"

echo "== stop the coordinator (SIGTERM)"
kill -TERM "$coord"
status=0
wait "$coord" || status=$?
echo "coordinator exited with status $status; socket removed: $([ -e "$sock" ] && echo no || echo yes)"
exit "$status"
