"""Facts about dhmlib's import graph: the layout's health in five numbers.

    python tools/import_graph.py            # the table below, for dhmlib/ of this checkout
    python tools/import_graph.py --json     # the same as JSON
    python tools/import_graph.py --root DIR # another checkout (DIR holds dhmlib/)

It reads the sources only (``ast``; nothing is imported) and prints:

- the number of top-level modules (``dhmlib/*.py`` other than ``__init__``);
- arrows that run back up: an import of a unit (a top-level package or module of dhmlib) from a unit
  on a lower floor of :data:`LAYERS` (goal: none);
- cycles between units and between modules, imports inside functions included (goal: none);
- files over 500 lines and functions over 80 lines.

Every import counts, also one made inside a function (a deferred import is still a dependency);
``if TYPE_CHECKING:`` imports are left out. ``tests/test_imports.py`` asserts the goals.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGE = "dhmlib"

#: The floors of the data flow, ground first: a unit may import units on its own floor or below.
#: A unit is a top-level module or package of dhmlib (``dhmlib.paths``, ``dhmlib.train``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("paths", "configs", "memory", "progress"),   # basics: folders, frozen configs, allocator, progress lines
    ("lab",),           # notebooks run headless (papermill), batches, recorded metrics: knows nothing of hands
    ("mesh",),          # triangle meshes: files, checks, distances, normals
    ("hand",),          # skeleton, anatomy, hand-model files, kinematics, the FK + LBS layer
    ("render",),        # cameras, crops, rasterizer, depth and shaded renders
    ("data",),          # the official layout, dataset, split, the virtual capture's truth
    ("synth",),         # the procedural hand and the virtual capture that writes the layout
    ("losses",),        # training losses
    ("network",),       # DeepHandMesh, snapshots, the pose fit through the frozen decoder
    ("metrics",),       # errors and mesh metrics
    ("viz",),           # figures and the posing widget
    ("train",),         # config, step, loop, checkpoints, torchrun
    ("evaluation",),    # a snapshot on held-out frames (dhm test)
    ("photo",),         # your own hand: photo landmarks (MediaPipe) → a fitted hand, measured on the capture
    ("experiments",),   # recipes, ablation variants, the ablation and its diagnostics
    ("cli",),           # the dhm command
)

LONG_FILE = 500
LONG_FUNCTION = 80


@dataclass(frozen=True)
class Import:
    """``source`` imports ``target`` (dotted module names) at ``line``; ``deferred``: inside a function."""

    source: str
    target: str
    line: int
    deferred: bool


@dataclass
class Facts:
    top_level_modules: list[str] = field(default_factory=list)
    back_arrows: list[str] = field(default_factory=list)
    unplaced_units: list[str] = field(default_factory=list)
    unit_cycles: list[list[str]] = field(default_factory=list)
    module_cycles: list[list[str]] = field(default_factory=list)
    deferred_imports: int = 0
    long_files: list[str] = field(default_factory=list)
    long_functions: list[str] = field(default_factory=list)


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root/dhmlib``."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return name in files and files[name].name == "__init__.py"


def _resolve(base: str, names: list[str], files: dict[str, Path]) -> list[str]:
    """The modules that ``from base import names`` reads: a submodule where a name is one, else ``base``."""
    out = []
    for n in names:
        sub = f"{base}.{n}"
        out.append(sub if sub in files else base)
    return out


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, files: dict[str, Path]):
        self.module, self.files = module, files
        self.depth = 0
        self.imports: list[Import] = []
        self.functions: list[tuple[str, int, int]] = []
        self._scope: list[str] = []

    def _add(self, target: str, line: int):
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            self.imports.append(Import(self.module, target, line, self.depth > 0))

    def visit_If(self, node: ast.If):
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in self.files:
                name = name.rpartition(".")[0]
            if name:
                self._add(name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level:
            pkg = self.module if _is_package(self.module, self.files) else self.module.rpartition(".")[0]
            for _ in range(node.level - 1):
                pkg = pkg.rpartition(".")[0]
            base = f"{pkg}.{node.module}" if node.module else pkg
        else:
            base = node.module or ""
        for target in _resolve(base, [a.name for a in node.names], self.files):
            self._add(target, node.lineno)

    def _function(self, node):
        self._scope.append(node.name)
        self.functions.append((".".join(self._scope), node.lineno, node.end_lineno - node.lineno + 1))
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        self._scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef):
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()


def unit_of(module: str) -> str:
    """``dhmlib.train.loop`` → ``train``; ``dhmlib.paths`` → ``paths``; ``dhmlib`` → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def read_graph(root: Path):
    """All dhmlib → dhmlib imports of the tree, the functions (name, line, length) and line counts per file."""
    files = module_files(root)
    imports, functions, lines = [], {}, {}
    for module, path in files.items():
        text = path.read_text()
        lines[module] = text.count("\n") + (0 if text.endswith("\n") else 1)
        c = _Collector(module, files)
        c.visit(ast.parse(text, filename=str(path)))
        imports += [i for i in c.imports if i.target != module]
        functions[module] = c.functions
    return files, imports, functions, lines


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    nodes = sorted(set(edges) | {v for vs in edges.values() for v in vs})

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in nodes:
        if v not in index:
            strong(v)
    return sorted(out)


def facts(root: Path) -> Facts:
    files, imports, functions, lines = read_graph(root)
    f = Facts()
    f.top_level_modules = sorted(m for m, p in files.items()
                                 if m.count(".") == 1 and p.name != "__init__.py" and p.name != "__main__.py")
    floor = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    units = {unit_of(m) for m in files} - {""}
    f.unplaced_units = sorted(units - set(floor))
    unit_edges: dict[str, set[str]] = {}
    module_edges: dict[str, set[str]] = {}
    for i in imports:
        module_edges.setdefault(i.source, set()).add(i.target)
        a, b = unit_of(i.source), unit_of(i.target)
        if not a or not b or a == b:
            continue
        unit_edges.setdefault(a, set()).add(b)
        if a in floor and b in floor and floor[b] > floor[a]:
            where = "inside a function" if i.deferred else "top"
            f.back_arrows.append(f"{i.source} -> {i.target} ({files[i.source].relative_to(root)}:{i.line}, {where})")
    f.back_arrows = sorted(set(f.back_arrows))
    f.unit_cycles = cycles(unit_edges)
    f.module_cycles = cycles(module_edges)
    f.deferred_imports = len({(i.source, i.line) for i in imports if i.deferred})   # statements
    f.long_files = [f"{files[m].relative_to(root)} {n}" for m, n in sorted(lines.items(), key=lambda kv: -kv[1])
                    if n > LONG_FILE]
    f.long_functions = [f"{files[m].relative_to(root)}:{line} {name} {n}"
                        for m, fs in sorted(functions.items()) for name, line, n in fs if n > LONG_FUNCTION]
    return f


def _print(f: Facts):
    def section(title: str, items, show=str, extra: str = ""):
        print(f"{title:<31}{len(items):4d}{extra}")
        for x in items:
            print(f"    {show(x)}")

    print(f"top-level modules              {len(f.top_level_modules):4d}  "
          + " ".join(m.split(".")[-1] for m in f.top_level_modules))
    section("arrows that run back up", f.back_arrows)
    if f.unplaced_units:
        print(f"units on no floor of LAYERS    {len(f.unplaced_units):4d}  {' '.join(f.unplaced_units)}")
    section("cycles between units", f.unit_cycles, " <-> ".join)
    section("cycles between modules", f.module_cycles, " <-> ".join)
    print(f"imports inside functions       {f.deferred_imports:4d}")
    section(f"files over {LONG_FILE} lines", f.long_files)
    section(f"functions over {LONG_FUNCTION} lines", f.long_functions)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout that holds dhmlib/ (default: this one)")
    ap.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = ap.parse_args(argv)
    f = facts(args.root)
    if args.json:
        print(json.dumps(asdict(f), indent=1))
    else:
        _print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
