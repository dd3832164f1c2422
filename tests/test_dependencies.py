"""The dependency graph points one way: stages -> soups (library), datasets -> models; never back, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("models", "datasets", "soups", "finetune", "eval", "plots", "pipeline", "benchmarks")
STAGES = {"finetune", "eval", "plots", "pipeline"}
# what each package may import from the project: the shared packages (models, datasets) and the soup
# library; the stages never import each other sideways, and nothing imports the benchmarks
ALLOWED = {
    "models": set(),
    "datasets": {"models"},
    "soups": {"models", "datasets"},
    "finetune": {"models", "datasets", "soups"},
    "eval": {"models", "datasets"},
    "plots": {"models", "datasets", "soups"},
    "pipeline": {"models"},
    "benchmarks": {"models", "datasets", "soups", "finetune", "eval", "plots"},
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


def test_every_top_level_package_has_rules():
    """A new top-level package gets a line in ALLOWED, so its imports are checked too."""
    found = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    assert found == set(PACKAGES), found ^ set(PACKAGES)


def test_stages_import_only_shared_packages_and_the_soup_library():
    assert all(ALLOWED[stage] <= {"models", "datasets", "soups"} for stage in STAGES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a path that returns to its start), or None if it has none."""
    state: dict[str, str] = {}  # node -> "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_find_cycle_finds_a_constructed_cycle_and_no_false_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_cycle_between_top_level_packages():
    """The imports the code really makes (any depth, function bodies too) between every top-level package."""
    graph = {package: set().union(*project_imports(package).values()) for package in PACKAGES}
    assert find_cycle(graph) is None, find_cycle(graph)
    assert find_cycle(ALLOWED) is None, find_cycle(ALLOWED)


def module_imports(any_depth: bool = False) -> dict[str, set[str]]:
    """Project modules each module imports at module scope (what runs when it is first imported), or with
    `any_depth` also inside function bodies (what it needs at all)."""
    paths = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in paths.items():
        deps = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if any_depth else tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def test_no_import_cycle_between_modules():
    graph = module_imports()
    assert "finetune.train" in graph and "models.checkpoint" in graph["soups.streaming"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_no_import_cycle_inside_a_package_at_any_depth():
    """A function-body import hides a cycle from Python's import machinery, not from a reader: none inside a package."""
    graph = module_imports(any_depth=True)
    assert "datasets.imagenet_relabel" in graph["datasets.imagenet"]  # imported inside a function: read too
    inside = {name: {d for d in deps if d.split(".")[0] == name.split(".")[0]} for name, deps in graph.items()}
    assert find_cycle(inside) is None, find_cycle(inside)
