#!/usr/bin/env bash
# The classic C pjdfstest on a real dosfs mount: builds the suite from the vendored tarball
# into a temporary folder (nothing of it enters the repository), mounts dosfs (embedded
# store, its own data and cache folders), runs every test file (run.py) and compares the
# failing cases with fs/pjdfstest/expected-failures.txt. Exit status 1 when a case not on the
# list fails or a listed case passes. As root (pjdfstest needs it).
#
#   fs/pjdfstest/ci.sh [DOSFS_BINARY]        default: target/debug/dosfs
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
dosfs=${1:-target/debug/dosfs}
case $dosfs in /*) ;; *) dosfs="$repo/$dosfs" ;; esac
tarball=${PJDFSTEST_TARBALL:-}
if [ -z "$tarball" ]; then
  for t in "$repo"/../shared/vendor/pjdfstest-*.tar.gz /work/shared/vendor/pjdfstest-*.tar.gz; do
    if [ -f "$t" ]; then tarball=$t; break; fi
  done
fi
if [ -z "$tarball" ] || [ ! -f "$tarball" ]; then
  echo "pjdfstest: no tarball (set PJDFSTEST_TARBALL or put it in ../shared/vendor)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "pjdfstest: must run as root" >&2
  exit 1
fi
need=()
for tool in autoreconf make gcc prove; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing autoconf automake gcc make perl (for pjdfstest)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq autoconf automake gcc make perl >/dev/null
fi

work=$(mktemp -d /tmp/dos-pjdfstest.XXXXXX)
mnt="$work/mnt"
pid=""
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then
    "$dosfs" umount "$mnt" >/dev/null 2>&1 || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== pjdfstest: building $(basename "$tarball") in $work"
tar -xzf "$tarball" -C "$work"
(cd "$work/pjdfstest" && autoreconf -ifs >/dev/null 2>&1 && ./configure >/dev/null && make pjdfstest >/dev/null)

mkdir -p "$mnt"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$dosfs" mount "$mnt" --data-dir "$work/data" --cache-dir "$work/cache" --listen "127.0.0.1:$port" >/dev/null
mkdir "$mnt/pjd"
echo "== pjdfstest: running on a dosfs mount"
status=0
python3 "$repo/fs/pjdfstest/run.py" --suite "$work/pjdfstest" --dir "$mnt/pjd" \
  --expected "$repo/fs/pjdfstest/expected-failures.txt" --write "$work/failures.txt" || status=$?
if [ "$status" -ne 0 ]; then
  echo "pjdfstest: this run's failing cases are in fs/pjdfstest/expected-failures.txt's format:" >&2
  echo "  (rerun with --write to refresh the list after a change that fixes cases)" >&2
fi
exit "$status"
