#!/usr/bin/env bash
# Starts a six-data-server dos cluster on this host, as a user would: RabbitMQ, `dos-server
# setup`, six data servers (ports 23334-23339, folders ./cluster-data/data1..6) and one API
# server on 127.0.0.1:23333. `stop-cluster.sh` stops them (by the PIDs recorded here).
#
#   ./examples/cluster/start-cluster.sh            # uses target/release/dos-server
#   ES_SERVER=http://127.0.0.1:9200 ./examples/cluster/start-cluster.sh   # metadata in Elasticsearch
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${DOS_SERVER_BIN:-target/release/dos-server}
DATA=${DOS_CLUSTER_DIR:-./cluster-data}
export RABBITMQ_SERVER=${RABBITMQ_SERVER:-amqp://guest:guest@127.0.0.1:5672/%2f}
export DOS_SECRET=${DOS_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}

[ -x "$BIN" ] || cargo build --release -q -p dos-server
if ! rabbitmqctl status >/dev/null 2>&1; then
  echo "starting rabbitmq-server"
  rabbitmq-server -detached
  for _ in $(seq 1 60); do rabbitmqctl status >/dev/null 2>&1 && break; sleep 1; done
fi
mkdir -p "$DATA/pids" "$DATA/logs"
echo "$DOS_SECRET" > "$DATA/secret"
"$BIN" setup
for i in 1 2 3 4 5 6; do
  LISTEN_ADDRESS=127.0.0.1:$((23333 + i)) STORAGE_ROOT="$DATA/data$i" \
    "$BIN" data >"$DATA/logs/data$i.log" 2>&1 &
  echo $! > "$DATA/pids/data$i"
done
LISTEN_ADDRESS=127.0.0.1:23333 DOS_METADATA_DB="$DATA/metadata.sqlite" \
  "$BIN" api >"$DATA/logs/api.log" 2>&1 &
echo $! > "$DATA/pids/api"
for _ in $(seq 1 100); do
  live=$(curl -s http://127.0.0.1:23333/health | sed -n 's/.*"live_data_servers":\([0-9]*\).*/\1/p')
  [ "${live:-0}" -ge 6 ] && break
  sleep 0.2
done
echo "cluster up: http://127.0.0.1:23333 (${live:-0} data servers live); logs in $DATA/logs"
