#!/usr/bin/env bash
# The project's one gate: installs what the tests need (Debian/Ubuntu, as root), starts
# RabbitMQ, then runs fmt, clippy and every test. Used by developers and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
command -v rabbitmq-server >/dev/null 2>&1 || need_pkgs+=(rabbitmq-server)
command -v rsync >/dev/null 2>&1 || need_pkgs+=(rsync)
command -v getfattr >/dev/null 2>&1 || need_pkgs+=(attr)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v bindfs >/dev/null 2>&1 || need_pkgs+=(bindfs)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
# The multi-host tests (scripts/netns-cluster.sh): ip and tc; iptables-legacy for its
# NFQUEUE delayer on kernels without netem.
{ command -v ip && command -v tc; } >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v iptables-legacy >/dev/null 2>&1 || need_pkgs+=(iptables)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: please install: ${need_pkgs[*]} (apt-get install -y ${need_pkgs[*]})" >&2
    exit 1
  fi
  echo "== installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"
# fsx (file-system exerciser) for the dosfs tests; cargo-deny for licences, sources and
# duplicate versions.
if ! command -v fsx >/dev/null 2>&1; then
  echo "== cargo install fsx"
  cargo install --quiet --locked fsx
fi
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "== cargo install cargo-deny"
  cargo install --quiet --locked cargo-deny
fi

# RabbitMQ for the cluster-mode tests.
if ! rabbitmqctl status >/dev/null 2>&1; then
  echo "== starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    rabbitmqctl status >/dev/null 2>&1 && break
    sleep 1
  done
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
if rabbitmqctl status >/dev/null 2>&1; then
  export RABBITMQ_SERVER="${RABBITMQ_SERVER:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  echo "== RabbitMQ is up: $RABBITMQ_SERVER"
else
  echo "test.sh: RabbitMQ did not start; cluster-mode tests will be skipped" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo fetch (the architecture check reads the dependency tree offline)"
cargo fetch --locked --quiet
echo "== architecture invariants (scripts/check_architecture.py)"
python3 scripts/check_architecture.py
echo "== cargo deny check licenses bans sources"
cargo deny --log-level error check licenses bans sources
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace -- --test-threads=2
echo "== pjdfstest on a dosfs mount (fs/pjdfstest/ci.sh)"
cargo build --quiet -p dosfs --bin dosfs
./fs/pjdfstest/ci.sh "${CARGO_TARGET_DIR:-target}/debug/dosfs"
