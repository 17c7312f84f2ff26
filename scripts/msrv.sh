#!/usr/bin/env bash
# The oldest Rust toolchain the committed Cargo.lock can build, as the
# packages in it declare: the highest `rust-version` among every package
# cargo would compile on this platform with all features (so the `bench` and
# `fake-stripe` builds count), with the package(s) that set it, and whether
# Cargo.toml's own `rust-version` is at least that. Packages that declare no
# rust-version are counted, not guessed. Exit code 1 when Cargo.toml's is
# lower. (README: Building.)
#
#   scripts/msrv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
cargo metadata --locked --format-version 1 --all-features --filter-platform "$host" |
  python3 -c '
import json, sys

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])

def key(version):  # "1.89" and "1.89.0" are the same toolchain
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

ours, declared, undeclared = None, [], []
for p in meta["packages"]:
    if p["id"] in members:
        ours = p.get("rust_version")
    elif p.get("rust_version"):
        declared.append((key(p["rust_version"]), p["rust_version"], p["name"], p["version"]))
    else:
        undeclared.append(p["name"])

top = max(d[0] for d in declared)
setters = sorted(f"{name} {version} ({rv})" for k, rv, name, version in declared if k == top)
print(f"packages: {len(declared) + len(undeclared)} ({len(undeclared)} declare no rust-version)")
print("highest rust-version: " + ".".join(map(str, top[:2] if top[2] == 0 else top)))
print("set by: " + ", ".join(setters))
if ours is None:
    print("Cargo.toml: no rust-version")
    sys.exit(1)
ok = key(ours) >= top
verdict = "ok" if ok else "lower than the lock file needs"
print(f"Cargo.toml rust-version: {ours} ({verdict})")
sys.exit(0 if ok else 1)
'
