#!/usr/bin/env python3
"""Runs the C pjdfstest (built outside the repository) in a directory of a mounted filesystem
and compares every failing case with `expected-failures.txt`.

    run.py --suite BUILD/pjdfstest --dir MOUNT/pjd [--expected FILE] [--write FILE]

Each test file (`tests/<group>/<nn>.t`) runs on its own, in a fresh directory, as root; a
case is `<group>/<nn>.t <number>`. The run fails (exit status 1) when a case fails that the
list does not name, when a listed case passes (the list must stay true), or when a test file
ends before its plan (a hang or a crash counts as its missing cases failing). `--write`
writes the failing cases of this run to FILE (reasons are kept from --expected where known).
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

CASE = re.compile(r"^(not ok|ok) (\d+)(.*)$")
PLAN = re.compile(r"^1\.\.(\d+)")


def run_file(path: Path, workdir: Path, timeout: int) -> tuple[dict[int, str], int, str]:
    """Runs one test file; returns {case: 'ok' | 'not ok …'}, the planned count, a note."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["/bin/sh", str(path)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            errors="replace",
        ).stdout
        note = ""
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        note = f"timed out after {timeout} s"
    results: dict[int, str] = {}
    planned = 0
    for line in out.splitlines():
        m = PLAN.match(line)
        if m:
            planned = int(m.group(1))
            continue
        m = CASE.match(line)
        if m:
            results[int(m.group(2))] = m.group(1) + m.group(3)
    return results, planned, note


TRIED = re.compile(r"tried '(?:-u \d+ -g \d+(?: -\S+)* )?([a-z_]+)([^']*)', expected (.+?), got (.*)$")


def reason(message: str) -> str:
    """Why a case fails, in words that stay the same from run to run (the suite's file
    names are random)."""
    m = TRIED.search(message)
    if not m:
        if "missing" in message:
            return "the test file ended before this case"
        # Only `test_check` prints a bare `not ok`: the suite's comparisons of two stats
        # (times, and link counts after a link).
        return "a comparison of two stats fails (times, or link counts after a link)"
    op, args, expected, got = m.group(1), m.group(2), m.group(3), m.group(4).strip()
    as_other = "-u " in message
    if op == "link":
        return f"link gave {got}, expected {expected}"
    if got == "ENAMETOOLONG" and len(args) > 4096:
        return "a path over the store's name limit (8,192 bytes) gives ENAMETOOLONG"
    if op in ("stat", "lstat", "fstat") and "nlink" in args:
        return "link counts: a directory counts 2 whatever its subdirectories"
    if got in ("ENOENT", "EEXIST") and expected == "0":
        return f"{op} gave {got}: follows from an earlier failed step of the same file"
    if op in ("chown", "lchown", "fchown"):
        return f"ownership rules: {op} gave {got}, expected {expected}"
    if op in ("stat", "lstat", "fstat") and ("uid" in args or "gid" in args):
        return "ownership: uid or gid not what POSIX gives"
    if op in ("stat", "lstat", "fstat") and ("ctime" in args or "mtime" in args or "atime" in args):
        return "timestamps: ctime and directory times do not follow POSIX"
    if op in ("stat", "lstat", "fstat") and "mode" in args:
        return "mode bits: setuid/setgid/sticky not kept or cleared as POSIX says"
    if op in ("lstat", "stat") and "inode" in args:
        return "an entry is still visible after a rename over it, or has another inode"
    if as_other:
        return f"permission checks as another user ({op} gave {got}, expected {expected})"
    return f"{op} gave {got}, expected {expected}"


def load_expected(path: Path) -> dict[str, str]:
    """`<file> <case>  <reason>` lines; `#` starts a comment line."""
    expected: dict[str, str] = {}
    if not path.exists():
        return expected
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            continue
        expected[f"{parts[0]} {parts[1]}"] = parts[2] if len(parts) > 2 else ""
    return expected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, type=Path, help="the built pjdfstest folder")
    ap.add_argument("--dir", required=True, type=Path, help="an empty directory on the mount")
    ap.add_argument("--expected", type=Path, default=Path(__file__).with_name("expected-failures.txt"))
    ap.add_argument("--write", type=Path, help="write this run's failing cases here")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per test file")
    ap.add_argument("--only", help="run only test files whose path contains this")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("pjdfstest: must run as root", file=sys.stderr)
        return 2
    tests = sorted((args.suite / "tests").rglob("*.t"))
    if args.only:
        tests = [t for t in tests if args.only in str(t)]
    if not tests:
        print(f"pjdfstest: no test files under {args.suite}/tests", file=sys.stderr)
        return 2
    expected = load_expected(args.expected)
    failing: dict[str, str] = {}
    passed = total = 0
    started = time.monotonic()
    for i, t in enumerate(tests):
        rel = str(t.relative_to(args.suite / "tests"))
        results, planned, note = run_file(t, args.dir / f"t{i:03d}", args.timeout)
        count = max(planned, max(results, default=0))
        for n in range(1, count + 1):
            total += 1
            r = results.get(n)
            key = f"{rel} {n}"
            # A TODO case's failure is the suite's known failure on this OS (TAP, as
            # `prove` counts it): ext4 gives the same, so it is not dosfs's.
            if r is not None and (r.startswith("ok") or "# TODO" in r):
                passed += 1
            else:
                failing[key] = (r or f"not ok - missing ({note or 'the file ended early'})")
        if sys.stderr.isatty():
            print(f"\r{i + 1}/{len(tests)} files, {passed}/{total} cases pass", end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    secs = time.monotonic() - started
    print(f"pjdfstest: {passed} of {total} cases pass, {len(failing)} fail ({len(tests)} files, {secs:.0f} s)")

    unexpected = sorted(k for k in failing if k not in expected)
    fixed = sorted(k for k in expected if k not in failing and k.split()[0] in
                   {str(t.relative_to(args.suite / "tests")) for t in tests})
    for k in unexpected:
        print(f"UNEXPECTED FAILURE {k}: {failing[k]}")
    for k in fixed:
        print(f"NOW PASSES (remove it from {args.expected.name}): {k}")
    if args.write:
        lines = ["# pjdfstest cases that fail on dosfs: <file> <case> <reason>. Kept true by CI",
                 "# (fs/pjdfstest/run.py fails when a case not listed fails or a listed one passes)."]
        def order(k: str):
            f, n = k.split()
            return (f, int(n))
        for k in sorted(failing, key=order):
            lines.append(f"{k} {expected.get(k) or reason(failing[k])}")
        args.write.write_text("\n".join(lines) + "\n")
    return 1 if unexpected or fixed else 0


if __name__ == "__main__":
    sys.exit(main())
