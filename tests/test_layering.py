"""Imports between mpcft's modules run one way: no import cycle, module-level or inside
functions, in the installed package (mpcft, with kernels/ and protocols/ installed as
mpcft.kernels and mpcft.protocols); and the project's shared layering checks pass."""
import ast
import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOTS = ("mpcft", "mpcft.kernels", "mpcft.protocols")
REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_CHECKS = REPO.parent / "shared" / "checks"


def installed_modules() -> dict[str, pathlib.Path]:
    """{module name: source file} of every module of the installed package; a package is
    named by its __init__.py."""
    modules = {}
    for root in ROOTS:
        folder = pathlib.Path(importlib.util.find_spec(root).origin).parent
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((root,) + parts)] = path
    return modules


def imported_modules(name: str, path: pathlib.Path, modules) -> set[str]:
    """The modules of `modules` that module `name` imports anywhere in its source: a name
    imported from a package is that submodule if there is one, else the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in found if target in modules and target != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] of `graph`, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_between_mpcft_modules():
    modules = installed_modules()
    assert {"mpcft.cli", "mpcft.finetune.trainer", "mpcft.kernels.ring", "mpcft.protocols.sharing"} <= set(modules)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert "mpcft.data.files" in graph["mpcft.data.owners"]          # the graph sees relative imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("check", ["layering.py", "import_cycles.py"])
def test_shared_layering_checks_print_nothing(check):
    if not (SHARED_CHECKS / check).exists():
        pytest.skip(f"{SHARED_CHECKS / check} is not there (the project's shared checks sit beside the checkout)")
    done = subprocess.run([sys.executable, str(SHARED_CHECKS / check), "."], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout == "" and done.stderr == "" and done.returncode == 0, done.stdout + done.stderr
