"""The dependency graph points one way: stages -> soups (library), datasets -> models; never back, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("models", "datasets", "soups", "finetune", "eval", "plots", "pipeline")
# what each package may import from the project (the stages never import each other sideways)
ALLOWED = {
    "models": set(),
    "datasets": {"models"},
    "soups": {"models", "datasets"},
    "finetune": {"models", "datasets"},
    "eval": {"models", "datasets"},
    "plots": {"models", "datasets", "soups"},
    "pipeline": {"models"},
}


def project_imports(package: str) -> dict[str, set[str]]:
    """Project packages imported by each file of `package` (at any depth, including function bodies)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
        found[str(Path(path).relative_to(REPO))] = {n for n in names if n in PACKAGES and n != package}
    return found


def test_every_package_imports_only_what_it_may():
    wrong = {
        f"{file} imports {sorted(names - ALLOWED[package])}"
        for package in PACKAGES
        for file, names in project_imports(package).items()
        if names - ALLOWED[package]
    }
    assert not wrong, sorted(wrong)
