#!/usr/bin/env python3
"""Checks the architecture invariants of ARCHITECTURE.md mechanically.

Run from anywhere; exits 1 with one line per violation. What it checks:

1. Crate layering (declared dependencies, from `cargo metadata`): the leaves depend on no
   crate of ours; erasure and cache use no async runtime; API and data servers never depend
   on each other; the seams (store, transport, worker) sit below the servers.
2. Imports (source files under each crate's src/): axum only in `http` modules, lapin only
   in `amqp`, the Elasticsearch client only in `elastic`, rusqlite only in `sqlite`, reqwest
   only in the HTTP clients, fuser only in dosfs's `fuse` (and `mount`, which mounts but
   never sees a request or a reply); the dosfs library reaches the store only through the
   `ObjectStore` trait (the servers and the HTTP client appear only in the binary's `main.rs`
   and `cli.rs`).
3. Configuration and logging set-up only in binaries: environment variables are read and
   tracing subscribers installed only in `main.rs` or `cli.rs` files.
4. Test-only code stays out of production builds: no `test-util` feature is enabled in the
   normal (non-dev) dependency graph of the binaries.
5. Dependencies are used: every `[workspace.dependencies]` entry is used by some member, and
   every normal dependency of a member is named in that member's sources.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
problems: list[str] = []


def problem(line: str) -> None:
    problems.append(line)


def metadata() -> dict:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def rust_files(directory: Path):
    for path in sorted(directory.rglob("*.rs")):
        yield path


def with_includes(path: Path) -> str:
    """A file's text and that of the files it includes with `#[path = "…"]`."""
    text = path.read_text()
    for inc in re.findall(r'#\[path\s*=\s*"([^"]+)"\]', text):
        target = (path.parent / inc).resolve()
        if target.exists():
            text += "\n" + with_includes(target)
    return text


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def strip_comments(text: str) -> str:
    """Source without `//` comments (doc comments included), so prose does not count."""
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.splitlines())


meta = metadata()
members = {p["name"]: p for p in meta["packages"]}
ours = set(members)


def normal_deps(name: str) -> set[str]:
    return {
        d["name"]
        for d in members[name]["dependencies"]
        if d.get("kind") is None
    }


# 1. Layering ---------------------------------------------------------------------------------

LEAVES = ["dos-protocol", "dos-erasure", "dos-cache", "dos-worker"]
for leaf in LEAVES:
    inner = normal_deps(leaf) & ours
    if inner:
        problem(f"{leaf} must depend on no crate of ours, but uses {sorted(inner)}")
for sync_crate in ["dos-erasure", "dos-cache", "dos-protocol"]:
    if "tokio" in normal_deps(sync_crate):
        problem(f"{sync_crate} must not use an async runtime (it depends on tokio)")
ALLOWED_INNER = {
    "dos-store": {"dos-protocol"},
    "dos-transport": {"dos-protocol"},
    "dos-metadata": {"dos-protocol"},
    "dos-bus": {"dos-protocol", "dos-worker"},
}
for crate, allowed in ALLOWED_INNER.items():
    extra = (normal_deps(crate) & ours) - allowed
    if extra:
        problem(f"{crate} may depend only on {sorted(allowed)} of ours, but uses {sorted(extra)}")
for a, b in [("dos-api-server", "dos-data-server"), ("dos-data-server", "dos-api-server")]:
    if b in normal_deps(a):
        problem(f"{a} must not depend on {b}: they talk through dos-transport")
for crate in ["dos-api-server", "dos-data-server"]:
    if "dos-client" in normal_deps(crate):
        problem(f"{crate} must not depend on dos-client (the client library)")

# 2. Imports ----------------------------------------------------------------------------------


def src_dir(crate: str) -> Path:
    return Path(members[crate]["manifest_path"]).parent / "src"


def uses(text: str, ident: str) -> bool:
    return re.search(rf"\b{ident}::", text) is not None or re.search(
        rf"\buse\s+{ident}\b", text
    ) is not None


IMPORT_RULES = [
    # (crate identifier, where it may appear, what the rule says)
    ("axum", lambda p: p.name == "http.rs" or "http" in p.parts[-2:-1], "only http modules import axum"),
    ("lapin", lambda p: p.name == "amqp.rs", "only amqp modules import lapin"),
    ("elasticsearch", lambda p: p.name == "elastic.rs" or p.parent.name == "elastic", "only elastic modules import the Elasticsearch client"),
    ("rusqlite", lambda p: p.name == "sqlite.rs", "only the sqlite engine imports rusqlite"),
    ("reqwest", lambda p: "cluster/client/src" in str(p) or str(p).endswith("cluster/transport/src/http.rs"), "only the HTTP clients (dos-client, dos-transport's http) import reqwest"),
    ("fuser", lambda p: str(p).endswith("fs/src/fuse.rs") or str(p).endswith("fs/src/mount.rs"), "only dosfs's fuse (and mount) import fuser"),
]

for crate in sorted(ours):
    for path in rust_files(src_dir(crate)):
        text = strip_comments(path.read_text())
        for ident, allowed, rule in IMPORT_RULES:
            if uses(text, ident) and not allowed(path):
                problem(f"{rel(path)} uses {ident}: {rule}")
        # 3. Environment and subscribers only in binaries.
        binary = path.name in ("main.rs", "cli.rs")
        if not binary and re.search(r"\bstd::env::(var|var_os|vars)\b|\benv::(var|var_os|vars)\(", text):
            problem(f"{rel(path)} reads an environment variable: only main.rs/cli.rs may")
        if not binary and re.search(r"\btracing_subscriber\b", text):
            problem(f"{rel(path)} installs a tracing subscriber: only main.rs/cli.rs may")

mount = ROOT / "fs/src/mount.rs"
if re.search(r"\b(Reply\w*|Request)\b", strip_comments(mount.read_text())):
    problem("fs/src/mount.rs names fuser request or reply types: only fs/src/fuse.rs may")
for path in rust_files(ROOT / "fs/src"):
    if path.name in ("main.rs", "cli.rs"):
        continue
    text = strip_comments(path.read_text())
    for ident in ["dos_server", "dos_api_server", "dos_data_server", "dos_client"]:
        if uses(text, ident):
            problem(
                f"{rel(path)} uses {ident}: the dosfs library reaches the store only through "
                "dos_store::ObjectStore (the binary's cli.rs composes the backends)"
            )

# 4. Test-only code out of production builds ------------------------------------------------

for binary in ["dos-server", "dosfs"]:
    tree = subprocess.run(
        ["cargo", "tree", "--offline", "-p", binary, "-e", "normal,features", "--prefix", "none"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in tree.splitlines():
        if 'feature "test-util"' in line and line.split()[0] in ours:
            problem(f"{binary}'s production build enables {line.strip()}: test code in production")

# 5. Dependencies are used --------------------------------------------------------------------

workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
declared = set(workspace["workspace"]["dependencies"])
used_anywhere: set[str] = set()
for crate, pkg in members.items():
    for d in pkg["dependencies"]:
        used_anywhere.add(d.get("rename") or d["name"])
for name in sorted(declared - used_anywhere):
    problem(f"[workspace.dependencies] declares {name}, which no member uses")

for crate, pkg in sorted(members.items()):
    manifest_dir = Path(pkg["manifest_path"]).parent
    sources = "\n".join(
        strip_comments(p.read_text())
        for d in ["src"]
        for p in rust_files(manifest_dir / d)
    ) if (manifest_dir / "src").exists() else ""
    dev_sources = sources + "\n".join(
        strip_comments(with_includes(p))
        for d in ["tests", "benches", "."]
        for p in (manifest_dir / d).glob("*.rs" if d == "." else "**/*.rs")
    )
    for d in pkg["dependencies"]:
        name = d.get("rename") or d["name"]
        if name == crate:
            continue  # a crate enabling its own test-util feature for its tests
        ident = name.replace("-", "_")
        haystack = dev_sources if d.get("kind") == "dev" else sources
        if d.get("kind") == "build":
            continue
        if not re.search(rf"\b{ident}\b", haystack):
            kind = "dev-dependency" if d.get("kind") == "dev" else "dependency"
            problem(f"{crate}: {kind} {name} is never used in its sources")

if problems:
    for p in problems:
        print(f"architecture: {p}")
    sys.exit(1)
print(f"architecture: {len(members)} crates checked, every invariant holds")
