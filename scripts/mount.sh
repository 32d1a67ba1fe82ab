#!/usr/bin/env bash
# One command from a fresh clone to a mounted store: installs fuse3 (Debian/Ubuntu, as
# root), builds dosfs in release mode, and mounts MOUNTPOINT on the embedded store.
#   ./scripts/mount.sh /mnt/objects [more dosfs mount flags]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: $0 MOUNTPOINT [dosfs mount flags]" >&2
  exit 2
fi
mp=$1; shift
if ! command -v fusermount3 >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
  else
    echo "mount.sh: install fuse3 first (sudo apt-get install fuse3)" >&2
    exit 1
  fi
fi
cargo build --release -q -p dosfs -p dos-server
mkdir -p "$mp"
exec "${CARGO_TARGET_DIR:-target}/release/dosfs" mount "$mp" "$@"
