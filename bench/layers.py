"""The package layers and the import graph between them, read from the source (no imports run).

    python -m bench.layers          # the graph as a markdown table, and any import that breaks a layer

Each package belongs to one layer; a module may import its own layer and those below,
never above. ``tests/test_layers.py`` fails on any upward import or package cycle;
``docs/ARCHITECTURE.md`` shows this module's output.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("engine", "policies", "systems", "bench")

#: package -> layer, lowest first. A package not listed takes its parent's layer.
LAYERS: dict[str, int] = {
    "systems": 0,           # the data model: format, validation, analysis, files, errors
    "policies": 1,          # question policies (numpy only)
    "engine.core": 2,       # scoring, the adaptive loop, sources, results, calibration
    "engine.encoders": 3,   # encoder backends, registry, text and image caches
    "engine.torch_engine": 3,  # the torch array backend of engine.core's adaptive loop
    "engine.run": 4,        # settings, Classifier, pipeline, executors, stores, evaluation
    "systems.authoring": 5,  # building and refining systems (uses the engine)
    "engine.serve": 6,      # applications: HTTP server ...
    "engine.cli": 6,        # ... and the command line
    "bench": 7,             # benchmarks and their helpers (tiny random models, the probe's training)
    "engine": 4,            # engine/__init__: the public face (lazy re-exports of run and below)
}
NAMES = {0: "data model", 1: "policies", 2: "core", 3: "encoders, device engine", 4: "run", 5: "authoring", 6: "applications",
         7: "benchmarks"}


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
    """Modules of the project that ``module`` imports (relative imports resolved; TYPE_CHECKING skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
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
    return 1 if upward else 0


if __name__ == "__main__":
    raise SystemExit(main())
