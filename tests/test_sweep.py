"""`salt sweep`: spec parsing, the seed spec's two branches on fabricated finished runs,
a full queue through real subprocesses (a fake `salt train` behind the launcher prefix), and
resuming a queue whose run was interrupted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.runs.report import write_report
from salt_vla.runs.status import sweep_status
from salt_vla.runs.sweep import format_plan, new_state, run_sweep
from salt_vla.runs.sweep_dir import SweepError, read_state, save_state, sweep_lock
from salt_vla.runs.sweep_spec import load_spec, parse_spec

# Stands in for `salt train` behind the spec's launcher: it gets `SALT_SCRIPT train --exp E
# --out D --resume auto --set ...`, records its argv, and writes a finished run whose
# normalised loss is FAKE_LOSS[E] (one logged value per 10 steps, 20 steps per epoch),
# continuing after the last logged step when the run directory holds a partial run.
FAKE_TRAIN = r'''
import json, os, platform, sys, time
args = sys.argv[2:]
assert args[0] == "train", args
opts, sets = {}, []
i = 1
while i < len(args):
    if args[i] == "--set":
        sets.append(args[i + 1])
    else:
        opts[args[i]] = args[i + 1]
    i += 2
exp, out = opts["--exp"], opts["--out"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "argv.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
conf = dict(s.split("=", 1) for s in sets)
total = 20 * int(conf.get("epochs", 2))
metrics = os.path.join(out, "metrics.jsonl")
done = 0
if os.path.exists(metrics):
    done = max([json.loads(l)["step"] for l in open(metrics)] + [0])
level = json.loads(os.environ["FAKE_LOSS"])[exp]
if exp in os.environ.get("FAKE_HANG", ""):  # wait for the sweep to pass on a stop signal
    import signal
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # as `salt train` exits
    open(os.path.join(out, "started"), "w").close()
    time.sleep(60)
    sys.exit(3)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"config": {"name": exp, **conf}, "total_steps": total}, f)
with open(metrics, "a") as f:
    for step in range(done + 10, total + 1, 10):
        f.write(json.dumps({"step": step, "time": time.time(), "loss": 10 * level,
                            "norm_loss": level, "lr": 1e-3, "clips_per_s": 50.0}) + "\n")
json.dump({"pid": os.getpid(), "host": platform.node(), "status": "finished", "step": total,
           "total": total, "time": time.time()}, open(os.path.join(out, "heartbeat.json"), "w"))
'''

SPEC = """
name = "t"
window = 2
launcher = ["{python}", "{fake}"]
set = ["epochs=2"]
env = {{ FAKE_LOSS = '{losses}' }}

[[stage]]
name = "baseline"
exp = "baseline"

[[stage]]
name = "exp1"
exp = "exp1"

[[stage]]
name = "next"
if = {{ run = "exp1", beats = "baseline" }}
then = {{ exp = "exp3" }}
else = {{ exp = "exp2" }}

[[stage]]
name = "final"
best_of = ["baseline", "exp1", "next"]
set = ["epochs=3"]
"""


def write_spec(tmp: Path, losses: dict[str, float]) -> Path:
    fake = tmp / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    spec = tmp / "spec.toml"
    spec.write_text(SPEC.format(python=sys.executable, fake=fake, losses=json.dumps(losses)))
    return spec


def argvs(run_dir: Path) -> list[list[str]]:
    path = run_dir / "argv.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_seed_spec_and_validation(tmp_path: Path) -> None:
    spec = load_spec("seed", final_epochs=12)
    assert [s.name for s in spec.stages] == ["baseline", "exp1", "next", "final"]
    assert spec.stages[2].then.exp == "exp3" and spec.stages[2].otherwise.exp == "exp2"
    assert spec.stages[3].sets == ("epochs=12",) and spec.metric == "norm_loss"
    ref = load_spec("seed", reference=tmp_path / "old-baseline")
    assert ref.stages[0].kind == "reference"
    good = {"stage": [{"name": "a", "exp": "exp1"}]}
    parse_spec(good)
    bad = [
        ({"stage": [{"name": "a", "exp": "exp9"}]}, "unknown experiment 'exp9'"),
        ({"stage": [{"name": "a", "exp": "exp1", "set": ["lrr=1"]}]}, "did you mean 'lr'"),
        ({"stage": [{"name": "a", "best_of": ["b"]}]}, "refers to 'b'"),
        ({**good, "metric": "top5"}, "choose one of norm_loss"),
        ({**good, "metric": "probe_top1"}, "needs probe"),
        ({"stage": [{"name": "a", "exp": "exp1"}, {"name": "a", "exp": "exp2"}]}, "used twice"),
        ({**good, "colour": 1}, "unknown keys"),
    ]
    for data, match in bad:
        with pytest.raises(SweepError, match=match):
            parse_spec(data, "my.toml")


@pytest.mark.parametrize("exp1_wins", [True, False])
def test_seed_spec_takes_both_branches(tmp_path: Path, make_run, exp1_wins: bool) -> None:
    sweep = tmp_path / "sweep"
    # baseline: 8 logged values, exp1: 4; compared at exp1's last step (40), means of the
    # values up to there (window 20): baseline 0.8. Its later 0.1s must not count (the
    # "end" alignment would make exp1 lose both times), nor may exp1's one lucky batch.
    make_run(sweep / "baseline", "baseline", [0.8] * 4 + [0.1] * 4)
    exp1 = [0.9, 0.7, 0.7, 0.7] if exp1_wins else [0.05, 1.2, 1.0, 1.0]
    make_run(sweep / "exp1", "exp1", exp1)
    spec = load_spec("seed", final_epochs=12)
    plan = "\n".join(format_plan(spec, sweep))
    chosen = "exp3" if exp1_wins else "exp2"
    verdict = "beats" if exp1_wins else "does not beat"
    assert f"exp1 {verdict} baseline -> {chosen}" in plan, plan
    assert "up to step 40" in plan
    assert f"[next] {chosen}: exp {chosen}" in plan
    assert "final: undecided, waits for next to finish" in plan
    # Once the chosen run finished, the final stage reruns the best config for 12 epochs.
    make_run(sweep / chosen, chosen, [0.3, 0.3, 0.3, 0.3] if exp1_wins else [0.95] * 4)
    plan = "\n".join(format_plan(spec, sweep))
    best = chosen if exp1_wins else "baseline"
    assert f"is {best} -> its config (exp {best}) --set epochs=12" in plan, plan
    assert f"--exp {best} --out {sweep.resolve() / 'final'} --resume auto --set epochs=12" in plan
    assert not (sweep / "sweep.json").exists()  # a dry run writes nothing


def test_sweep_runs_the_queue_in_subprocesses(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, {"baseline": 0.6, "exp1": 0.5, "exp2": 0.55, "exp3": 0.4})
    sweep = tmp_path / "sweep"
    lines: list[str] = []
    assert run_sweep(load_spec(spec_path), sweep, echo=lines.append, poll=0.2) == 0
    for name in ("baseline", "exp1", "exp3", "final"):
        assert len(argvs(sweep / name)) == 1, name
    assert not (sweep / "exp2").exists()
    final = argvs(sweep / "final")[0]
    assert final[:7] == ["train", "--exp", "exp3", "--out", str(sweep.resolve() / "final"),
                         "--resume", "auto"]
    assert final[7:] == ["--set", "epochs=2", "--set", "epochs=3"]
    state = read_state(sweep)
    assert state["finished"] and all(s["status"] == "done" for s in state["stages"].values())
    assert "exp1 beats baseline" in state["stages"]["next"]["decision"]
    assert (sweep / "exp1" / "train.log").is_file()
    st = sweep_status(sweep)
    assert st["exit_code"] == 0 and [r.state for r in st["runs"]] == ["finished"] * 4
    rep = write_report([sweep], tmp_path / "report.md")  # a sweep dir stands for its runs
    assert [r.label for r in rep.runs] == ["baseline", "exp1", "exp3", "final"]
    # Re-running a finished sweep launches nothing.
    assert run_sweep(load_spec(spec_path), sweep, echo=lines.append, poll=0.2) == 0
    assert len(argvs(sweep / "baseline")) == 1


def test_sweep_resumes_an_interrupted_run(tmp_path: Path, make_run) -> None:
    spec_path = write_spec(tmp_path, {"baseline": 0.6, "exp1": 0.7, "exp2": 0.55, "exp3": 0.4})
    spec = load_spec(spec_path)
    sweep = (tmp_path / "sweep").resolve()
    # The state of a sweep killed while exp1 ran: baseline done, exp1 running; exp1's run
    # dir holds 20 of its 40 steps and a heartbeat whose process is gone.
    make_run(sweep / "baseline", "baseline", [0.6] * 4, sets=["epochs=2"])
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    make_run(sweep / "exp1", "exp1", [0.7, 0.7], total=40, status="running", pid=proc.pid)
    (sweep / "exp1" / "ckpt.pt").write_bytes(b"step 20")  # (the fake trainer ignores it)
    state = new_state(spec)
    state["stages"]["baseline"].update(status="done", name="baseline", exp="baseline",
                                       run_dir=str(sweep / "baseline"))
    state["stages"]["exp1"].update(status="running", name="exp1", exp="exp1",
                                   run_dir=str(sweep / "exp1"), pid=proc.pid)
    save_state(sweep, state)
    assert sweep_status(sweep)["exit_code"] == 1  # a dead run, and no sweep process
    lines: list[str] = []
    assert run_sweep(spec, sweep, echo=lines.append, poll=0.2) == 0, lines
    assert argvs(sweep / "baseline") == []  # finished: not launched again
    (exp1_argv,) = argvs(sweep / "exp1")
    assert exp1_argv[5:7] == ["--resume", "auto"]
    assert any("resuming exp1" in line for line in lines), lines
    steps = [json.loads(x)["step"] for x in (sweep / "exp1" / "metrics.jsonl").read_text()
             .splitlines() if "norm_loss" in x]
    assert steps == [10, 20, 30, 40]  # continued after the partial run, nothing lost
    assert not (sweep / "exp3").exists() and len(argvs(sweep / "exp2")) == 1
    assert read_state(sweep)["stages"]["exp1"]["attempts"] == 1


def test_stop_signal_is_passed_to_the_run(tmp_path: Path) -> None:
    import os
    import signal
    import threading
    import time

    spec_path = write_spec(tmp_path, {"baseline": 0.6, "exp1": 0.5, "exp2": 0.5, "exp3": 0.4})
    text = spec_path.read_text().replace("FAKE_LOSS =", "FAKE_HANG = 'exp1', FAKE_LOSS =")
    spec_path.write_text(text)
    sweep = tmp_path / "sweep"

    def stop_when_started() -> None:  # as Ctrl-C / SIGTERM to the sweep would
        deadline = time.monotonic() + 30
        while not (sweep / "exp1" / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=stop_when_started)
    t.start()
    code = run_sweep(load_spec(spec_path), sweep, echo=lambda s: None, poll=0.2)
    t.join()
    assert code == 143  # the sweep got SIGTERM
    rec = read_state(sweep)["stages"]["exp1"]
    assert rec["status"] == "interrupted" and rec["rc"] == 143  # it exited on our SIGTERM
    assert not (sweep / "exp2").exists() and not (sweep / "exp3").exists()


def test_resume_refuses_a_changed_spec_and_a_second_sweep(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, {"baseline": 0.6, "exp1": 0.5, "exp2": 0.5, "exp3": 0.4})
    sweep = tmp_path / "sweep"
    state = new_state(load_spec(spec_path))
    state["stages"]["baseline"]["status"] = "done"
    save_state(sweep, state)
    changed = spec_path.read_text().replace('exp = "baseline"', 'exp = "exp2"')
    spec_path.write_text(changed)
    with pytest.raises(SweepError, match="stage 'baseline' changed"):
        run_sweep(load_spec(spec_path), sweep, echo=lambda s: None)
    with sweep_lock(sweep), pytest.raises(SweepError, match="another `salt sweep`"):
        with sweep_lock(sweep):
            pass


def test_sweep_cli_dry_run_and_show_spec(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["sweep", "seed", "--show-spec", "--final-epochs", "20"])
    assert res.exit_code == 0 and 'set = ["epochs=20"]' in res.output
    shown = tmp_path / "seed.toml"
    shown.write_text(res.output)
    assert load_spec(shown).stages[3].sets == ("epochs=20",)  # the printed spec is valid
    res = CliRunner().invoke(app, ["sweep", "seed", "--dry-run", "--dir", str(tmp_path / "s"),
                                   "--set", "num_workers=3"])
    assert res.exit_code == 0, res.output
    assert "--set num_workers=3" in res.output and "next: undecided" in res.output
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "missing.toml"), "--dry-run"])
    assert res.exit_code == 1 and "no such file" in res.output


def test_yaml_spec(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "s.yaml"
    path.write_text("name: y\nstage:\n  - {name: a, exp: exp1}\n  - {name: b, if: {run: a, "
                    "below: 0.5}, then: {exp: exp3}, else: {exp: exp2}}\n")
    spec = load_spec(path)
    assert spec.name == "y" and spec.stages[1].cond.below == 0.5


def test_probe_metric_decides_by_top1(tmp_path: Path, make_run) -> None:
    spec = parse_spec({
        "metric": "probe_top1", "probe": ["--data", "/x"],
        "stage": [{"name": "a", "exp": "exp1"}, {"name": "b", "exp": "exp2"},
                  {"name": "c", "if": {"run": "b", "beats": "a"}, "then": {"exp": "exp3"},
                   "else": {"exp": "baseline"}}]})
    sweep = tmp_path / "sweep"
    for name, top1, norm in (("a", 0.30, 0.9), ("b", 0.35, 0.95)):  # b: worse loss, better probe
        make_run(sweep / name, "exp1", [norm] * 3)
        (sweep / name / "probe.json").write_text(json.dumps({"top1": top1}))
    plan = "\n".join(format_plan(spec, sweep))
    assert "b probe top-1 35.00% vs a probe top-1 30.00%: b beats a -> exp3" in plan, plan
