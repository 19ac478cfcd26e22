"""Why a `salt demo` encoder probes as it does: is it sensitive to the order of frames?

The synthetic classes are time-reversal pairs, so only features that change when a clip is
played backwards can tell them apart. For each seed of a finished `salt demo --out OUT` and
each of its three encoders (random-init student, teacher, SALT student) this prints, on the
validation clips:

- ``reversal``: mean distance between a clip's mean token and that of the same clip played
  backwards, divided by the mean distance to another clip's (0: blind to the order of frames);
- ``spread``: mean within-clip std of the tokens / std of the clip means (how much the tokens
  of one clip differ from each other, relative to how clips differ);
- the probe's top-1 on the train split (its last epoch) and on validation, from probe-*.json.

    python benchmarks/demo_diagnose.py OUT [--clips 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from salt_vla.data.ssv2 import load_split
from salt_vla.data.view import load_view, view_preset
from salt_vla.demo import VIEW
from salt_vla.eval.demo_report import ENCODERS, seed_dirs
from salt_vla.eval.encoders import FrozenEncoder, resolve_encoder


def _clip_features(enc: FrozenEncoder, clips: np.ndarray, batch: int = 32) -> np.ndarray:
    out = [enc.features(torch.from_numpy(clips[i : i + batch])).numpy()
           for i in range(0, len(clips), batch)]
    return np.concatenate(out)


def order_stats(enc: FrozenEncoder, clips: np.ndarray) -> dict[str, float]:
    """``reversal`` and ``spread`` (see the module docstring) of ``enc`` on uint8 clips."""
    f = _clip_features(enc, clips)
    r = _clip_features(enc, np.ascontiguousarray(clips[:, ::-1]))
    fm, rm = f.mean(1), r.mean(1)
    d_rev = np.linalg.norm(fm - rm, axis=1).mean()
    d_other = np.linalg.norm(fm - np.roll(fm, 1, axis=0), axis=1).mean()
    spread = f.std(1).mean() / max(float(fm.std(0).mean()), 1e-12)
    return {"reversal": float(d_rev / d_other), "spread": float(spread)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a `salt demo --out` directory")
    ap.add_argument("--clips", type=int, default=64, help="validation clips per seed")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| seed | encoder | reversal | spread | probe train top-1 | val top-1 |")
    print("|---|---|---|---|---|---|")
    for seed, d in seed_dirs(args.out):
        data = d / "data"
        index = load_split(data, "validation")
        for key, label in ENCODERS.items():
            path = d / f"probe-{key}.json"
            if not path.is_file():
                continue
            probe = json.loads(path.read_text())
            name = probe["encoder"]["name"]
            view = view_preset(VIEW) if name.startswith("random:") else None
            enc = resolve_encoder(name, view, "cpu", "vit_tiny")
            entries = index.entries[: args.clips]
            clips = np.stack([load_view(index.video_path(e.id), enc.view, e.id) for e in entries])
            s = order_stats(enc, clips)
            train = probe.get("final_train_top1")
            print(f"| {seed} | {label} | {s['reversal']:.4f} | {s['spread']:.3f} | "
                  f"{'-' if train is None else f'{100 * train:.1f}%'} | "
                  f"{100 * probe['top1']:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
