"""A run's life as a researcher drives it: start from a preset (or a config file) with a
relative --cache, resume with `salt train --out RUN --resume` alone, extend it, evaluate it
from another directory, and read the same throughput on the console, in `salt status` and
in `salt report`."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.errors import ConfigError
from salt_vla.runs.rundir import read_metrics, read_run_config, throughput
from salt_vla.trainer.checkpoint import load_checkpoint

# The tiny preset's shapes (the cache_store fixture: vit_tiny teacher, tiny-8x64 view, 10
# rows), with a model small enough for a few CPU steps.
SMALL = ["student_dim=64", "student_depth=1", "student_heads=2", "predictor_width=32",
         "predictor_depth=1", "predictor_heads=2", "warmup_steps=2", "batch_size=2",
         "num_workers=0", "log_every=1"]


def salt(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_resume_needs_only_out_and_resume(cache_store: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    rel_cache = os.path.relpath(cache_store, work)  # a relative --cache, as typed
    argv = ["train", "--exp", "tiny", "--cache", rel_cache, "--out", "run",
            *sets(*SMALL, "max_steps=6", "stop_at=3")]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/salt", *argv])  # as the shell passes it
    salt(*argv)
    run = work / "run"
    config, meta = read_run_config(run)
    assert config["max_steps"] == 6 and config["student_dim"] == 64
    assert meta["inputs"]["cache"] == str(cache_store.resolve())  # absolute, not as typed
    assert meta["argv"] == ["salt", *argv]
    assert meta["cwd"] == str(work) and meta["version"]
    assert meta["git"] is None or len(meta["git"]["commit"]) == 40
    assert load_checkpoint(run / "ckpt.pt")["step"] == 3

    # From another directory, with nothing but --out and --resume: the saved config, cache
    # and split; stop_at belonged to the first session.
    monkeypatch.chdir(elsewhere)
    out = salt("train", "--out", str(run), "--resume")
    assert f"config: saved {run / 'config.json'}" in out
    assert f"cache: {cache_store.resolve()}  (from saved in {run / 'config.json'})" in out
    assert load_checkpoint(run / "ckpt.pt")["step"] == 6

    # --set on resume: runtime keys and a longer run only.
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--set", "lr=0.5"])
    assert res.exit_code == 1 and "--set lr: a resumed run keeps the config" in res.output
    assert "log_every" in res.output  # the runtime keys are listed
    salt("train", "--out", str(run), "--resume", *sets("max_steps=8", "log_every=2"))
    state = load_checkpoint(run / "ckpt.pt")
    assert state["step"] == 8 and state["schedule"] == [[0, 6], [6, 8]]
    assert read_run_config(run)[0]["log_every"] == 2

    # The teacher of the run, found from another directory through the recorded cache: the
    # path `salt eval probe --encoder teacher:RUN` takes.
    from salt_vla.eval.encoders import resolve_encoder

    enc = resolve_encoder(f"teacher:{run}")
    assert enc.describe["source"] == "random:vit_tiny:0" and enc.dim == 192


def test_resume_without_a_saved_config_says_what_to_give(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "new"), "--resume"])
    assert res.exit_code == 1, res.output
    assert "no saved config" in res.output and "--exp NAME" in res.output
    res = CliRunner().invoke(app, ["train"])
    assert res.exit_code == 1 and "--config FILE" in res.output, res.output
    res = CliRunner().invoke(app, ["train", "--resume"])
    assert res.exit_code == 1 and "--out RUN" in res.output, res.output


def test_throughput_agrees_on_console_status_and_report(cache_store: Path,
                                                        tmp_path: Path) -> None:
    run = tmp_path / "one"
    out = salt("train", "--exp", "tiny", "--cache", str(cache_store), "--out", str(run),
               *sets(*SMALL, "max_steps=6", "log_every=2"))
    records = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    lines = [ln for ln in out.splitlines() if ln.startswith("step ")]
    assert len(lines) == len(records) == 3
    rate = throughput(records)
    assert rate.clips == 12  # 6 steps x 2 clips
    for line, rec in zip(lines, records, strict=True):
        interval = re.search(r"\| ([\d.]+) clips/s \(run ([\d.]+)\)", line)
        assert interval, line
        assert float(interval.group(1)) == pytest.approx(rec["clips"] / rec["interval_s"],
                                                         abs=0.051)
        assert "nloss " in line and "gnorm " in line and "| norm " not in line
    console_run = float(re.search(r"\(run ([\d.]+)\)", lines[-1]).group(1))
    status = json.loads(salt("status", str(run), "--json"))["runs"][0]
    report = tmp_path / "r.md"
    salt("report", str(run), "--out", str(report))
    row = next(ln for ln in report.read_text().splitlines() if ln.startswith("| one "))
    report_rate = float(row.split("|")[-3])
    assert status["clips_per_s"] == pytest.approx(rate.clips_per_s)
    assert console_run == pytest.approx(rate.clips_per_s, abs=0.051)
    assert report_rate == pytest.approx(rate.clips_per_s, abs=0.051)


def test_a_config_file_between_preset_and_set(tmp_path: Path) -> None:
    from salt_vla.trainer.run_config import STAGE2, settle

    path = tmp_path / "my.toml"
    path.write_text("lr = 0.002\nmask_ratio = 0.5\nbetas = [0.8, 0.9]\n")
    s = settle(STAGE2, "tiny", path, ["mask_ratio=0.6"], None, None)
    assert (s.cfg.lr, s.cfg.mask_ratio, s.cfg.betas) == (0.002, 0.6, (0.8, 0.9))
    assert s.cfg.predictor_width == 96  # the preset's, the file leaves it out
    assert s.source == f"preset tiny + {path} + --set"
    without = settle(STAGE2, None, path, [], None, None).cfg
    assert without.predictor_width == 384 and without.name == "custom"  # the defaults
    path.write_text("lrr = 1\n")
    with pytest.raises(ConfigError, match=r"my.toml: unknown config key 'lrr' \(did you mean"):
        settle(STAGE2, "tiny", path, [], None, None)
    path.write_text("[training]\nlr = 1\n")
    with pytest.raises(ConfigError, match="is a table; salt configs are flat"):
        settle(STAGE2, "tiny", path, [], None, None)
    path.write_text("lr = 'fast'\n")
    with pytest.raises(ConfigError, match="my.toml: lr='fast': expected float"):
        settle(STAGE2, "tiny", path, [], None, None)


def test_yaml_config_file(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    from salt_vla.trainer.run_config import STAGE1, settle

    path = tmp_path / "t.yaml"
    path.write_text("epochs: 3\nlr: 0.01\n")
    cfg = settle(STAGE1, "teacher-tiny", path, [], None, None).cfg
    assert (cfg.epochs, cfg.lr, cfg.blr) == (3, 0.01, 0.0)  # an lr without blr is used as is


@pytest.mark.parametrize("command", [["exp", "show"], ["teacher", "show"]])
def test_show_writes_toml_that_config_reads_back(command: list[str], tmp_path: Path) -> None:
    from salt_vla.trainer.experiments import PRESETS
    from salt_vla.trainer.run_config import STAGE1, STAGE2, settle
    from salt_vla.trainer.teacher_experiments import TEACHER_PRESETS, resolve_teacher

    stage, presets = ((STAGE2, PRESETS) if command[0] == "exp"
                      else (STAGE1, {n: resolve_teacher(n) for n in TEACHER_PRESETS}))
    extra = sets("student_dim=64") if command[0] == "exp" else []
    for name, want in presets.items():
        text = salt(*command, name)
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        got = settle(stage, None, path, [], None, None).cfg  # the file alone, no --exp
        assert got == want and got.notes == want.notes, name
        # a non-default None-able key and its description as a comment
        edited = salt(*command, name, *extra)
        path.write_text(edited)
        assert settle(stage, None, path, [], None, None).cfg == settle(
            stage, name, None, [x for x in extra if x != "--set"], None, None).cfg
    assert "lr" in text and "# peak learning rate" in text


def test_show_keys_lists_types_defaults_and_descriptions() -> None:
    out = salt("exp", "show", "--keys")
    rows = {ln.split()[0]: ln for ln in out.splitlines()}
    assert rows["lr"].split()[1:3] == ["float", "0.00015"]
    assert "peak learning rate" in rows["lr"]
    assert rows["student_dim"].split()[1:4] == ["int", "or", "unset"]
    assert rows["betas"].split()[1:3] == ["2", "floats"]
    tiny = {ln.split()[0]: ln for ln in salt("exp", "show", "tiny", "--keys").splitlines()}
    assert tiny["student"].split()[1:3] == ["string", '"tiny"']  # NAME's values as defaults
    teacher = salt("teacher", "show", "--keys")
    assert "blr" in teacher and "norm_pix" in teacher


def test_every_key_has_one_description() -> None:
    from dataclasses import fields

    from salt_vla.trainer.experiments import TrainConfig
    from salt_vla.trainer.loop_config import key_help
    from salt_vla.trainer.teacher_experiments import TeacherTrainConfig

    for cls in (TrainConfig, TeacherTrainConfig):
        missing = [f.name for f in fields(cls) if not key_help(cls, f.name)]
        assert not missing, f"{cls.__name__} keys without a description: {missing}"


def test_one_teacher_spelling_with_deprecated_aliases(tmp_path: Path) -> None:
    from salt_vla.trainer.experiments import TrainConfig
    from salt_vla.trainer.run_config import STAGE2, settle

    s = settle(STAGE2, "tiny", None, ["targets=online", "teacher_ckpt=random:vit_tiny:0"],
               None, None)
    assert s.cfg.teacher == "random:vit_tiny:0"
    assert s.notes == ("--set teacher_ckpt=... is deprecated: it is now --set teacher=...",)
    with pytest.raises(ConfigError, match="random:ARCH:SEED"):
        settle(STAGE2, "tiny", None, ["targets=online", "teacher=random"], None, None)
    with pytest.raises(ConfigError, match="teacher_arch=vit_tiny"):
        settle(STAGE2, "tiny", None, ["teacher=vit_tiny"], None, None)
    with pytest.raises(ConfigError, match="add --targets online"):  # not silently unused
        settle(STAGE2, "tiny", None, ["teacher=random:vit_tiny:0"], None, None)
    # a relative checkpoint path is recorded absolute
    rel = settle(STAGE2, "tiny", None, ["targets=online", "teacher=t.pth"], None, None)
    assert rel.cfg.teacher == str(Path("t.pth").resolve())
    # configs saved before the rename: `teacher` was the arch, `teacher_ckpt` the source
    old = {**TrainConfig().to_dict(), "teacher": "vit_small", "teacher_ckpt": "/x/t.pth",
           "targets": "online"}
    del old["teacher_arch"]
    cfg = TrainConfig.from_dict(old)
    assert (cfg.teacher, cfg.teacher_arch) == ("/x/t.pth", "vit_small")
    cached = TrainConfig.from_dict({**old, "targets": "cached"})  # its source was unused
    assert (cached.teacher, cached.teacher_arch) == ("", "vit_small")


def test_cli_teacher_options(cache_data_root: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--exp", "tiny", "--targets", "online",
                                   "--teacher", "random", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "random:ARCH:SEED" in res.output, res.output
    assert not (tmp_path / "r").exists()
    # cache build: a bare `random` is not read as a path; --teacher-ckpt still works, once
    # deprecated
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["cache", "build", str(cache_data_root), "--teacher",
                                   "random", "--out", str(out), "--no-progress"])
    assert res.exit_code == 1 and "random:ARCH:SEED" in res.output, res.output
    assert "file not found" not in res.output and not out.exists()
    res = CliRunner().invoke(app, ["cache", "build", str(cache_data_root), "--teacher-ckpt",
                                   "random", "--out", str(out), "--no-progress"])
    assert "--teacher-ckpt is deprecated: it is now --teacher" in res.output, res.output
    res = CliRunner().invoke(app, ["cache", "build", str(cache_data_root), "--teacher-ckpt",
                                   "a", "--teacher", "b"])
    assert res.exit_code == 1 and "give only --teacher" in res.output


def test_extending_a_run_stretches_the_rest_of_each_cosine(tmp_path: Path) -> None:
    import numpy as np

    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import RunSpec, train
    from salt_vla.trainer.schedules import lr_at, weight_decay_at
    from salt_vla.trainer.sources import memory_sources

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, 8, 64, 64, 3), dtype=np.uint8)
    targets = rng.standard_normal((16, 64, 192)).astype(np.float16)

    def run(out: Path, *items: str, resume: str | None = None):
        cfg = resolve("tiny", [*SMALL, *items])
        return train(cfg, RunSpec(out=out, resume=resume), memory_sources(cfg, frames, targets),
                     echo=lambda s: None)

    def logged(out: Path, key: str) -> dict[int, float]:
        return {r["step"]: r[key] for r in read_metrics(out / "metrics.jsonl") if key in r}

    # stopped at 4 of 8, extended to 12: continuous, and at min_lr on the new last step
    run(tmp_path / "a", "max_steps=8", "stop_at=4")
    run(tmp_path / "a", "max_steps=12", resume="yes")
    lr, wd = logged(tmp_path / "a", "lr"), logged(tmp_path / "a", "wd")
    legs = [(0, 8), (4, 12)]
    for step in range(1, 13):  # the record of step N holds the schedule of step N - 1
        assert lr[step] == pytest.approx(lr_at(step - 1, 12, 2, 1e-3, 1e-4, legs))
        assert wd[step] == pytest.approx(weight_decay_at(step - 1, 12, 0.04, 0.4, legs))
    assert lr[4] == pytest.approx(lr_at(3, 8, 2, 1e-3, 1e-4))  # before the extension: as was
    assert lr_at(12, 12, 2, 1e-3, 1e-4, legs) == pytest.approx(1e-4)
    # a finished run goes on at the end values
    run(tmp_path / "b", "max_steps=6")
    run(tmp_path / "b", "max_steps=9", resume="yes")
    lr_b = logged(tmp_path / "b", "lr")
    assert [lr_b[s] for s in (8, 9)] == pytest.approx([1e-4, 1e-4])
    assert read_run_config(tmp_path / "b")[1]["schedule"] == [[0, 6], [6, 9]]
    # shorter, or a length key that does not set the length, is refused
    with pytest.raises(ConfigError, match="can only be extended"):
        run(tmp_path / "b", "max_steps=7", resume="yes")
    with pytest.raises(ConfigError, match="leaves the run at 9 steps"):
        run(tmp_path / "b", "max_steps=9", "epochs=50", resume="yes")


def test_report_takes_what_status_takes(tmp_path: Path, make_run) -> None:
    make_run(tmp_path / "runs" / "a", "exp1")
    make_run(tmp_path / "runs" / "b", "exp3")
    code = CliRunner().invoke(app, ["status", str(tmp_path / "runs")]).exit_code
    assert code == 0
    salt("report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"))
    text = (tmp_path / "r.md").read_text()
    assert "| a |" in text and "| b |" in text
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "holds neither" in res.output


def test_status_resume_hint_is_a_working_command(tmp_path: Path, make_run) -> None:
    from salt_vla.runs.status import run_status

    run = make_run(tmp_path / "my run", status="stopped")
    msg = run_status(run).message
    assert f"`salt train --out '{run}' --resume`" in msg and "..." not in msg
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "task": "teacher"}))
    assert f"`salt teacher train --out '{run}' --resume`" in run_status(run).message


def _commands(group: object, path: list[str]):
    for name, sub in getattr(group, "commands", {}).items():
        yield [*path, name]
        yield from _commands(sub, [*path, name])


def test_help_shows_words_not_python_types() -> None:
    import typer

    root = typer.main.get_command(app)
    for path in [[], *_commands(root, [])]:
        out = CliRunner().invoke(app, [*path, "--help"], terminal_width=200).output
        for bad in ("<bool>", "<str>", "<int>", "<float>", "<path>", "list[", "[[", "]]",
                    ".py ", "=True", "TeacherSpec("):
            assert bad not in out, f"`salt {' '.join(path)} --help` shows {bad!r}:\n{out}"


def test_recorded_paths_are_absolute(cache_data_root: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from salt_vla.models.teacher import TeacherSpec, load_teacher
    from salt_vla.paths import resolve_cache_dir, resolve_data_root

    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("d").path == tmp_path / "d"
    assert resolve_cache_dir("c").path == tmp_path / "c"
    teacher = load_teacher("random:vit_tiny:0", TeacherSpec(arch="vit_tiny"))
    torch.save(teacher.state_dict(), "t.pth")
    salt("cache", "build", str(cache_data_root), "--teacher", "t.pth", "--teacher-arch",
         "vit_tiny", "--view-preset", "tiny-8x64", "--limit", "2", "--shard-size", "2",
         "--out", "c", "--workers", "1", "--device", "cpu", "--no-progress")
    manifest = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert manifest["teacher_source"] == str(tmp_path / "t.pth")


def test_teacher_runs_resume_from_their_saved_config_too(tmp_path: Path) -> None:
    from salt_vla.files import write_json_atomic
    from salt_vla.trainer.run_config import STAGE1, STAGE2, settle
    from salt_vla.trainer.teacher_experiments import resolve_teacher

    cfg = resolve_teacher("teacher-tiny", ["epochs=2", "stop_at=5"])
    write_json_atomic(tmp_path / "config.json", {
        "config": cfg.to_dict(), "task": "teacher",
        "inputs": {"cache": None, "data": "/data/x", "split": "validation"}})
    s = settle(STAGE1, None, None, ["epochs=4", "num_workers=0"], tmp_path, "yes")
    assert (s.cfg.epochs, s.cfg.num_workers, s.cfg.stop_at, s.cfg.lr) == (4, 0, 0, cfg.lr)
    assert s.inputs["data"] == "/data/x" and s.saved_in == tmp_path / "config.json"
    with pytest.raises(ConfigError, match="salt teacher train --out"):
        settle(STAGE2, None, None, [], tmp_path, "yes")  # `salt train` on a teacher run
    with pytest.raises(ConfigError, match="--set arch"):
        settle(STAGE1, None, None, ["arch=vit_base"], tmp_path, "auto")
