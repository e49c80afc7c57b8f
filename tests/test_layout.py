"""The package's import graph: no module imports itself back, and the board side stays host-free.

Every ``import`` counts, those inside functions too (a deferred import still ties two modules
together), with relative imports resolved against the importing module's package. The modules are
the files of setup.py's ``SUBPACKAGES``, read with ``ast`` (nothing is imported).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

REPO_ROOT = Path(__file__).resolve().parents[1]
# What the board side may not import: the host package and the host's SSH and terminal libraries.
HOST_ONLY = ("fdq.host", "paramiko", "rich")


def subpackages() -> Dict[str, str]:
    """setup.py's ``SUBPACKAGES`` (package -> folder), read without running setup.py."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUBPACKAGES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no SUBPACKAGES")


def fdq_modules() -> Dict[str, Path]:
    """Every fdq module (``fdq.device.kernels``; a package by its own name) -> its file."""
    modules = {}
    for package, folder in subpackages().items():
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Absolute names of everything ``module`` imports, anywhere in its file; ``from X import Y``
    gives ``X.Y`` (a submodule, or a name of module ``X``: the graph keeps the longest module)."""
    own_package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = own_package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> Dict[str, Set[str]]:
    """fdq module -> the fdq modules it imports (the most specific module each import names)."""
    modules = fdq_modules()
    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            targets.add(name)
        graph[module] = targets - {module, ""}
    return graph


def cycles(graph: Dict[str, Set[str]], limit: int = 50) -> List[List[str]]:
    """Elementary cycles (at most ``limit``), each from its smallest module: ``[a, b]`` is a -> b -> a."""
    found: List[List[str]] = []

    def walk(start: str, path: List[str]) -> None:
        for nxt in sorted(graph[path[-1]]):
            if len(found) >= limit:
                return
            if nxt == start:
                found.append(list(path))
            elif nxt > start and nxt not in path:
                walk(start, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_the_walker_resolves_relative_imports_inside_functions(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from ..host import remote\n    from . import nms\n    import paramiko\n")
    assert set(imported_names("fdq.device.probe", path)) == {"fdq.host.remote", "fdq.device.nms", "paramiko"}


def test_cycles_names_each_cycle():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}, "d": {"a", "d"}}
    assert cycles(graph) == [["a", "b"], ["b", "c"], ["d"]]


def test_the_walker_sees_deferred_and_relative_imports():
    """The graph holds an import made inside a function (runtimes' quantized normalizer) and a
    relative one resolved to its module."""
    graph = import_graph()
    assert "fdq.device.kernels" in graph["fdq.device.runtimes"]
    assert "fdq.calibration.quant_api" in graph["fdq.calibration.ptq"]
    assert "fdq.models" in graph["fdq.calibration.quant_api"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in found)


def test_device_imports_nothing_of_the_host_side():
    offending = []
    for module, path in fdq_modules().items():
        if not module.startswith("fdq.device"):
            continue
        for name in imported_names(module, path):
            if any(name == banned or name.startswith(banned + ".") for banned in HOST_ONLY):
                offending.append(f"{module} imports {name}")
    assert not offending, "; ".join(sorted(set(offending)))
