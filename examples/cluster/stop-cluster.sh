#!/usr/bin/env bash
# Stops the servers started by start-cluster.sh (SIGTERM, then waits), by their recorded PIDs.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DOS_CLUSTER_DIR:-./cluster-data}
for f in "$DATA"/pids/*; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$f"
done
echo "cluster stopped (data kept in $DATA)"
