"""The package's one dependency rule, read from its imports (docs/architecture.md).

Every module of ``sklearn_beta`` belongs to a layer; a layer imports only the
layers below it:

    core <- trust <- estimators <- model_selection <- engine_config <- cli

with the readers (``io``) and the engine (step loop, replay) on the core
alone, the simulator (``datasets``) on the engine, the distributed backend
above the estimators and the readers, and the package's face
(``sklearn_beta/__init__.py``, which registers the distributed backend)
below the command line only. The imports are parsed, never run, so the test
sees every import whatever the installed extras.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sklearn_beta"

#: Each layer and the layers it may import (besides itself).
ALLOWED = {
    "core": set(),
    "trust": {"core"},
    "estimators": {"core", "trust"},
    "model_selection": {"core", "trust", "estimators"},
    "engine": {"core"},
    "io": {"core"},
    "datasets": {"core", "engine"},
    "plotting": {"core"},
    "distributed": {"core", "trust", "estimators", "io"},
    "engine_config": {"core", "trust", "estimators", "model_selection", "engine", "io"},
}
ALLOWED["face"] = set(ALLOWED)
ALLOWED["cli"] = set(ALLOWED)

#: Top-level modules that are not subpackages: the layer each belongs to.
TOP_LEVEL = {
    "__init__": "face",
    "exceptions": "core",
    "export": "io",
    "metrics": "model_selection",
    "plotting": "plotting",
    "fleet": "distributed",
    "replay": "engine",
}

#: Optional dependencies: the only imports allowed inside functions.
OPTIONAL = {"dask", "distributed", "matplotlib", "pyarrow", "numba"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("sklearn_beta", *parts))


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "face"
    if parts[0] in TOP_LEVEL:
        return TOP_LEVEL[parts[0]]
    assert parts[0] in ALLOWED, f"{module} belongs to no layer: add it to ALLOWED"
    return parts[0]


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(f): f for f in FILES}


def _says_optional(lines: list[str]) -> bool:
    return any("optional" in line.partition("#")[2].lower() for line in lines)


def _imports(path: Path):
    """``(imported module, line, inside a function, commented)`` of ``path``.

    ``commented``: the import, or the line above it, has a comment saying
    the dependency is optional.
    """
    module = module_name(path)
    is_package = path.name == "__init__.py"
    lines = path.read_text().splitlines()
    found = []

    def targets(node):
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = _resolve(node, module, is_package)
        # ``from . import name`` imports the submodule ``name`` when there is one.
        return [
            f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
            for a in node.names
        ]

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                commented = _says_optional(lines[child.lineno - 2 : child.end_lineno])
                found.extend(
                    (target, child.lineno, in_function, commented)
                    for target in targets(child)
                )
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, in_function or inner or isinstance(child, ast.Lambda))

    visit(ast.parse("\n".join(lines)), False)
    return found


IMPORTS = {module: _imports(f) for module, f in MODULES.items()}


def _own(target: str) -> str | None:
    """The package module ``target`` names (the longest existing prefix)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in MODULES:
            return name
    return None


def _graph() -> dict[str, set[str]]:
    return {
        module: {
            own
            for target, _, _, _ in found
            if target.split(".")[0] == "sklearn_beta"
            and (own := _own(target)) not in (None, module)
        }
        for module, found in IMPORTS.items()
    }


def test_every_module_is_parsed():
    assert len(MODULES) > 60
    assert {layer_of(m) for m in MODULES} == set(ALLOWED)


def test_no_import_runs_against_the_rule():
    wrong = [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if layer_of(target) != layer_of(module)
        and layer_of(target) not in ALLOWED[layer_of(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    circles = []

    def walk(module, path):
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not circles, "\n".join(circles)


def test_imports_inside_functions_are_optional_dependencies_only():
    wrong = [
        f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target} "
        + (
            "in a function without a comment saying it is optional"
            if target.split(".")[0] in OPTIONAL
            else "in a function: import it at the top of the module"
        )
        for module, found in IMPORTS.items()
        for target, line, in_function, commented in found
        if in_function and (target.split(".")[0] not in OPTIONAL or not commented)
    ]
    assert not wrong, "\n".join(wrong)


def test_importing_the_package_does_not_import_dask():
    # The distributed backend registers itself without importing dask (an
    # optional dependency); a fresh interpreter shows what the import pulls in.
    code = "import sys, sklearn_beta; print('dask' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == "False"


def test_the_face_registers_the_dask_backend():
    import sklearn_beta  # noqa: F401
    from sklearn_beta.distributed._fleet import is_dask_collection
    from sklearn_beta.estimators._backend import _REGISTRY

    assert [p for p, _ in _REGISTRY] == [is_dask_collection]


@pytest.mark.parametrize(
    "module", ["sklearn_beta.estimators._iterative", "sklearn_beta.io._readers"]
)
def test_the_test_sees_imports(module):
    # A guard on the parser itself: these modules import their neighbours.
    assert any(t.startswith("sklearn_beta.") for t, *_ in IMPORTS[module])
