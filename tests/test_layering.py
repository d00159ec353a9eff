"""The package's layering, read from its import graph (every import, also those inside functions).

Layers, lowest first (docs/contracts.md, "Layers"); a module imports only its own package and lower layers:

    0  resources | progress | process | intervals   packaged files; progress bar; worker processes; Wilson
    1  embodiments | checkpoint_file                what everything shares (no models, no data)
    2  data | models                                siblings: neither imports the other
    3  checkpoint                                   payloads, compatibility, the models they describe
    4  inference | training | sim                   siblings
    5  evaluation
    6  study | cli | demo                           the entry points

Besides the layers: no import circle between modules, no private (``_name``) import from another module, and the
inference path never imports the dataset writer's WebDataset nor Lightning.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "resources": 0,
    "progress": 0,
    "process": 0,
    "intervals": 0,
    "embodiments": 1,
    "checkpoint_file": 1,
    "data": 2,
    "models": 2,
    "checkpoint": 3,
    "inference": 4,
    "training": 4,
    "sim": 4,
    "evaluation": 5,
    "study": 6,
    "cli": 6,
    "demo": 6,
}


def import_graph(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """``module -> imported modules`` of the package at ``package`` (``from a import b`` counts as the module
    ``a.b`` where that is one), and the ``from <other module> import _private`` imports found."""
    root, modules = package.parent, {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    name = package.name
    edges: dict[str, set[str]] = {}
    private: list[str] = []
    for module, path in modules.items():
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").split(".")[0] == name
            ):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in modules else node.module)
                    if alias.name.startswith("_") and node.module != module:
                        private.append(f"{module}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.split(".")[0] == name)
        edges[module] = out - {module}
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_violations(edges: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Imports that go up a layer or sideways into a sibling package, and modules outside every layer."""
    problems = []

    def unit(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    for a, targets in sorted(edges.items()):
        if unit(a) and unit(a) not in layers:
            problems.append(f"{a}: not in any layer; add it to LAYERS and docs/contracts.md")
            continue
        for b in sorted(targets):
            ua, ub = unit(a), unit(b)
            if not ua or not ub or ua == ub or ub not in layers:
                continue
            if layers[ub] >= layers[ua]:
                problems.append(f"{a} (layer {layers[ua]}) imports {b} (layer {layers[ub]})")
    return problems


def test_no_circle_no_upward_or_sideways_import_and_no_private_import() -> None:
    edges, private = import_graph(ROOT / "actionprior")
    assert len(edges) > 100  # the whole package was read
    assert cycles(edges) == []
    assert layer_violations(edges, LAYERS) == []
    assert private == []


def test_the_checks_catch_a_circle_a_models_to_data_import_and_a_private_import(tmp_path) -> None:
    pkg = tmp_path / "actionprior"
    files = {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "def f():\n    from actionprior.data.b import g\n",  # held open inside a function
        "data/b.py": "from actionprior.data import a\nfrom actionprior.data.a import _hidden\n",
        "models/__init__.py": "",
        "models/m.py": "from actionprior.data.a import f\n",
        "plugins/p.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    edges, private = import_graph(pkg)
    assert cycles(edges) == [["actionprior.data.a", "actionprior.data.b"]]
    assert layer_violations(edges, LAYERS) == [
        "actionprior.models.m (layer 2) imports actionprior.data.a (layer 2)",
        "actionprior.plugins.p: not in any layer; add it to LAYERS and docs/contracts.md",
    ]
    assert private == ["actionprior.data.b: from actionprior.data.a import _hidden"]


def test_inference_imports_neither_the_dataset_writer_nor_lightning() -> None:
    probe = textwrap.dedent(
        """
        import sys
        import actionprior.inference.policy, actionprior.inference.server, actionprior.inference.export
        print(sorted(m for m in ("webdataset", "lightning", "actionprior.data.writer") if m in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
