"""The package layers and the import graph between them, read from the source (no imports run).

    python -m engine.testing.layers          # the graph as a markdown table, and any import that breaks a layer

Each package belongs to one layer; a module may import its own layer and those below,
never above. ``tests/test_layers.py`` fails on any upward import or package cycle;
``docs/ARCHITECTURE.md`` shows this module's output.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
TOPS = ("engine", "policies", "systems", "bench")

#: package -> layer, lowest first. A package not listed takes its parent's layer.
LAYERS: dict[str, int] = {
    "engine.common": 0,     # errors, guarded files, printable text, lazy exports, plug-ins: imports nothing else
    "systems": 1,           # the data model: format, validation, loading, analysis, derived systems
    "policies": 2,          # question policies (numpy or any array backend, no torch)
    "engine.core": 3,       # scoring, the adaptive loop, sources, results, answer channels and models
    "engine.encoders": 4,   # encoder backends, registry, text and image caches
    "engine.torch_backend": 4,  # the torch array backend of engine.core's adaptive loop
    "engine.run": 5,        # settings, Classifier, pipeline, executors, stores, evaluation, calibration file
    "engine": 5,            # engine/__init__: the public face (lazy re-exports of run and below)
    "engine.authoring": 6,  # building and refining systems (scores with the core)
    "engine.reports": 7,    # applications' report writers (HTML, plots) ...
    "engine.serve": 7,      # ... the HTTP server ...
    "engine.cli": 7,        # ... and the command line
    "engine.testing": 8,    # tiny random models and this checker, for the tests and benchmarks
    "bench": 8,             # benchmarks and the probe's training
}
NAMES = {0: "shared helpers", 1: "data model", 2: "policies", 3: "core", 4: "encoders, torch backend", 5: "run",
         6: "authoring", 7: "applications", 8: "benchmarks, test helpers"}


def modules() -> dict[str, Path]:
    out = {}
    for top in TOPS:
        for p in sorted((ROOT / top).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def package_of(module: str, mods: dict[str, Path]) -> str:
    """The most specific package in LAYERS that holds ``module``."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS and (n < len(parts) or mods.get(name, Path()).name == "__init__.py"):
            return name
    return parts[0]


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the project that ``module`` imports, wherever the import sits: at module level, inside a
    function, or under ``if TYPE_CHECKING:`` (a type-only import is still an arrow in the design).
    Relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != module:
                out.add(t)
                break
    return out


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """(package -> packages it imports, every import that goes up a layer as 'a -> b (module)')."""
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = defaultdict(set)
    upward = []
    for m, p in mods.items():
        a = package_of(m, mods)
        for t in imports_of(m, p, known):
            b = package_of(t, mods)
            if a == b:
                continue
            edges[a].add(b)
            if LAYERS[b] > LAYERS[a]:
                upward.append(f"{a} (layer {LAYERS[a]}) -> {b} (layer {LAYERS[b]}) in {m}")
    return edges, upward


def package_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle in the package graph (networkx's Johnson search); [] for a layered design."""
    return [sorted(c) for c in nx.simple_cycles(nx.DiGraph([(a, b) for a, bs in edges.items() for b in bs]))]


def markdown(edges: dict[str, set[str]]) -> str:
    rows = ["| layer | package | imports |", "|---|---|---|"]
    for pkg in sorted(LAYERS, key=lambda k: (LAYERS[k], k)):
        rows.append(f"| {LAYERS[pkg]} {NAMES[LAYERS[pkg]]} | `{pkg}` | "
                    f"{', '.join(f'`{b}`' for b in sorted(edges.get(pkg, ()), key=lambda k: (LAYERS[k], k))) or '-'} |")
    return "\n".join(rows)


def main() -> int:
    edges, upward = graph()
    print(markdown(edges))
    for line in upward:
        print("upward import:", line, file=sys.stderr)
    cycles = package_cycles(edges)
    for c in cycles:
        print("package cycle:", " <-> ".join(c), file=sys.stderr)
    return 1 if upward or cycles else 0


if __name__ == "__main__":
    raise SystemExit(main())
