#!/usr/bin/env python3
"""Fails if the modules of any workspace crate import each other in a cycle.

Edges are `crate::a::...` (and `super::x` resolved to a sibling) references outside
`#[cfg(test)]` items and modules declared `#[cfg(test)] mod x;`, taken between sibling modules: top-level modules of a crate, and the
children of each directory module. A child naming its own parent (a module's `mod.rs`
re-exporting, a child using `super::Thing`) is not a cycle. Usage: check-module-cycles.py [crate dirs]
"""
import os
import re
import sys

def blank_literals(src: str) -> str:
    """Replaces comments and the contents of string and char literals with spaces (same
    length), so braces inside them (URI templates, format strings) do not count as blocks
    and `crate::` in a doc comment is no edge."""
    out, i, n = list(src), 0, len(src)
    while i < n:
        c = src[i]
        if c == "/" and i + 1 < n and src[i + 1] in "/*":
            # A comment: blanked too (it may hold quotes and braces).
            end = src.find("\n", i) if src[i + 1] == "/" else src.find("*/", i + 2) + 2
            end = n if end < i else end
            for k in range(i, end):
                if out[k] != "\n":
                    out[k] = " "
            i = end
            continue
        if c == "r" and i + 1 < n and src[i + 1] in "#\"" and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            j = i + 1
            hashes = 0
            while j < n and src[j] == "#":
                hashes += 1
                j += 1
            if j < n and src[j] == '"':
                end = src.find('"' + "#" * hashes, j + 1)
                end = n if end == -1 else end
                for k in range(j + 1, end):
                    if out[k] != "\n":
                        out[k] = " "
                i = end + 1 + hashes
                continue
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                if out[k] != "\n":
                    out[k] = " "
            i = j + 1
            continue
        if c == "'":
            # A char literal ('{', '\'', '\u{7b}'), not a lifetime ('a).
            if i + 2 < n and src[i + 1] == "\\":
                end = src.find("'", i + 2)
                if end != -1 and end - i <= 12:
                    for k in range(i + 1, end):
                        out[k] = " "
                    i = end + 1
                    continue
            elif i + 2 < n and src[i + 2] == "'":
                out[i + 1] = " "
                i += 3
                continue
        i += 1
    return "".join(out)

def strip_cfg_test(src: str) -> str:
    """Removes `#[cfg(test)]` items (inline modules and single items) from the source."""
    src = blank_literals(src)
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]")
    while True:
        m = pat.search(src, i)
        if not m:
            out.append(src[i:])
            break
        out.append(src[i:m.start()])
        j = m.end()
        # The item runs to the end of its first `{...}` block, or to the first `;` before one.
        brace = src.find("{", j)
        semi = src.find(";", j)
        if semi != -1 and (brace == -1 or semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(src):
            if src[k] == "{":
                depth += 1
            elif src[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    return "".join(out)

def module_path(src_root: str, path: str):
    rel = os.path.relpath(path, src_root)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main") and len(rel) == 1:
        return ()
    if rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)

def use_targets(src: str):
    """Module paths named from `crate::`, expanding `use crate::{a, b::c}` groups."""
    targets = []
    for m in re.finditer(r"\bcrate::((?:\w+::)*)(\{[^;]*?\}|\w+)", src):
        prefix = [p for p in m.group(1).split("::") if p]
        tail = m.group(2)
        if tail.startswith("{"):
            if not prefix:
                for part in re.split(r",", tail[1:-1]):
                    name = part.strip().split("::")[0].strip()
                    if name and name not in ("self",):
                        targets.append((name,))
            else:
                targets.append(tuple(prefix))
        else:
            targets.append(tuple(prefix + [tail]))
    return targets

def crate_graph(src_root: str):
    files = []
    for d, _, names in os.walk(src_root):
        for n in names:
            if n.endswith(".rs") and not os.path.relpath(os.path.join(d, n), src_root).startswith("bin"):
                files.append(os.path.join(d, n))
    modules = {module_path(src_root, f): f for f in files}
    # Modules declared `#[cfg(test)] mod x;` (test fixtures, test files) and their children
    # are test code, like the inline `#[cfg(test)]` items stripped below.
    test_only = set()
    for mod, f in modules.items():
        raw = blank_literals(open(f, encoding="utf-8").read())
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", raw):
            test_only.add(mod + (m.group(1),))
    def is_test(mod):
        return any(mod[: len(t)] == t for t in test_only)
    edges = set()
    for mod, f in modules.items():
        if not mod or is_test(mod):
            continue
        src = strip_cfg_test(open(f, encoding="utf-8").read())
        refs = list(use_targets(src))
        for m in re.finditer(r"\bsuper::(\w+)", src):
            refs.append(mod[:-1] + (m.group(1),))
        for target in refs:
            # The deepest known module that `target` names.
            t = target
            while t and t not in modules:
                t = t[:-1]
            if not t:
                continue
            # Compare at the first level where the two paths part.
            k = 0
            while k < min(len(mod), len(t)) and mod[k] == t[k]:
                k += 1
            if k == len(mod) or k == len(t):
                continue  # parent and child
            edges.add((mod[: k + 1], t[: k + 1]))
    return edges

def find_cycle(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state, stack = {}, []
    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None
    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None

def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    crates = sys.argv[1:] or ["protocol", "filter", "settler", "client", "tests", "bench"]
    bad = False
    for c in crates:
        src_root = os.path.join(root, c, "src")
        if not os.path.isdir(src_root):
            continue
        cycle = find_cycle(crate_graph(src_root))
        if cycle:
            bad = True
            print(f"{c}: module import cycle: " + " -> ".join("::".join(m) for m in cycle))
        else:
            print(f"{c}: no module import cycle")
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    main()
