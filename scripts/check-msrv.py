#!/usr/bin/env python3
"""Checks the workspace's minimum supported Rust version (rust-version in Cargo.toml) without
the old toolchain, which CI machines cannot fetch:

* every crate the workspace resolves to on Linux declares a rust-version no newer than ours
  (a dependency bump is the usual way an MSRV breaks);
* our own code is held to it by clippy's `incompatible_msrv` lint (std APIs stabilised after
  rust-version), which the lint step runs with -D warnings.

When the toolchain is exactly rust-version, building is the real check and this one agrees.
Usage: scripts/check-msrv.py   (from the repository root)
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(
        subprocess.check_output(
            [
                "cargo",
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--filter-platform",
                "x86_64-unknown-linux-gnu",
            ]
        )
    )
    members = set(meta["workspace_members"])
    ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
    ours.discard(None)
    if len(ours) != 1:
        print(f"msrv: workspace members declare {sorted(ours)}; expected one rust-version")
        return 1
    msrv = ours.pop()
    resolved = {node["id"] for node in meta["resolve"]["nodes"]}
    newer = []
    for p in meta["packages"]:
        if p["id"] in resolved and p["id"] not in members and p.get("rust_version"):
            if version(p["rust_version"]) > version(msrv):
                newer.append(f"{p['name']} {p['version']} needs Rust {p['rust_version']}")
    rustc = subprocess.check_output(["rustc", "--version"], text=True).split()[1]
    print(f"msrv: rust-version {msrv}; toolchain {rustc}; {len(resolved)} crates resolved")
    if newer:
        print("msrv: these dependencies need a newer Rust than rust-version:")
        for line in sorted(newer):
            print(f"  {line}")
        print("msrv: raise rust-version (and say why in Cargo.toml) or keep the older versions")
        return 1
    print("msrv: every dependency builds with it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
