#!/usr/bin/env python3
"""Long-function finder for the workspace's production Rust code, offline and in about a second.

    python3 scripts/long-fns.py [--max 80] [--fail] [PATH ...]

Lists every `fn` whose length, from the line holding `fn` to the line of its closing brace,
is over --max lines (default 80), longest first, as `lines  path:line  name`. PATH defaults
to crates/ and functions/; a directory is searched for `*.rs`. Test code is skipped: files
named `tests.rs` or under a `tests/`, `benches/` or `examples/` directory, the bodies of
`#[cfg(test)]` modules, and functions marked `#[test]`, `#[tokio::test]` or `#[cfg(test)]`.
A nested `fn` is listed on its own and also counts towards the function around it.

Strings, raw strings, character literals and comments are blanked before braces are matched,
so a `{` inside a string never confuses it. It reads text only (no macro expansion): a
function written by a macro is not seen. Exit status is 0 unless --fail is given and something
is listed. `--self-test` checks the parser on a small sample.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_DIRS = {"tests", "benches", "examples", "target"}


def blank(src):
    """`src` with comments and literals replaced by spaces; newlines and offsets kept."""
    out = list(src)
    i, n = 0, len(src)

    def wipe(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(src, i)) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            close = '"' + m.group(1)
            j = src.find(close, m.end())
            j = n if j < 0 else j + len(close)
            wipe(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif c == "'":
            # A character literal ('x', '\n', '\u{1F600}', '\'') or a lifetime ('a).
            if i + 1 < n and src[i + 1] == "\\":
                j = src.find("'", i + 3 if src[i + 2 : i + 3] == "'" else i + 2)
                j = n - 1 if j < 0 else j
                wipe(i, j + 1)
                i = j + 1
            elif i + 2 < n and src[i + 2] == "'":
                wipe(i, i + 3)
                i += 3
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def matching(text, open_at):
    """Offset of the brace closing the one at `open_at`."""
    depth = 0
    for k in range(open_at, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(text) - 1


def body_start(text, at):
    """Offset of the `{` opening the body of the fn whose name ends at `at`, or None (`;`)."""
    depth = 0
    for k in range(at, len(text)):
        ch = text[k]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch == ";":
            return None
        elif depth == 0 and ch == "{":
            return k
    return None


ATTRS = re.compile(r"(?:#\[[^\]]*\]\s*)*$")
TEST_ATTR = re.compile(r"#\[(?:test|tokio::test[^\]]*|cfg\((?!not\()[^\]]*\btest\b[^\]]*\))\]")
FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
TEST_MOD = re.compile(r"#\[cfg\((?!not\()[^\]]*\btest\b[^\]]*\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")


def long_fns(src, limit):
    """(lines, line number, name) of each production fn in `src` longer than `limit` lines."""
    text = blank(src)
    skip = []
    for m in TEST_MOD.finditer(text):
        skip.append((m.start(), matching(text, m.end() - 1)))
    found = []
    for m in FN.finditer(text):
        if any(a <= m.start() <= b for a, b in skip):
            continue
        # Attributes written just before this item (the text up to the previous item).
        head = text[max(0, m.start() - 400) : m.start()]
        attrs = ATTRS.search(re.sub(r"\b(?:pub(?:\([^)]*\))?|async|const|unsafe|extern\s*(?:\"[^\"]*\")?)\s*", "", head).rstrip())
        if attrs and TEST_ATTR.search(attrs.group(0)):
            continue
        start = body_start(text, m.end())
        if start is None:
            continue
        end = matching(text, start)
        first = text.count("\n", 0, m.start()) + 1
        last = text.count("\n", 0, end) + 1
        lines = last - first + 1
        if lines > limit:
            found.append((lines, first, m.group(1)))
    return found


def files(paths):
    for p in paths:
        p = pathlib.Path(p)
        candidates = [p] if p.is_file() else sorted(p.rglob("*.rs"))
        for f in candidates:
            rel = f.resolve().relative_to(ROOT) if f.resolve().is_relative_to(ROOT) else f
            if f.name == "tests.rs" or TEST_DIRS.intersection(rel.parts[:-1]):
                continue
            yield f, rel


SAMPLE = r'''
fn short() { let s = "}}}"; let c = '}'; let r = r#"{"#; }
fn long<'a>(x: &'a [u8; 4]) -> &'a str {
    // }
    /* } */
''' + "    let _ = 1;\n" * 5 + r'''}
trait T { fn decl(&self); }
#[test]
fn a_test() {
''' + "    let _ = 1;\n" * 9 + r'''}
#[cfg(test)]
mod tests {
    fn helper() {
''' + "        let _ = 1;\n" * 9 + r'''    }
}
'''


def self_test():
    got = long_fns(SAMPLE, 3)
    want = [(9, 3, "long")]
    if got != want:
        print(f"self-test failed: got {got}, want {want}", file=sys.stderr)
        return 1
    print("self-test ok")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--max", type=int, default=80, help="longest allowed fn, in lines")
    ap.add_argument("--fail", action="store_true", help="exit 1 when anything is listed")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    paths = args.paths or [ROOT / "crates", ROOT / "functions"]
    rows = []
    for f, rel in files(paths):
        for lines, line, name in long_fns(f.read_text(), args.max):
            rows.append((lines, f"{rel}:{line}", name))
    rows.sort(key=lambda r: (-r[0], r[1]))
    for lines, where, name in rows:
        print(f"{lines:5}  {where}  {name}")
    if rows:
        print(f"{len(rows)} fn(s) over {args.max} lines", file=sys.stderr)
    return 1 if args.fail and rows else 0


if __name__ == "__main__":
    sys.exit(main())
