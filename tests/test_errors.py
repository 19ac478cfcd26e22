"""One error base: every library error is a SaltError, and the CLI maps it to one line."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.errors import SaltError

PACKAGE = Path(__file__).resolve().parents[1] / "salt_vla"
INTERNAL = {"_Stop", "Undecided"}  # control flow inside one module, never shown to a user


def error_classes() -> list[tuple[str, str]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ClassDef) and node.name not in INTERNAL
                    and (node.name.endswith("Error") or node.name == "NonFiniteLoss")):
                module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
                found.append((module, node.name))
    return sorted(found)


def test_every_library_error_derives_from_salt_error() -> None:
    classes = error_classes()
    assert len(classes) > 20, "the scan found too few error classes to mean anything"
    bad = [f"{m}.{n}" for m, n in classes
           if not issubclass(getattr(importlib.import_module(m), n), SaltError)]
    assert not bad, f"not SaltError subclasses: {bad}"


def test_error_names_are_unique() -> None:
    names = [n for _, n in error_classes()]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_a_library_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """`salt train --targets online` on a root without labels.json (was a 61-line traceback)."""
    res = CliRunner().invoke(app, ["train", "--exp", "tiny", "--targets", "online", "--data",
                                   str(tmp_path), "--out", str(tmp_path / "run"), "--set",
                                   "teacher=random:vit_tiny:0"])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), f"a traceback, not a message: {res.exception!r}"
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "labels.json" in errors[0], res.output
