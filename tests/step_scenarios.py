"""Training-step scenarios whose results are pinned bit for bit in ``data/step_reference.json``.

The reference was recorded ONCE with the loop as it was before issue 20 (main at 63a334a,
where every step read its statistics and its finite check on the host). The sync-free step
(statistics on the device, the skip decided on the device, read every ``log_every`` steps)
must reproduce it exactly: the same per-step losses, logged metrics, skipped steps, stop
step, final weights and optimiser state (``tests/test_trainer_step.py``).

A recording is only comparable on the machine class it was made on: CPU float results depend
on the torch build and the vector ISA it picks, so the file carries that fingerprint and the
test skips (naming the difference) elsewhere. Regenerate only for an intended numerical change,
with the code that defines the new behaviour::

    OMP_NUM_THREADS=1 PYTHONPATH=. python tests/step_scenarios.py --write

Only public entry points are used (``train``, ``train_teacher``, ``memory_sources``), so the
same scenarios run on the old and the new code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_vla.runs.rundir import read_heartbeat, read_metrics
from salt_vla.trainer.checkpoint import load_checkpoint
from salt_vla.trainer.experiments import resolve
from salt_vla.trainer.loop import NonFiniteLoss, RunSpec, train
from salt_vla.trainer.sources import memory_sources
from salt_vla.trainer.teacher_experiments import resolve_teacher
from salt_vla.trainer.teacher_train import train_teacher

REFERENCE = Path(__file__).parent / "data" / "step_reference.json"

# Small student/predictor on the tiny preset's data shapes (8 x 64 px -> 64 tokens); drop
# path on, so the per-step RNG draws are part of what must not change.
SALT_SMALL = ["student_dim=64", "student_depth=2", "student_heads=2", "predictor_width=32",
              "predictor_depth=1", "predictor_heads=2", "num_workers=0", "warmup_steps=3",
              "drop_path=0.1"]
PIXEL_SMALL = ["decoder_width=32", "decoder_depth=1", "decoder_heads=2", "num_workers=0",
               "warmup_steps=3"]
# Logged per interval and deterministic (wall times, rates and paths are not).
RECORD_KEYS = ("step", "loss", "norm_loss", "cos", "grad_norm", "lr", "wd", "epoch", "clips",
               "skipped")


def fingerprint() -> dict[str, Any]:
    """What CPU float results depend on besides the code."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": 1}


def tensors_sha256(state: dict[str, Any]) -> str:
    """One digest of every tensor in a (nested) state dict, keys in sorted order."""
    h = hashlib.sha256()

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            h.update(prefix.encode())
            h.update(str(obj.dtype).encode())
            h.update(obj.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                walk(f"{prefix}/{k}", obj[k])
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    walk("", state)
    return h.hexdigest()


def checkpoint_facts(path: Path, parts: tuple[str, ...]) -> dict[str, Any]:
    """Step, weight and optimiser digests of a checkpoint, and its groups' lr / weight decay."""
    state = load_checkpoint(path)
    opt = state["optimizer"]
    return {
        "step": int(state["step"]),
        "weights": {name: tensors_sha256(state[name]) for name in parts},
        "optimizer_state": tensors_sha256(opt["state"]),
        "optimizer_groups": [[g["lr"], g["weight_decay"]] for g in opt["param_groups"]],
    }


def run_facts(out: Path, result: Any) -> dict[str, Any]:
    """The deterministic part of a run: per-step losses, logged records, non-finite events."""
    recs = read_metrics(out / "metrics.jsonl")
    return {
        "losses": list(result.losses),
        "norm_losses": list(result.norm_losses),
        "records": [{k: r[k] for k in RECORD_KEYS if k in r} for r in recs if "loss" in r],
        "nonfinite_events": [[r["step"], r["event"]] for r in recs
                             if "non-finite" in r.get("event", "")],
    }


def frames_and_targets(rows: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (rows, 8, 64, 64, 3), dtype=np.uint8)
    targets = rng.standard_normal((rows, 64, 192)).astype(np.float16)
    return frames, targets


def salt_run(out: Path, sets: list[str], poison: tuple[int, float] | None = None) -> Any:
    frames, targets = frames_and_targets()
    if poison is not None:
        targets = targets.copy()
        targets[poison[0]] = poison[1]
    cfg = resolve("tiny", SALT_SMALL + sets)
    return train(cfg, RunSpec(out=out), memory_sources(cfg, frames, targets),
                 echo=lambda s: None)


def salt_plain(out: Path) -> dict[str, Any]:
    """8 steps; logs every 3 and checkpoints every 5 (the two do not line up)."""
    res = salt_run(out, ["max_steps=8", "batch_size=4", "limit_rows=24", "log_every=3",
                         "ckpt_every=5"])
    return {**run_facts(out, res), "final": checkpoint_facts(out / "ckpt.pt",
                                                              ("student", "predictor"))}


def salt_accum(out: Path) -> dict[str, Any]:
    """Two micro-batches per step and multiblock masks (counts change from batch to batch)."""
    res = salt_run(out, ["max_steps=4", "batch_size=8", "grad_accum=2", "limit_rows=16",
                         "log_every=2", "mask_strategy=multiblock"])
    return {**run_facts(out, res), "final": checkpoint_facts(out / "ckpt.pt",
                                                              ("student", "predictor"))}


def salt_skip(out: Path) -> dict[str, Any]:
    """Row 3's targets are inf: every batch holding it is skipped (skip_nonfinite=10)."""
    res = salt_run(out, ["max_steps=8", "batch_size=4", "limit_rows=8", "log_every=4",
                         "skip_nonfinite=10"], poison=(3, np.inf))
    return {**run_facts(out, res), "final": checkpoint_facts(out / "ckpt.pt",
                                                              ("student", "predictor"))}


def salt_stop(out: Path) -> dict[str, Any]:
    """Row 5's targets are NaN and one bad step is tolerated: the second one stops the run
    with the state before it (mid-interval: log_every=4)."""
    try:
        salt_run(out, ["max_steps=12", "batch_size=4", "limit_rows=8", "log_every=4",
                       "skip_nonfinite=1"], poison=(5, np.nan))
    except NonFiniteLoss as e:
        message = str(e)
    else:
        raise AssertionError("salt_stop: the run did not stop")
    saved = sorted(p.name for p in out.glob("nonfinite-step*.pt"))
    beat = read_heartbeat(out)
    return {
        **run_facts(out, argparse.Namespace(losses=[], norm_losses=[])),
        "stop_step": int(re.search(r"at step (\d+)", message).group(1)),
        "stop_rows": re.search(r"rows (\[[^\]]*\])", message).group(1),
        "saved": saved,
        "nonfinite": checkpoint_facts(out / saved[0], ("student", "predictor")),
        "regular_checkpoint": (out / "ckpt.pt").exists(),
        "heartbeat": [beat["status"], beat["step"]],
    }


def pixel(out: Path) -> dict[str, Any]:
    """Stage 1 (pixel task): teacher-tiny encoder, small decoder, 6 steps."""
    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, (16, 8, 64, 64, 3), dtype=np.uint8)
    cfg = resolve_teacher("teacher-tiny", PIXEL_SMALL + ["max_steps=6", "batch_size=4",
                                                         "limit_rows=12", "log_every=4"])
    res = train_teacher(cfg, RunSpec(out=out), memory_sources(cfg, clips, None),
                        echo=lambda s: None, export=False)
    return {**run_facts(out, res.train),
            "final": checkpoint_facts(out / "ckpt.pt", ("encoder", "decoder"))}


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "salt_plain": salt_plain, "salt_accum": salt_accum, "salt_skip": salt_skip,
    "salt_stop": salt_stop, "pixel": pixel,
}


def run_scenario(name: str, out: Path) -> dict[str, Any]:
    """Run one scenario single-threaded (CPU results depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return SCENARIOS[name](out)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description="record the step reference (see the docstring)")
    ap.add_argument("--write", action="store_true", help=f"write {REFERENCE}")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        facts = {name: run_scenario(name, Path(tmp) / name) for name in SCENARIOS}
    doc = {"fingerprint": fingerprint(), "scenarios": facts}
    text = json.dumps(doc, indent=1) + "\n"
    if args.write:
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(text)
        print(f"wrote {REFERENCE}")
    else:
        print(text)


if __name__ == "__main__":
    main()
