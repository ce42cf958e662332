"""The package's layers import only downwards, and no module hides an import of our own code inside a function.

utils <- models <- data <- runtime <- {train, dense, deploy, inference} <- {bench, search} <- cli
(the search times the deploy form and trains its supernet on the runtime, as the benchmark times every backend)
(the package root, ``efficientformer/__init__.py`` and ``__main__.py``, sits on top.)
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "efficientformer"
LAYERS = {
    "utils": 0,
    "models": 1,
    "data": 2,
    "runtime": 3,
    "train": 4,
    "dense": 4,
    "deploy": 4,
    "inference": 4,
    "search": 5,
    "bench": 5,
    "cli": 6,
}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _internal_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of efficientformer code in ``path``."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    if rel.name == "__init__":
        package = list(rel.parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                    names = [target] if child.module else [f"{target}.{a.name}" for a in child.names]
                else:
                    names = [child.module or ""]
                for name in names:
                    if name.startswith("efficientformer"):
                        found.append((name, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("efficientformer"):
                        found.append((alias.name, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def test_layers_import_only_downwards_and_never_inside_functions():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        area = _area(module)
        for target, line, in_function in _internal_imports(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if in_function:
                problems.append(f"{where} inside a function")
            if area not in LAYERS:  # the package root: may import anything
                continue
            target_area = _area(target)
            if target_area in LAYERS and LAYERS[target_area] > LAYERS[area]:
                problems.append(
                    f"{where}: {area} (layer {LAYERS[area]}) must not import {target_area} "
                    f"(layer {LAYERS[target_area]})"
                )
            if target_area in LAYERS and LAYERS[target_area] == LAYERS[area] and target_area != area:
                problems.append(f"{where}: sibling areas {area} and {target_area} must not import each other")
    assert not problems, "\n".join(problems)
