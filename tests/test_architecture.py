"""The import rules of docs/architecture.md, checked on the source (imports inside functions
count too: a lazy import is still a dependency, and a cycle hidden in one is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "salt_vla"

# Layers from the bottom up. A module may import its own layer and the layers below it.
GROUND = {"errors", "files", "paths", "distributed"}
LOWER = ("data", "models", "masking", "cache")  # never import what trains, evaluates or prints
UPPER = ("trainer", "eval", "runs", "cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``salt_vla`` module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("salt_vla"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not base.startswith("salt_vla"):
                continue
            found.add(base)
            # `from salt_vla.cli import eval` imports the module salt_vla.cli.eval
            for a in node.names:
                if (PACKAGE.parent / Path(*f"{base}.{a.name}".split("."))).with_suffix(
                        ".py").is_file():
                    found.add(f"{base}.{a.name}")
    found.discard(here)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(p) if m in modules} for name, p in modules.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(g[m]):
            # A package's __init__ importing its own submodule is how packages export names.
            if m == dep.rpartition(".")[0]:
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("lower", LOWER)
def test_lower_layers_never_import_upper_ones(lower: str) -> None:
    bad = sorted(f"{m} imports {d}" for m, deps in graph().items() if layer(m) == lower
                 for d in deps if layer(d) in UPPER or layer(d) in ("demo", "export"))
    assert not bad, "lower layer imports an upper one:\n" + "\n".join(bad)


def test_library_never_imports_the_cli() -> None:
    bad = sorted(f"{m} imports {d}" for m, deps in graph().items()
                 if layer(m) != "cli" and m not in ("salt_vla.__main__",)
                 for d in deps if layer(d) == "cli")
    assert not bad, "library code imports the CLI:\n" + "\n".join(bad)


def test_ground_floor_imports_only_the_ground_floor() -> None:
    bad = sorted(f"{m} imports {d}" for m, deps in graph().items() if layer(m) in GROUND
                 for d in deps if layer(d) not in GROUND)
    assert not bad, "errors/files/paths/distributed must stay at the bottom:\n" + "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The rules above would pass vacuously if lazy imports were missed."""
    g = graph()
    assert "salt_vla.cache.build" in g["salt_vla.cli.cache"]  # imported inside cache_build()
    assert "salt_vla.eval.probe_run" in g["salt_vla.demo"]  # inside _probe_one()


def test_trainer_reads_only_the_run_directory_contract() -> None:
    """The trainer writes run directories, so it may use their contract (file names, config,
    heartbeat); status, sweep and report sit above it and launch or read it."""
    allowed = {"salt_vla.runs.rundir", "salt_vla.runs.heartbeat"}
    bad = sorted(f"{m} imports {d}" for m, deps in graph().items() if layer(m) == "trainer"
                 for d in deps if layer(d) == "runs" and d not in allowed)
    assert not bad, "the trainer imports more of runs/ than its contract:\n" + "\n".join(bad)


def test_run_directory_contract_stands_alone() -> None:
    deps = graph()["salt_vla.runs.rundir"]
    bad = sorted(d for d in deps if layer(d) not in GROUND)
    assert not bad, f"runs/rundir.py must import only the ground floor, imports {bad}"
