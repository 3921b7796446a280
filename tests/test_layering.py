"""The package layering of core/ (and app/ above it), read from the source (every import, including those
inside functions):

    base (errors, units, paths, device, seeding, imaging, checkpoints)
      < data, models                 (+ core.demo's shapes, configs, presets, prompts)
      < vapi, eval                   (+ core.demo's evaluator, report, build)
      < runs, sweep
      < app
    entry points (core/__main__.py, core/cli.py, every */cli.py) on top: they may import anything,
    and nothing but another entry point imports them.

A module may import its own level or below. Modules of one level may import each other, but no set of
modules may import each other in a circle (lazy imports inside functions count: a circle between
them still means neither can be read, tested or moved alone). core.demo is ranked module by module
(its package docstring says why). core.checkpoints is a base module that may also read core.models
(the weights it saves and loads are theirs).

A failure names each offending import as `file:line: importer -> imported`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASE, DATA_MODELS, VAPI_EVAL, RUNS, APP, ENTRY = range(6)
LEVEL_NAMES = {BASE: "base", DATA_MODELS: "data/models", VAPI_EVAL: "vapi/eval", RUNS: "runs", APP: "app",
               ENTRY: "entry point"}

# Longest matching prefix wins: "core.demo.shapes" before "core.demo".
LEVELS: dict[str, int] = {
    "core": BASE,  # the package itself and its base modules
    "core.errors": BASE, "core.units": BASE, "core.paths": BASE, "core.device": BASE, "core.seeding": BASE, "core.imaging": BASE,
    "core.checkpoints": BASE,
    "core.data": DATA_MODELS, "core.models": DATA_MODELS,
    "core.demo.shapes": DATA_MODELS, "core.demo.configs": DATA_MODELS, "core.demo.presets": DATA_MODELS,
    "core.demo.prompts": DATA_MODELS,
    "core.vapi": VAPI_EVAL, "core.eval": VAPI_EVAL, "core.demo": VAPI_EVAL,
    "core.runs": RUNS, "core.sweep": RUNS,
    "app": APP,
}
# Imports across levels allowed on purpose: (importer prefix, imported prefix).
EXCEPTIONS = {("core.checkpoints", "core.models")}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} -> {self.imported}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_under(root: Path, packages: tuple[str, ...] = ("core",)) -> dict[str, Path]:
    """Module name -> file, for every .py file of the given top-level packages."""
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def _targets(node: ast.AST, importer: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads: `from a.b import c` is a.b.c when that is a module, else a.b."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against the importer's package
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    out = []
    for name in names:
        while name and name not in known:  # `import core.models.llamagen.x` style: the longest known module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_edges(known: dict[str, Path], root: Path) -> list[Edge]:
    edges = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = str(path.relative_to(root))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in dict.fromkeys(_targets(node, name, path.name == "__init__.py", known)):
                    if target != name:
                        edges.append(Edge(name, target, rel, node.lineno))
    return edges


def level_of(module: str) -> int:
    if module in ("core.__main__", "core.cli") or module.endswith(".cli"):
        return ENTRY
    best = max((p for p in LEVELS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module}: no level in LEVELS; add it to tests/test_layering.py")
    return LEVELS[best]


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def upward_imports(edges: list[Edge]) -> list[Edge]:
    bad = []
    for e in edges:
        src, dst = level_of(e.importer), level_of(e.imported)
        if src == ENTRY or dst <= src and dst != ENTRY:
            continue
        if any(_matches(e.importer, a) and _matches(e.imported, b) for a, b in EXCEPTIONS):
            continue
        bad.append(e)
    return bad


def import_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One circle (as its edges, in order) per strongly connected component of more than one module."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.importer, {}).setdefault(e.imported, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the module graph is small, recursion depth stays low
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_in(sorted(c), graph) for c in components]


def _circle_in(component: list[str], graph: dict[str, dict[str, Edge]]) -> list[Edge]:
    """A shortest circle through the component's first module (breadth-first inside the component)."""
    members, start = set(component), component[0]
    came_from: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w, e in sorted(graph.get(v, {}).items()):
                if w not in members or w in came_from:
                    continue
                came_from[w] = e
                if w == start:
                    circle, node = [], start
                    while True:
                        circle.append(came_from[node])
                        node = came_from[node].importer
                        if node == start:
                            return circle[::-1]
                nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle found in strongly connected component {component}")


def _report(edges: list[Edge], what: str) -> str:
    lines = [f"{what}:"] + [f"  {e}  ({LEVEL_NAMES[level_of(e.importer)]} imports {LEVEL_NAMES[level_of(e.imported)]})"
                            for e in edges]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the project
PACKAGES = ("core", "app")  # app/ too, so that core importing app is seen (and app's own circles)


def project_edges() -> list[Edge]:
    return import_edges(modules_under(ROOT, PACKAGES), ROOT)


def test_every_module_has_a_level():
    for name in modules_under(ROOT, PACKAGES):
        level_of(name)


def test_no_upward_import():
    bad = upward_imports(project_edges())
    assert not bad, _report(bad, "upward imports (move the code down, or the import into an entry point)")


def test_no_import_circle():
    cycles = import_cycles(project_edges())
    assert not cycles, "\n".join(_report(c, "import circle") for c in cycles)


# ----------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return modules_under(root)


def test_checker_names_an_upward_import_inside_a_function(tmp_path):
    known = _write(tmp_path, {
        "core/__init__.py": "",
        "core/data/__init__.py": "",
        "core/data/build.py": "import json\n\n\ndef f():\n    from core.eval import metrics\n",
        "core/eval/__init__.py": "",
        "core/eval/metrics.py": "from core.data import build\n",
        "core/eval/cli.py": "from core.runs import store\n",
        "core/runs/__init__.py": "",
        "core/runs/store.py": "from ..eval import metrics\n",
    })
    edges = import_edges(known, tmp_path)
    bad = upward_imports(edges)
    assert [str(e) for e in bad] == ["core/data/build.py:5: core.data.build -> core.eval.metrics"]
    assert "core/runs/store.py:1: core.runs.store -> core.eval.metrics" in map(str, edges)  # relative import
    assert "core.eval.cli" not in {e.importer for e in bad}  # an entry point imports anything
    assert "(data/models imports vapi/eval)" in _report(bad, "upward imports")


def test_checker_finds_a_circle_through_lazy_imports(tmp_path):
    known = _write(tmp_path, {
        "core/__init__.py": "",
        "core/models/__init__.py": "",
        "core/models/registry.py": "def f():\n    from core.models import demo\n",
        "core/models/demo.py": "def g():\n    from core.models.registry import register\n",
        "core/models/load.py": "from core.models import demo, registry\n",
    })
    (circle,) = import_cycles(import_edges(known, tmp_path))
    assert [str(e) for e in circle] == ["core/models/demo.py:2: core.models.demo -> core.models.registry",
                                        "core/models/registry.py:2: core.models.registry -> core.models.demo"]


def test_checker_ranks_the_demo_package_module_by_module():
    assert level_of("core.demo.shapes") == level_of("core.data.build") == DATA_MODELS
    assert level_of("core.demo.report") == level_of("core.eval.metrics") == VAPI_EVAL
    assert level_of("core.demo.cli") == ENTRY
    assert level_of("core.checkpoints") == BASE
