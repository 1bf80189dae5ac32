#!/usr/bin/env python3
"""Unused-dependency check for the workspace, offline and in about a second.

For every member crate, each dependency named in [dependencies], [dev-dependencies] and
[build-dependencies] must be referenced from that crate's Rust sources by its crate name
(`name::`, `use name`, `extern crate name`, or `name` in a path such as `#[serde(crate = ...)]`).
A dependency used only to turn on a feature of another crate, or through a macro that names it
for us, is listed in the crate's Cargo.toml as

    [package.metadata.unused-deps]
    ignored = ["x25519-dalek"]  # with a comment saying why

Exit status 1 lists each unused dependency and the file to edit. This is a text search, like
cargo-machete's: it can miss a dependency used only in a string, never one that is used.
"""
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def members():
    ws = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for pattern in ws["workspace"]["members"]:
        for path in sorted(ROOT.glob(pattern)):
            if (path / "Cargo.toml").is_file():
                yield path


PATH_ATTR = re.compile(r'#\[path\s*=\s*"([^"]+)"\]')


def sources(crate):
    """The crate's Rust files, plus files it pulls in with `#[path = "..."]` from elsewhere."""
    todo = [p for sub in ("src", "tests", "benches", "examples") for p in (crate / sub).rglob("*.rs")]
    if (crate / "build.rs").is_file():
        todo.append(crate / "build.rs")
    seen = set()
    while todo:
        path = todo.pop().resolve()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        yield path
        for rel in PATH_ATTR.findall(path.read_text(errors="replace")):
            todo.append(path.parent / rel)


def main():
    problems = []
    for crate in members():
        manifest = tomllib.loads((crate / "Cargo.toml").read_text())
        ignored = set(
            manifest.get("package", {}).get("metadata", {}).get("unused-deps", {}).get("ignored", [])
        )
        deps = {}
        for table in ("dependencies", "dev-dependencies", "build-dependencies"):
            deps.update(manifest.get(table, {}))
        for target in manifest.get("target", {}).values():
            for table in ("dependencies", "dev-dependencies"):
                deps.update(target.get(table, {}))
        text = "\n".join(p.read_text(errors="replace") for p in sources(crate))
        for name in sorted(deps):
            if name in ignored:
                continue
            ident = name.replace("-", "_")
            if not re.search(r"(?<![A-Za-z0-9_])" + re.escape(ident) + r"(?![A-Za-z0-9_])", text):
                problems.append(f"{crate.relative_to(ROOT)}/Cargo.toml: `{name}` is never used")
    for p in problems:
        print(p)
    if problems:
        print(
            "remove them, or list one under [package.metadata.unused-deps] ignored = [...] "
            "with a comment saying why it is needed",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
