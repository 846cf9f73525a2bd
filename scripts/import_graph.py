"""The package-level import graph of core/, deca_blender/ and training/ (stdlib `ast` only, nothing is imported).

    python scripts/import_graph.py            # the numbers: circles, upward arrows, rooms tied to nothing
    python scripts/import_graph.py --edges    # and every package-to-package arrow
    python scripts/import_graph.py --json

Rooms are packages: `core.<sub>` for a subpackage of core, `core.<module>` for a module directly in core,
`deca_blender`, `training`. An arrow A -> B means some module of A imports some module of B (at the top or
inside a function: both are dependencies). Measures:

- circles: strongly connected components with more than one room (package level), and module-level
  circles inside one package (two modules importing each other);
- upward arrows: arrows against `LAYERS` below (bottom first): a room may import only rooms of a lower
  layer or of its own;
- rooms tied to nothing: modules that no other module imports and that are not an entry point
  (`ENTRY_POINTS`: run as `python -m`, loaded by Blender, or the console script);
- the largest file, in lines.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "deca_blender", "training")

# Bottom first. A room may import rooms of its own layer or lower ones; rooms of one layer must not form
# circles (checked separately).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core", "core.errors", "core.sizes", "core.atomic", "core.cache"),
    ("core.safe_pickle", "core.obj", "core.render", "core.networks", "core.frontend"),
    ("core.flame",),
    ("core.assets", "core.results", "core.testmodels"),
    ("core.model",),
    ("core.evaluation", "core.pipeline"),
    ("core.fitting",),
    ("training", "core.commands"),
    ("deca_blender",),
    ("core.worker", "core.cli"),
)

# Modules nothing imports on purpose: they are run (`python -m`), loaded by Blender, or the console script.
ENTRY_POINTS = {
    "core.cli", "core.worker", "training.cli", "training.experiments", "deca_blender",
}
# Code outside the rooms that uses them: a module only these import (test models, scoring) is not unused.
USERS = ("tests", "benchmarks", "scripts")


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> file
    imports: dict[str, set[str]] = field(default_factory=dict)  # module -> project modules it imports

    def room(self, module: str) -> str:
        parts = module.split(".")
        if parts[0] == "core" and len(parts) > 1:
            return ".".join(parts[:2])
        return parts[0]

    def room_edges(self) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {self.room(m): set() for m in self.modules}
        for m, targets in self.imports.items():
            for t in targets:
                a, b = self.room(m), self.room(t)
                if a != b:
                    edges[a].add(b)
        return edges


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def build_graph(root: Path = ROOT) -> Graph:
    g = Graph()
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            g.modules[module_name(path, root)] = path
    for name, path in g.modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                # `from core.results import writing` imports the module core.results.writing; only names
                # that are not modules (`from core.flame import FlameLayer`) make `base` itself the target
                candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in g.modules else base for a in node.names]
            else:
                continue
            for c in candidates:
                # the longest project module that the name starts with
                parts = c.split(".")
                while parts and ".".join(parts) not in g.modules:
                    parts.pop()
                if parts and ".".join(parts) != name:
                    found.add(".".join(parts))
        g.imports[name] = found
    return g


def _used_outside(g: Graph, root: Path = ROOT) -> set[str]:
    """Project modules imported by tests/, benchmarks/ or scripts/."""
    used: set[str] = set()
    for folder in USERS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    used.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    used.add(node.module)
                    used.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in used if m in g.modules}


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer_of(room: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if room in layer:
            return i
    return None


def measure(g: Graph | None = None, root: Path = ROOT) -> dict:
    g = g or build_graph(root)
    edges = g.room_edges()
    room_circles = strongly_connected(edges)
    # module circles inside one room (package-level circles are counted above)
    module_edges = {m: {t for t in ts if g.room(t) == g.room(m)} for m, ts in g.imports.items()}
    module_circles = [c for c in strongly_connected(module_edges)]
    unlayered = sorted(r for r in edges if layer_of(r) is None)
    upward = sorted((a, b) for a, bs in edges.items() for b in bs
                    if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a))
    imported = {t for ts in g.imports.values() for t in ts} | _used_outside(g, root)
    # a package counts as imported when any of its modules is (importing core.results.result runs
    # core/results/__init__.py)
    for t in list(imported):
        parts = t.split(".")
        for k in range(1, len(parts)):
            imported.add(".".join(parts[:k]))
    unreferenced = sorted(m for m in g.modules if m not in imported and m not in ENTRY_POINTS
                          and m not in PACKAGES)
    sizes = {m: sum(1 for _ in p.open(encoding="utf-8")) for m, p in g.modules.items()}
    largest = max(sizes, key=sizes.get)
    floors = max((layer_of(r) or 0) for r in edges) + 1
    return {
        "rooms": len(edges), "modules": len(g.modules), "arrows": sum(len(v) for v in edges.values()),
        "layers": floors,
        "circles": room_circles + module_circles, "upward_arrows": upward, "unlayered_rooms": unlayered,
        "unreferenced_modules": unreferenced,
        "largest_file": {"module": largest, "path": str(g.modules[largest].relative_to(root)), "lines": sizes[largest]},
        "edges": {a: sorted(bs) for a, bs in sorted(edges.items())},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", action="store_true", help="print every package-to-package arrow")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--root", type=Path, default=ROOT, help="another checkout to measure (default: this one)")
    args = ap.parse_args(argv)
    m = measure(root=args.root.resolve())
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"rooms {m['rooms']} ({m['modules']} modules) on {m['layers']} layers, {m['arrows']} arrows")
    print(f"circles: {len(m['circles'])}" + "".join(f"\n  {' <-> '.join(c)}" for c in m["circles"]))
    print(f"upward arrows: {len(m['upward_arrows'])}" + "".join(f"\n  {a} -> {b}" for a, b in m["upward_arrows"]))
    print(f"rooms outside LAYERS: {len(m['unlayered_rooms'])}" + "".join(f"\n  {r}" for r in m["unlayered_rooms"]))
    print(f"rooms tied to nothing: {len(m['unreferenced_modules'])}"
          + "".join(f"\n  {r}" for r in m["unreferenced_modules"]))
    lf = m["largest_file"]
    print(f"largest file: {lf['path']} ({lf['lines']} lines)")
    if args.edges:
        for a, bs in m["edges"].items():
            print(f"{a} -> {', '.join(bs) if bs else '-'}")
    bad = m["circles"] or m["upward_arrows"] or m["unlayered_rooms"] or m["unreferenced_modules"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
