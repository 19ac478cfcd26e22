"""The slim install: `pip install salt-vla` (torch, timm, safetensors, numpy) loads and runs an
exported encoder; the training stack is the `train` extra, and `salt` without it says so in
one line.

"Not installed" is simulated in a fresh interpreter by a ``sys.meta_path`` finder, put first
before salt_vla is imported, that refuses the training-only packages the way a missing
package fails (``ModuleNotFoundError``). Pillow is not blocked: torchvision, which timm
requires, imports it, so the slim install has it anyway.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from salt_vla.cli import INSTALL_HINT, TRAIN_MODULES

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("typer", "click", "wandb", "decord", "av", "zarr", "numcodecs", "webdataset",
           "matplotlib", "transformers")

BLOCKER = f"""
import sys
BLOCKED = {BLOCKED!r}
refused = []

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            refused.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def export_and_expected(tmp_path_factory: pytest.TempPathFactory):
    """An export of a small trained-looking run, and the tokens it must give."""
    from salt_vla.export.write import export_encoder
    from salt_vla.runs.rundir import checkpoint_path
    from salt_vla.trainer.build import build_model
    from salt_vla.trainer.checkpoint import save_checkpoint
    from salt_vla.trainer.experiments import resolve

    d = tmp_path_factory.mktemp("slim")
    cfg = resolve("tiny", ["student_dim=64", "student_depth=1", "student_heads=2",
                           "predictor_width=32", "predictor_depth=1", "predictor_heads=2"])
    torch.manual_seed(0)
    model = build_model(cfg, 8, 64)
    save_checkpoint(checkpoint_path(d / "run"), {
        "student": model.student.state_dict(), "predictor": model.predictor.state_dict(),
        "step": 1, "total_steps": 1, "config": cfg.to_dict()})
    res = export_encoder(d / "run", d / "encoder")
    frames = torch.randint(0, 256, (1, 8, 64, 64, 3), dtype=torch.uint8)
    import salt_vla

    with torch.no_grad():
        tokens, _ = salt_vla.load_encoder(res.path)(frames)
    torch.save({"frames": frames, "tokens": tokens}, d / "expected.pt")
    return res.path, d / "expected.pt"


def test_load_encoder_runs_without_the_training_stack(export_and_expected) -> None:
    export, expected = export_and_expected
    res = _run(f"""
for name in ("zarr", "typer", "wandb"):
    try:
        __import__(name)
        raise SystemExit(f"the blocker let {{name}} through")
    except ImportError:
        pass
import json
import torch
import salt_vla
enc = salt_vla.load_encoder({str(export)!r})
want = torch.load({str(expected)!r}, weights_only=True)
with torch.no_grad():
    tokens, pooled = enc(want["frames"])
    longer = enc.forward_per_frame(torch.cat([want["frames"]] * 2, dim=1))
assert torch.equal(tokens, want["tokens"]), "slim load gives other tokens"
assert longer.shape == (1, 8, 16, 64)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
salt = sorted(m for m in sys.modules if m.startswith("salt_vla"))
print("OK", json.dumps({{"loaded": loaded, "refused": sorted(set(refused)), "salt": salt}}))
""")
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    report = json.loads(res.stdout.split("OK", 1)[1])
    assert report["loaded"] == [], f"training-only packages imported: {report['loaded']}"
    assert "zarr" in report["refused"]  # the blocker was consulted
    heavy = [m for m in report["salt"] if m.split(".")[1:2] in (["trainer"], ["cache"], ["data"],
                                                                ["eval"], ["cli"], ["runs"])
             and m not in ("salt_vla.runs", "salt_vla.runs.rundir")]
    assert not heavy, f"load_encoder imported training-side modules: {heavy}"


def test_salt_without_the_train_extra_says_how_to_install_it() -> None:
    res = _run("import runpy; runpy.run_module('salt_vla', run_name='__main__')")
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert INSTALL_HINT in lines[0] and "typer" in lines[0]


def test_pyproject_splits_the_slim_install_from_the_training_stack() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in reqs}

    assert names(project["dependencies"]) == {"torch", "timm", "safetensors", "numpy"}
    train = names(project["optional-dependencies"]["train"])
    assert train - {"decord"} == set(TRAIN_MODULES), "cli TRAIN_MODULES out of step"
    assert project["scripts"]["salt"] == "salt_vla.cli:main"
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[train,dev,test]'" in makefile, "make must install the training stack"
    readme = (ROOT / "README.md").read_text()
    assert "pip install salt-vla" in readme and INSTALL_HINT in readme
