"""The project's shape, checked from the source: imports only go down, the worker is the root, records have one
builder.

The import graph is built from the AST of every module (function-local and ``TYPE_CHECKING`` imports
included: a hidden circle is still a circle), so a cycle fails here before it fails at import time.
"""

from __future__ import annotations

import ast
import graphlib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "models", "online_learning", "schemas", "datastore")


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imported(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import mod`` counts as importing ``mod``)."""
    modules = module_files(root, packages)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name]  # every module is a node, importing something or not
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets = [t for t in _imported(name, path, node) if t in modules and t != name]
                # `from a.b import c` names the package a.b only when c is not a module of its own
                submodules = {t for t in targets if t.rsplit(".", 1)[0] in targets}
                graph[name].update(submodules or targets)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def subpackage_graph(graph: dict[str, set[str]], package: str = "streams") -> dict[str, set[str]]:
    """The graph between the subpackages (and top-level modules) of ``package``."""
    def unit(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = defaultdict(set)
    for module, deps in graph.items():
        if module.startswith(package + "."):
            out[unit(module)].update(unit(d) for d in deps if d.startswith(package + ".") and unit(d) != unit(module))
    return out


# --- the checks ------------------------------------------------------------------------------------------
GRAPH = import_graph(ROOT)


def test_there_is_no_import_cycle_anywhere():
    assert cycle(GRAPH) is None, f"import cycle: {' -> '.join(cycle(GRAPH) or [])}"


def test_the_subpackages_of_streams_import_each_other_in_one_direction():
    assert cycle(subpackage_graph(GRAPH)) is None, f"subpackage cycle: {cycle(subpackage_graph(GRAPH))}"


def test_the_cycle_check_fails_when_a_cycle_is_introduced(tmp_path):
    package = tmp_path / "streams"
    (package / "kafka").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kafka" / "__init__.py").write_text("")
    (package / "kafka" / "clients.py").write_text("def make():\n    from streams import worker  # hidden\n")
    (package / "worker.py").write_text("from streams.kafka.clients import make\n")
    graph = import_graph(tmp_path, ("streams",))
    assert cycle(graph) is not None and {"streams.worker", "streams.kafka.clients"} <= set(cycle(graph))
    assert cycle(subpackage_graph(graph)) is not None
    (package / "kafka" / "clients.py").write_text("def make():\n    return 1\n")
    assert cycle(import_graph(tmp_path, ("streams",))) is None


def test_nothing_below_the_worker_imports_the_worker():
    above = ("streams.worker", "streams.cli")  # the root that wires, and the commands that start it
    offenders = {m: sorted(d for d in deps if d.startswith("streams.worker"))
                 for m, deps in GRAPH.items() if not m.startswith(above)}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_streams_top_level_holds_only_a_handful_of_modules():
    top = sorted(p.stem for p in (ROOT / "streams").glob("*.py") if p.stem != "__init__")
    subpackages = sorted(p.name for p in (ROOT / "streams").iterdir() if (p / "__init__.py").exists())
    assert len(top) <= 5, top
    stages = {"kafka", "scoring", "routing", "engines", "drift", "learning", "archive", "worker", "cli"}
    assert stages <= set(subpackages)


def test_every_package_says_what_it_is_for():
    for init in sorted(ROOT.glob("*/__init__.py")) + sorted(ROOT.glob("streams/*/__init__.py")):
        if init.parent.name in ("tests", "deploy", "docs"):
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 6, f"{init} has no docstring saying what the package is for"


PREDICTION_ENCODERS = {"prediction_to_json_bytes", "encode_predictions"}


def _builds_a_prediction(node: ast.AST) -> bool:
    if isinstance(node, ast.Dict):
        keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
        return {"input_hash", "model_sha256", "source_offset"} <= keys
    if isinstance(node, ast.Call):
        func = node.func
        return (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) in PREDICTION_ENCODERS
    return False


def test_the_prediction_record_is_built_in_exactly_one_function():
    builders = set()
    for name, path in module_files(ROOT, ("streams",)).items():
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = {id(n) for f in ast.walk(func) if f is not func and isinstance(f, ast.FunctionDef)
                         for n in ast.walk(f)}
                if any(_builds_a_prediction(n) for n in ast.walk(func) if id(n) not in inner):
                    builders.add(f"{name}.{func.name}")
    assert builders == {"streams.scoring.records.predictions_from_columns"}, builders


@pytest.mark.parametrize("package", PACKAGES)
def test_function_local_imports_of_project_modules_say_why(package):
    """A function-local import of a project module hides a dependency: only for heavy ones, with a reason."""
    unexplained = []
    for name, path in module_files(ROOT, (package,)).items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom) and any(
                        t.split(".")[0] in PACKAGES for t in _imported(name, path, node)):
                    text = " ".join(lines[node.lineno - 1: node.end_lineno])
                    if "#" not in text:
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unexplained == [], "function-local imports without a reason: " + ", ".join(unexplained)

