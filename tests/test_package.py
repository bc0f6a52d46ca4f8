"""The package as a newcomer meets it: every public name imports in a fresh interpreter, the modules form layers
without cycles or upward imports, and every function reads in one screen."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "db3_timm"

# Lower layers never import higher ones (function-level imports included): a module may import its own layer or below.
LAYERS = [
    {"version", "_checks", "_io", "_preprocess", "_distributed", "_registry", "_disk", "_image_readers", "_cpu_memory"},
    {"oracle", "remote", "data", "models", "report"},
    {"serve", "boundary"},
    {"labelers"},
    {"generators", "store"},
    {"sources"},
    {"transfer"},
    {"training"},
    {"hub"},
    {"pipeline"},
    {"demo", "cli", "__init__"},
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Yields every db3_timm module that ``path`` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("db3_timm"):
                folder = PACKAGE.parent / target.replace(".", "/")
                for alias in node.names:  # `from . import models` imports a submodule, not the package's names
                    sub = (folder / alias.name).is_dir() or (folder / f"{alias.name}.py").is_file()
                    yield f"{target}.{alias.name}" if sub else target
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("db3_timm"))


def _graph():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        targets = set()
        for t in _imports(path):
            targets.add(t)
            # Importing a.b.c from outside package a.b runs a.b's __init__ first: that is an edge too.
            parts = t.split(".")
            targets.update(".".join(parts[:k]) for k in range(2, len(parts)) if not name.startswith(".".join(parts[:k])))
        graph[name] = targets - {name}
    return graph


def test_every_public_name_imports_in_a_fresh_interpreter():
    code = ("import db3_timm; [getattr(db3_timm, n) for n in db3_timm.__all__]; "
            "from db3_timm import *; from db3_timm import load_image_dataset, distill_student; import db3_timm.data; "
            "import db3_timm.cli, db3_timm.serve, db3_timm.remote, db3_timm.demo; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_importing_the_package_stays_light():
    # `--device-modules db3_timm` in timm's train script must not pull in datasets / pandas / accelerate.
    code = "import db3_timm, sys; print(sorted(m for m in ('datasets', 'pandas', 'accelerate') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr[-2000:]


def test_modules_form_layers_without_upward_imports():
    graph = _graph()
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
              if b in graph and a != "db3_timm" and b != "db3_timm" and _layer(b) > _layer(a)]
    assert not upward, "imports that point up the layers: " + ", ".join(sorted(upward))
    assert not [f"{a} -> db3_timm" for a, t in graph.items() if "db3_timm" in t and not a.startswith("db3_timm.cli")
                and a != "db3_timm.demo"], "library modules import the package root"


def test_no_import_cycles():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt == "db3_timm" or nxt not in graph:
                continue
            if state.get(nxt) == "open" and not (nxt in node or node.startswith(nxt + ".")):
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # A package importing its own submodules (labelers/__init__ -> labelers.mbd -> labelers.base) is not a cycle.
    real = [c for c in cycles if len({".".join(m.split(".")[:2]) for m in c}) > 1]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")))
def test_every_function_reads_in_one_screen(path):
    tree = ast.parse((PACKAGE / path).read_text())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, f"functions over 80 lines (docstring included): {long}"
