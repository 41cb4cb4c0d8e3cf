"""The package's layers, read from its import statements (``ast``, lazy imports included).

- the core (layers, losses, functional, ops, metrics, schemes, adjacency, registry, ...) imports
  neither :mod:`landmark_graph.data` nor an application module;
- the base, :mod:`landmark_graph.ops` and the helpers ``_checks`` and ``registry``, imports
  nothing of the layers above it;
- ``data`` imports no application module;
- nothing imports an application module except the applications and the package aliases.

``python tests/test_layering.py [PACKAGE_DIR]`` prints the graph: each module and the package
modules it imports, ``^`` marking an import from a higher layer.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "landmark_graph"

# The application modules: the training engine and its checkpoints, the command, export's CLI half,
# inference and its detectors and pictures, the backbones' third-party glue.
APPLICATION = ["landmark_graph.engine"]
DATA = ["landmark_graph.data"]
# The bottom layer: the ops and the helpers every layer uses.
BASE = ["landmark_graph.ops", "landmark_graph._checks", "landmark_graph.registry"]
# Modules that only re-export others, which may import any layer: the package, ``python -m`` and
# the old paths of the moved modules (landmark_graph.training -> landmark_graph.engine.training),
# which landmark_graph._aliases serves with the engine modules themselves (no file of their own).
ALIASES = ["landmark_graph", "landmark_graph.__main__", "landmark_graph._aliases"]


def _under(module: str, prefixes: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer(module: str) -> int:
    """0 the base (ops and helpers), 1 the rest of the core, 2 data, 3 applications."""
    if _under(module, APPLICATION):
        return 3
    if _under(module, DATA):
        return 2
    return 0 if _under(module, BASE) else 1


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module -> the package modules it imports (``from .x import y`` counts ``x.y`` when
    that is a module, else ``x``)."""
    known = modules(package)
    root = package.name
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = here[: len(here) - node.level + 1] if node.level else []
                base = ".".join(parent + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:  # "landmark_graph.ops.aggregate.x" -> its module
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == root and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _violations(graph: dict[str, set[str]], rule) -> list[str]:
    """The edges ``source -> target`` (aliases' excepted) for which ``rule(source, target)`` holds."""
    return [f"{source} -> {target}" for source, targets in sorted(graph.items()) if source not in ALIASES
            for target in sorted(targets) if rule(source, target)]


GRAPH = import_graph()


def test_every_listed_module_exists():
    names = set(GRAPH)
    for prefix in APPLICATION + DATA + BASE:
        assert any(_under(name, [prefix]) for name in names), prefix


def test_core_imports_neither_data_nor_applications():
    bad = _violations(GRAPH, lambda s, t: layer(s) <= 1 and layer(t) >= 2)
    assert not bad, "core modules import upwards:\n" + "\n".join(bad)


def test_ops_import_nothing_of_the_layers():
    bad = _violations(GRAPH, lambda s, t: layer(s) == 0 and layer(t) > 0)
    assert not bad, "ops imports from the layers above it:\n" + "\n".join(bad)


def test_data_imports_no_application():
    bad = _violations(GRAPH, lambda s, t: layer(s) == 2 and layer(t) == 3)
    assert not bad, "data imports application modules:\n" + "\n".join(bad)


def test_only_applications_and_aliases_import_applications():
    bad = _violations(GRAPH, lambda s, t: layer(t) == 3 and layer(s) != 3)
    assert not bad, "\n".join(bad)


def test_the_graph_sees_relative_lazy_and_submodule_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import f\n")
    (package / "a.py").write_text("def f():\n    from .sub import b\n    import pkg.sub\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import a\nfrom ..a import f\nimport os\n")
    assert import_graph(package) == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub", "pkg.sub.b"}, "pkg.sub": set(),
                                     "pkg.sub.b": {"pkg.a"}}


if __name__ == "__main__":
    graph = import_graph(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE)
    for source, targets in sorted(graph.items()):
        shown = [("^" if source not in ALIASES and layer(t) > layer(source) else "")
                 + t.removeprefix("landmark_graph.") for t in sorted(targets)]
        print(f"{source.removeprefix('landmark_graph.') or source}: {', '.join(shown)}")
