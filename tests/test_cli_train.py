"""`salt train` and `salt teacher train` share their run options: the same errors, before any
data is touched, and the same run directory defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from salt_vla.cli import app

COMMANDS = {"train": ["train", "--exp", "tiny"],
            "teacher train": ["teacher", "train", "--exp", "teacher-tiny"]}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_stray_resume_argument_is_refused(name: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [*COMMANDS[name], "--out", str(tmp_path / "run"), "auto"])
    assert res.exit_code == 1, res.output
    assert "did you mean --resume auto?" in res.output
    assert not (tmp_path / "run").exists(), f"{name} created its run dir before refusing"


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_wandb_mode_names_the_choices(name: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [*COMMANDS[name], "--out", str(tmp_path), "--wandb", "bogus"])
    assert res.exit_code == 1 and "online, offline, disabled" in res.output, res.output


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_override_is_refused_before_the_run_dir_is_announced(name: str) -> None:
    res = CliRunner().invoke(app, [*COMMANDS[name], "--set", "no_such_key=1"])
    assert res.exit_code == 1 and "no_such_key" in res.output, res.output
    assert "run dir:" not in res.output
