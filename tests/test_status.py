"""`salt status`: states and exit codes of live, stalled, dead, finished and NaN runs, from
fabricated run directories (heartbeat + metrics), plus the heartbeat writer itself."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.runs.heartbeat import Heartbeat, pid_alive, process_start
from salt_vla.runs.rundir import read_heartbeat
from salt_vla.runs.status import run_status, status_of


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def cli_status(path: Path, *args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(app, ["status", str(path), "--json", *args])
    return res.exit_code, json.loads(res.output)


def test_live_run_is_healthy(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path / "live", norm_losses=[0.9, 0.8, 0.7, 0.6], total=100,
                   status="running")
    code, out = cli_status(run)
    assert code == 0, out
    st = out["runs"][0]
    assert st["state"] == "running" and st["pid"] == os.getpid()
    assert (st["step"], st["total"]) == (40, 100)
    assert st["norm_loss"] == 0.6 and st["norm_loss_smoothed"] == pytest.approx(0.75)
    # the run's rate: 4 intervals of 80 clips in 5 s each
    assert st["clips_per_s"] == pytest.approx(16.0) and st["clips"] == 320
    # at that rate the 60 steps (x 8 clips) left take 30 s
    assert st["eta_s"] == pytest.approx(30.0)
    assert st["checkpoint"] is None  # no ckpt.pt fabricated


def test_stalled_and_dead_runs_exit_1(tmp_path: Path, make_run) -> None:
    stalled = make_run(tmp_path / "stalled", total=100, status="running", heartbeat_age=3600)
    st = run_status(stalled, stall_after=60)
    assert st.state == "stalled" and st.exit_code == 1, st.message
    assert run_status(stalled, stall_after=7200).state == "running"
    code, out = cli_status(stalled, "--stall-after", "60")
    assert code == 1 and out["runs"][0]["state"] == "stalled"

    dead = make_run(tmp_path / "dead", total=100, status="running", pid=dead_pid())
    st = run_status(dead)
    assert st.state == "dead" and st.exit_code == 1
    assert "--resume" in st.message


def test_finished_runs_exit_0_or_2_with_nan(tmp_path: Path, make_run) -> None:
    ok = make_run(tmp_path / "ok", norm_losses=[0.5, 0.4])
    assert run_status(ok).exit_code == 0 and run_status(ok).state == "finished"
    nan = make_run(tmp_path / "nan", norm_losses=[0.5, math.nan])
    code, out = cli_status(nan)
    assert code == 2 and out["runs"][0]["state"] == "finished" and out["runs"][0]["nonfinite"]
    assert out["runs"][0]["norm_loss"] == "nan"  # valid JSON for any parser
    failed = make_run(tmp_path / "failed", norm_losses=[0.5], status="failed")
    (failed / "nonfinite-step11.pt").write_bytes(b"")
    assert run_status(failed).exit_code == 2
    stopped = make_run(tmp_path / "stopped", norm_losses=[0.5], total=100, status="stopped")
    assert run_status(stopped).exit_code == 1


def test_run_without_heartbeat_is_judged_from_its_metrics(tmp_path: Path, make_run) -> None:
    done = make_run(tmp_path / "done", status=None)
    assert run_status(done).state == "finished" and run_status(done).exit_code == 0
    part = make_run(tmp_path / "part", total=100, status=None)
    assert run_status(part).state == "running"
    os.utime(part / "metrics.jsonl", (1e9, 1e9))
    assert run_status(part, stall_after=60).state == "stalled"


def test_folder_of_runs_takes_the_worst_code(tmp_path: Path, make_run) -> None:
    make_run(tmp_path / "a")
    make_run(tmp_path / "b", total=100, status="running", pid=dead_pid())
    res = status_of(tmp_path)
    assert res["kind"] == "folder" and res["exit_code"] == 1
    assert sorted(r.state for r in res["runs"]) == ["dead", "finished"]
    res = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert res.exit_code == 1 and "DEAD" in res.output and "FINISHED" in res.output
    res = CliRunner().invoke(app, ["status", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no such directory" in res.output


def test_heartbeat_writer(tmp_path: Path) -> None:
    hb = Heartbeat(tmp_path, total=50, min_interval=3600)
    hb.start(0)
    hb.beat(5)  # throttled: not written
    assert read_heartbeat(tmp_path)["step"] == 0
    hb.checkpoint(10)
    got = read_heartbeat(tmp_path)
    assert (got["step"], got["ckpt_step"], got["status"]) == (10, 10, "running")
    assert run_status(tmp_path).state == "running"
    hb.end("finished", step=50)
    got = read_heartbeat(tmp_path)
    assert (got["status"], got["step"], got["pid"]) == ("finished", 50, os.getpid())
    assert pid_alive(os.getpid(), process_start(os.getpid()))
    assert not pid_alive(os.getpid(), (process_start(os.getpid()) or 0) + 1) or \
        process_start(os.getpid()) is None
    with pytest.raises(ValueError, match="end status"):
        hb.end("running")


def test_exit_codes_of_a_stopped_run_are_documented_beside_status() -> None:
    """`salt train` exits 130 / 143 after a signal's checkpoint; its help and `salt status`'s
    say so next to the status codes."""
    for cmd in (["train", "--help"], ["teacher", "train", "--help"], ["status", "--help"],
                ["sweep", "--help"]):
        res = CliRunner().invoke(app, cmd, terminal_width=200)
        text = " ".join(res.output.split())
        assert res.exit_code == 0 and "130" in text and "143" in text, cmd
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "143" in readme and "130" in readme


def test_a_stopped_run_lists_its_kept_checkpoints(tmp_path: Path, make_run) -> None:
    from salt_vla.trainer.checkpoint import save_run_checkpoint

    run = make_run(tmp_path / "stopped", norm_losses=[0.9, 0.8], total=100, status="stopped")
    for step in (10, 20):
        save_run_checkpoint(run, step, {"step": step}, keep=2)
    code, out = cli_status(run)
    st = out["runs"][0]
    assert code == 1 and st["state"] == "stopped"
    assert st["checkpoint"]["kept_steps"] == [10, 20]
    res = CliRunner().invoke(app, ["status", str(run)])
    assert "kept: steps 10, 20" in res.output
