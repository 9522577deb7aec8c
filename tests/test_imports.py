# Run: .venv/bin/pytest tests/test_imports.py
"""The import graph of the project's packages, read from the source with `ast`.

- It has no cycles: every `import` counts, at module level or inside a function (a function-
  level import only hides a cycle until that function runs). Relative imports are resolved.
- The device package `appliance` names no `build`, `trainer` or `benchmarks` module, not in an
  import and not in a string (an `importlib.import_module("build....")` is an import too),
  except in the command registry (appliance/commands/__init__.py), which loads the build
  commands only where the build extra is installed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "build", "trainer", "benchmarks")
BUILD_SIDE = ("build", "trainer", "benchmarks")
REGISTRY = "appliance.commands"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name loads (`a.b.func` -> `a.b`), or None if external."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement in `module`."""
    tree = ast.parse(modules[module].read_text(encoding="utf-8"))
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports pkg.mod when it is a module, else a name of pkg.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.append((resolved, node.lineno))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycles():
    modules = _modules()
    lines = {(m, t): line for m in modules for t, line in imports_of(m, modules)}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, t in lines:
        graph[m].add(t)
    cycles = []
    while (cycle := find_cycle(graph)) is not None:  # each cycle once: drop its closing edge
        graph[cycle[-2]].discard(cycle[-1])
        cycles.append(cycle)
    report = "\n\n".join(
        "\n".join(
            f"  {a} (line {lines[(a, b)]}) imports {b}" for a, b in zip(c, c[1:], strict=False)
        )
        for c in cycles
    )
    assert not cycles, f"{len(cycles)} import cycle(s):\n{report}"


def test_the_cycle_finder_finds_a_cycle_and_resolves_relative_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from . import y\n    from .y import g\n")
    (pkg / "y.py").write_text("from pkg.x import f\nimport json\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.x": pkg / "x.py", "pkg.y": pkg / "y.py"}
    assert imports_of("pkg.x", modules) == [("pkg.y", 2), ("pkg.y", 3)]
    assert imports_of("pkg.y", modules) == [("pkg.x", 1)]


BUILD_NAME = re.compile(r"(?<![\w/.-])(?:build|trainer|benchmarks)(?:\.[A-Za-z_]\w*)+\b")


def _build_side_names(path: Path) -> list[str]:
    """Build-side module names in a file: imports, and strings that spell a module path."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = BUILD_NAME.findall(node.value)
            if node.value in BUILD_SIDE:
                names.append(node.value)
        else:
            continue
        for name in names:
            if name.split(".")[0] in BUILD_SIDE:
                hits.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    return hits


def test_appliance_names_no_build_module_outside_the_registry():
    modules = _modules()
    hits = []
    for name, path in modules.items():
        if name.split(".")[0] == "appliance" and name != REGISTRY:
            hits += _build_side_names(path)
    assert hits == [], "appliance reaches into the build stage:\n" + "\n".join(hits)


def test_the_registry_only_names_the_build_commands_package():
    hits = _build_side_names(_modules()[REGISTRY])
    assert hits, "the registry should load build.commands"
    assert all(h.endswith(": build.commands") for h in hits), hits


def test_the_string_check_catches_a_dynamic_import(tmp_path):
    (tmp_path / "cli.py").write_text(
        'COMMANDS = {"eval": ("build.evaluation", "Evaluate")}\n'
        'HELP = "build one with `make bundle` (see build/bundle.py)"\n'
    )
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert _build_side_names(tmp_path / "cli.py") == ["cli.py:1: build.evaluation"]
    finally:
        REPO = saved
