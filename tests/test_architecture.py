"""The house's one boundary test: what may import what (docs/architecture.md).

- The library core (``curvfast`` minus the application layer) never imports the application layer
  (``curvfast.pipelines``, ``curvfast.cli``, ``curvfast.__main__``), not even inside a function.
- The application layer and the benchmarks import from the core only names a *face* exports (a core
  package's ``__init__`` or a top-level core module, name listed in its ``__all__``).
- A pipeline imports its own package and ``curvfast.pipelines.common``, never another pipeline; the
  benchmarks import a pipeline only through its package faces (``__init__``), and the shared
  application code (``curvfast.pipelines.common``) freely.
- No import cycle between curvfast's modules (imports inside functions count).

The checker reads the source (AST), so it sees imports hidden in function bodies, and runs on any copy
of the tree: the tests plant each kind of violation in a copy and check that it is caught.
"""
from __future__ import annotations

import ast
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP_MODULES = ("curvfast.pipelines", "curvfast.cli", "curvfast.__main__")


def _module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(root: pathlib.Path, name: str) -> bool:
    return (root / pathlib.Path(*name.split(".")) / "__init__.py").is_file()


def _is_module(root: pathlib.Path, name: str) -> bool:
    return _is_package(root, name) or (root / pathlib.Path(*name.split("."))).with_suffix(".py").is_file()


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_app(name: str) -> bool:
    return _in(name, APP_MODULES)


def _imports(root: pathlib.Path, path: pathlib.Path) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import in ``path``, relative ones resolved,
    ``from package import submodule`` as the submodule."""
    module = _module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None, node.lineno) if _is_module(root, sub) else (base, alias.name, node.lineno))
    return [f for f in found if _in(f[0], ("curvfast",))]


def _exports(root: pathlib.Path, face: str) -> set[str]:
    """The names of ``face``'s ``__all__`` (a literal list or tuple), read from its source."""
    path = root / pathlib.Path(*face.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _is_face(root: pathlib.Path, name: str) -> bool:
    """A core package (its ``__init__``) or a module directly under ``curvfast/``, neither private (``_name``)."""
    private = any(part.startswith("_") for part in name.split("."))
    return not _is_app(name) and not private and (_is_package(root, name) or name.count(".") == 1)


def _face_violation(root: pathlib.Path, module: str, name: str | None) -> str | None:
    if not _is_face(root, module):
        return f"imports the core internal {module} (import it from its package face)"
    if name is not None and name != "*" and name not in _exports(root, module):
        return f"imports {name} from {module}, which does not export it (add it to {module}.__all__)"
    return None


def _sources(root: pathlib.Path, folder: str):
    return sorted((root / folder).rglob("*.py"))


def violations(root: pathlib.Path) -> list[str]:
    """Every break of the layer rules under ``root`` (a checkout: ``curvfast/`` and ``benchmarks/``)."""
    found = []
    for path in _sources(root, "curvfast"):
        here = _module_name(root, path)
        for module, name, line in _imports(root, path):
            where = f"{path.relative_to(root)}:{line}"
            if not _is_app(here):
                if _is_app(module):
                    found.append(f"{where}: the core imports the application layer ({module})")
                continue
            if not _is_app(module):
                problem = _face_violation(root, module, name)
                if problem:
                    found.append(f"{where}: {problem}")
            elif _in(here, ("curvfast.pipelines",)) and here.count(".") >= 2:
                own = ".".join(here.split(".")[:3])
                if not _in(module, (own, "curvfast.pipelines.common")) and module != "curvfast.pipelines":
                    found.append(f"{where}: {here} imports another pipeline ({module})")
    for path in _sources(root, "benchmarks"):
        for module, name, line in _imports(root, path):
            where = f"{path.relative_to(root)}:{line}"
            if _in(module, ("curvfast.pipelines.common", "curvfast.cli")):
                continue  # the application's shared code and the CLI: public to the benchmarks
            if _is_app(module):
                if not _is_package(root, module):
                    found.append(f"{where}: a benchmark imports the pipeline internal {module} (use its package face)")
                elif name is not None and name not in _exports(root, module):
                    found.append(f"{where}: imports {name} from {module}, which does not export it")
            else:
                problem = _face_violation(root, module, name)
                if problem:
                    found.append(f"{where}: {problem}")
    return sorted(set(found)) + [f"import cycle: {' -> '.join(c)}" for c in cycles(root)]


def cycles(root: pathlib.Path) -> list[list[str]]:
    """Strongly connected groups of curvfast modules that import each other (Tarjan), each as a list."""
    graph: dict[str, set[str]] = {}
    for path in _sources(root, "curvfast"):
        here = _module_name(root, path)
        graph.setdefault(here, set()).update(m for m, _, _ in _imports(root, path) if m != here)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_tree_keeps_the_layer_rules():
    assert violations(ROOT) == []


@pytest.fixture()
def tree(tmp_path):
    """A copy of the sources (curvfast/ and benchmarks/, .py files only) to plant violations in."""
    for folder in ("curvfast", "benchmarks"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    assert violations(tmp_path) == []
    return tmp_path


def _plant(root: pathlib.Path, relative: str, code: str) -> None:
    path = root / relative
    path.write_text(path.read_text() + "\n\n" + code + "\n")


@pytest.mark.parametrize("relative, code, message", [
    ("curvfast/metrics.py", "def _late():\n    from curvfast.pipelines.mia import Config", "core imports the application"),
    ("curvfast/engine.py", "def _late():\n    from .pipelines.common import contract", "core imports the application"),
    ("curvfast/pipelines/mia/attacks.py", "from curvfast.curvature._model import unwrap_model", "core internal"),
    ("curvfast/pipelines/mia/attacks.py", "from curvfast.curvature import check_batch", "does not export it"),
    ("curvfast/pipelines/mia/attacks.py", "def _late():\n    from curvfast.pipelines.verifix import Config",
     "imports another pipeline"),
    ("benchmarks/__init__.py", "from curvfast.pipelines.verifix.patches import layer_operator", "pipeline internal"),
    ("benchmarks/__init__.py", "from curvfast.curvature._dispatch import input_curvature", "core internal"),
    ("curvfast/pipelines/mia/attacks.py", "from curvfast._version import __version__", "core internal"),
    ("curvfast/io.py", "def _late():\n    from curvfast.engine import score", "import cycle"),
])
def test_a_planted_violation_is_caught(tree, relative, code, message):
    _plant(tree, relative, code)
    found = violations(tree)
    assert any(message in v for v in found), found
