#!/usr/bin/env python3
"""Checks that the modules of each crate import each other in layers: no cycles.

A module is a file under a crate's src/ (a folder's mod.rs is the folder). An edge A -> B is a
reference to `crate::B` (top-level) or `super::B` / `crate::A_parent::B` (a sibling) in A's code
outside its `#[cfg(test)]` tests. Prints each cycle and exits 1 if there is one.
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods["::".join(rel)] = path
    return mods


def code_without_tests(text):
    # Unit tests may use anything; cut a trailing `#[cfg(test)] mod tests { ... }` and
    # `#[cfg(test)] mod x;` declarations.
    m = re.search(r"#\[cfg\(test\)\]\s*mod ", text)
    text = text if m is None else text[: m.start()]
    # Comments and doc links name modules without depending on them.
    return re.sub(r"(?m)^\s*//.*$", "", text)


def edges(mods):
    graph = {m: set() for m in mods}
    names = set(mods)
    for m, path in mods.items():
        with open(path, encoding="utf-8") as fh:
            text = code_without_tests(fh.read())
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        refs = set()
        for ref in re.findall(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text):
            refs.add(ref)
        for ref in re.findall(r"\bsuper::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text):
            refs.add(f"{parent}::{ref}" if parent else ref)
        # `use super::{a, b::C}` and `use crate::{a, b}` groups.
        for base, group in re.findall(r"\buse (crate|super)::\{([^}]*)\}", text):
            prefix = "" if base == "crate" else (parent + "::" if parent else "")
            for item in group.split(","):
                item = item.strip().split("::")[0].strip()
                if item and item != "self":
                    refs.add(prefix + item)
        for ref in refs:
            parts = ref.split("::")
            # The longest module path the reference names.
            for n in range(len(parts), 0, -1):
                target = "::".join(parts[:n])
                if target in names:
                    break
            else:
                continue
            if target == m or m.startswith(target + "::") or target == "":
                continue  # a module's own items or its parent's re-exports
            if target.startswith(m + "::"):
                continue  # a parent using its own submodules
            graph[m].add(target)
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    srcs = [os.path.join(root, "src")] + [
        os.path.join(root, "crates", c, "src") for c in sorted(os.listdir(os.path.join(root, "crates")))
    ]
    bad = False
    for src in srcs:
        graph = edges(modules(src))
        for comp in cycles(graph):
            bad = True
            detail = "; ".join(
                f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp
            )
            print(f"{os.path.relpath(src, root)}: modules in a cycle: {', '.join(comp)} ({detail})")
    if bad:
        sys.exit(1)
    print("module layers: no cycles")


if __name__ == "__main__":
    main()
