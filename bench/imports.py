"""Imports at module level unless start-up says otherwise (issue 28): count them, and move them up.

    python -m bench.imports count                 # imports inside functions, project and third-party
    python -m bench.imports measure > heavy.json  # which heavy libraries importing each module loads (~1 min)
    python -m bench.imports apply heavy.json      # hoist every function-level import that loads nothing heavy
                                                  # the importing module does not load already; then `isort`

An import stays in its function when hoisting it would make the importing module load a heavy library
(torch, transformers, scipy.stats, ...; HEAVY) it does not load today: that is the measured start-up reason
(docs/ARCHITECTURE.md, "Imports"). It also stays when it sits under try/if/with (optional dependency, guarded
import); when the tests replace the name it binds on its module (a function-level import reads the
replacement at call time); when its bound name clashes with a module-level name; or when it is a star import.
Run from the checkout's root. After `apply`, run `measure` again: no module's set may grow.
"""
import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from engine.testing.layers import ROOT, TOPS as PROJ, modules  # the project's modules, as the layer checker reads them

HEAVY = ("torch", "transformers", "pyarrow", "ray", "matplotlib", "fastapi", "uvicorn", "datasets", "pandas",
         "selenium", "dspy", "scipy", "PIL", "safetensors", "tokenizers", "huggingface_hub", "sklearn",
         "networkx", "hypothesis", "efficientnet_lite_pytorch", "schemathesis", "httpx", "numpy", "tqdm",
         # scipy by sub-package: scipy.special is cheap, scipy.stats and scipy.optimize cost 0.4 s
         "scipy.stats", "scipy.optimize", "scipy.linalg", "scipy.sparse", "scipy.ndimage", "scipy.interpolate",
         "scipy.signal", "scipy.fft", "scipy.special")


def heavy_of(mod: str) -> list[str] | None:
    code = (f"import sys; import {mod}; "
            f"print(' '.join(h for h in {HEAVY!r} if h in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        return None
    return r.stdout.split()


def measure():
    mods = modules()
    third = set()
    for m, p in mods.items():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                third.update(a.name for a in n.names if a.name.split(".")[0] not in PROJ)
            elif isinstance(n, ast.ImportFrom) and not n.level and n.module and n.module.split(".")[0] not in PROJ:
                third.add(n.module)
    names = sorted(mods) + sorted(third)
    with ThreadPoolExecutor(3) as ex:
        res = dict(zip(names, ex.map(heavy_of, names)))
    json.dump(res, sys.stdout, indent=0)


def resolve(node, pkg):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        up = pkg.split(".")
        up = up[: len(up) - (node.level - 1)] if node.level > 1 else up
        base = ".".join(up + ([base] if base else []))
    return [base]


def heavy_target(t: str, heavy: dict):
    while t and t not in heavy:
        t = t.rpartition(".")[0]
    return heavy.get(t) if t else None


def bound_names(node):
    if isinstance(node, ast.Import):
        return [a.asname or a.name.split(".")[0] for a in node.names]
    return [a.asname or a.name for a in node.names]


def module_level_names(tree):
    names = {}
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[n.name] = "def"
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                for x in ast.walk(t):
                    if isinstance(x, ast.Name):
                        names[x.id] = "assign"
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for b, a in zip(bound_names(n), n.names):
                names[b] = ast.unparse(n)
    return names


def patched_names() -> set[str]:
    """Names the tests replace on their module (monkeypatch.setattr, mock.patch): a function-level
    `from M import NAME` reads the replacement at call time; hoisted, it would keep the original."""
    out = set()
    for top in ("tests", "bench"):
        for p in (ROOT / top).rglob("*.py"):
            for n in ast.walk(ast.parse(p.read_text())):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in (
                        "setattr", "patch", "object", "setitem", "delattr"):
                    for a in n.args[:2]:
                        if isinstance(a, ast.Constant) and isinstance(a.value, str):
                            out.add(a.value.rpartition(".")[2])
    return out


def apply(heavy_file):
    heavy = json.load(open(heavy_file))
    patched = patched_names()
    mods = modules()
    total = kept = 0
    for m, p in mods.items():
        src = p.read_text()
        tree = ast.parse(src)
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        mine = set(heavy.get(m) or [])
        if heavy.get(m) is None:
            continue
        top = module_level_names(tree)
        moves = []  # (node, text)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in fn.body:
                if not isinstance(n, (ast.Import, ast.ImportFrom)):
                    continue
                total += 1
                if any(a.name == "*" for a in n.names):
                    kept += 1
                    continue
                targets = resolve(n, pkg)
                ok = True
                for t in targets:
                    h = heavy_target(t, heavy)
                    if h is None or not set(h) <= mine:
                        ok = False
                lvl = getattr(n, "level", 0)
                text = ast.unparse(n) if not lvl else None
                if lvl:  # write the absolute form
                    base = resolve(n, pkg)[0]
                    text = f"from {base} import " + ", ".join(
                        a.name + (f" as {a.asname}" if a.asname else "") for a in n.names)
                if isinstance(n, ast.ImportFrom) and any(a.name in patched for a in n.names):
                    ok = False
                for b in bound_names(n):
                    if b in top and top[b] != text:  # the name is bound otherwise at module level
                        ok = False
                if not ok:
                    kept += 1
                    continue
                moves.append((n, fn, text))
        if not moves:
            continue
        lines = src.splitlines(keepends=True)
        drop = set()
        empty_fix = {}
        moved_nodes = [x[0] for x in moves]
        for n, fn, text in moves:
            drop.update(range(n.lineno - 1, n.end_lineno))
            rest = [s for s in fn.body if s not in moved_nodes]
            if not rest or (len(rest) == 1 and isinstance(rest[0], ast.Expr) and isinstance(getattr(rest[0], "value", None), ast.Constant)):
                empty_fix[n.lineno - 1] = " " * n.col_offset + "pass\n"
        # a blank line that followed a removed import, when the kept line before it is a blank, the def
        # line or a docstring's end, goes too
        for i in sorted(drop):
            j = i + 1
            if j in drop or j >= len(lines) or lines[j].strip():
                continue
            k = i - 1
            while k in drop:
                k -= 1
            prev = lines[k].rstrip() if k >= 0 else ""
            if not prev.strip() or prev.endswith(":") or prev.endswith('"""') or prev.endswith("'''"):
                drop.add(j)
        # group the hoisted names by module, merged with a module-level `from M import ...` that exists
        froms: dict[str, list[str]] = {}
        plain: list[str] = []
        for n, _, text in moves:
            if text.startswith("from "):
                mod, _, names = text[5:].partition(" import ")
                for a in names.split(", "):
                    froms.setdefault(mod, [])
                    if a not in froms[mod]:
                        froms[mod].append(a)
            elif text not in plain:
                plain.append(text)
        existing_from = {}
        for n in tree.body:
            if isinstance(n, ast.ImportFrom) and not n.level and n.module in froms and n.module not in existing_from:
                existing_from[n.module] = n
        existing_plain = {ast.unparse(n) for n in tree.body if isinstance(n, ast.Import)}
        plain = [t for t in plain if t not in existing_plain]
        replace_at = {}
        for mod, n in existing_from.items():
            have = [a.name + (f" as {a.asname}" if a.asname else "") for a in n.names]
            names = have + [a for a in froms.pop(mod) if a not in have]
            drop.update(range(n.lineno - 1, n.end_lineno))
            replace_at[n.lineno - 1] = fmt_from(mod, names)
        new_imports = plain + [fmt_from(mod, names) for mod, names in froms.items()]
        # insertion point: after the last module-level import statement at the top block
        last = 0
        for n in tree.body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                last = n.end_lineno
            elif isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and last == 0:
                last = n.end_lineno
            elif last and not isinstance(n, (ast.Import, ast.ImportFrom)):
                break
        out = [t + "\n" for t in new_imports] if last == 0 else []
        for i, line in enumerate(lines):
            if i in replace_at:
                out.append(replace_at[i] + "\n")
            if i in drop:
                if i in empty_fix:
                    out.append(empty_fix[i])
            else:
                out.append(line)
            if i == last - 1 and new_imports:
                out.extend(t + "\n" for t in new_imports)
        # collapse blank lines left at the start of function bodies
        p.write_text("".join(out))
        print(f"{p.relative_to(ROOT)}: hoisted {len(moves)}", file=sys.stderr)
    print(f"function-level imports: {total}, kept in functions: {kept}, hoisted: {total - kept}", file=sys.stderr)


def fmt_from(mod: str, names: list[str], width: int = 120) -> str:
    one = f"from {mod} import " + ", ".join(names)
    if len(one) <= width:
        return one
    out, line = [f"from {mod} import ("], "    "
    for a in names:
        piece = a + ", "
        if len(line) + len(piece) > width:
            out.append(line.rstrip())
            line = "    "
        line += piece
    out.append(line.rstrip())
    out.append(")")
    return "\n".join(out)


def count() -> None:
    """Print how many imports sit inside functions (project and third-party) and how many project imports
    sit at module level (an import under a module-level ``if``/``try`` counts as module level)."""
    proj = third = modlevel = 0
    for p in modules().values():
        tree = ast.parse(p.read_text())
        top_nodes = {id(n) for n in tree.body}
        for n in ast.walk(tree):
            if not isinstance(n, (ast.Import, ast.ImportFrom)):
                continue
            mod = (n.module or "") if isinstance(n, ast.ImportFrom) else n.names[0].name
            is_proj = mod.split(".")[0] in PROJ or bool(getattr(n, "level", 0))
            if id(n) in top_nodes:
                modlevel += is_proj
            elif is_proj:
                proj += 1
            else:
                third += 1
    print(f"project imports in functions: {proj}; at module level: {modlevel}; third-party imports in functions: {third}")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "measure":
        measure()
    elif cmd == "apply" and len(sys.argv) == 3:
        apply(sys.argv[2])
    elif cmd == "count":
        count()
    else:
        sys.exit("usage: python -m bench.imports count | measure > heavy.json | apply heavy.json")
