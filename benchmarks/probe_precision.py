"""Does the device change a probe's top-1? Features in bf16 autocast vs fp32, probe on CPU vs CUDA.

Makes the full demo's synthetic data for ``--seed`` (600 videos, 4 classes) and probes one
frozen encoder (default: the random-init student ``random:tiny:SEED``) with the demo's
recipe four ways: features computed in fp32 or under bf16 autocast (what `salt eval probe`
does on CUDA), each probed on CPU and on CUDA. Needs a CUDA device for the bf16/CUDA rows.

    python benchmarks/probe_precision.py [--seed 0] [--encoder random:tiny:0] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from salt_vla.data.ssv2 import load_split
from salt_vla.data.synth import generate_dataset
from salt_vla.data.view import load_view, view_preset
from salt_vla.demo import VIEW, demo_config
from salt_vla.eval.encoders import FrozenEncoder, resolve_encoder
from salt_vla.eval.probe import train_probe


def features(enc: FrozenEncoder, clips: np.ndarray, bf16: bool, batch: int = 32) -> np.ndarray:
    """Tokens of ``clips`` on the encoder's device, in fp32 or under bf16 autocast."""
    return np.concatenate([enc.features(torch.from_numpy(clips[i : i + batch]), amp=bf16)
                           .cpu().numpy() for i in range(0, len(clips), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoder", default=None, help="default random:tiny:SEED")
    ap.add_argument("--out", type=Path, default=None, help="data dir (default: a temp dir)")
    args = ap.parse_args()
    cfg = demo_config(args.seed)
    root = args.out or Path(tempfile.mkdtemp(prefix="probe_precision_"))
    if not (root / "train.json").is_file():
        generate_dataset(root, cfg.synth, workers=min(16, torch.get_num_threads()))
    view = view_preset(VIEW)
    sets = {}
    for split in ("train", "validation"):
        index = load_split(root, split)
        clips = np.stack([load_view(index.video_path(e.id), view, e.id) for e in index.entries])
        sets[split] = (clips, np.array([e.label for e in index.entries]))
    k = int(sets["train"][1].max()) + 1
    cuda = torch.cuda.is_available()
    name = args.encoder or f"random:tiny:{args.seed}"
    print(f"# {name}, seed {args.seed}, probe {cfg.probe}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if cuda else 'no CUDA'}")
    print("| features | probe on | val top-1 | probe train top-1 | seconds |")
    print("|---|---|---|---|---|")
    for feat_dev, bf16 in (("cpu", False), ("cuda", False), ("cuda", True)):
        if feat_dev == "cuda" and not cuda:
            continue
        enc = resolve_encoder(name, view if name.startswith("random:") else None, feat_dev,
                              "vit_tiny")
        ftr = features(enc, sets["train"][0], bf16)
        fva = features(enc, sets["validation"][0], bf16)
        for probe_dev in ("cpu", "cuda") if cuda else ("cpu",):
            t0 = time.perf_counter()
            res = train_probe(ftr, sets["train"][1], fva, sets["validation"][1], k, cfg.probe,
                              torch.device(probe_dev))
            train = res.history[-1]["train_top1"] if res.history else float("nan")
            what = f"{'bf16 autocast' if bf16 else 'fp32'} on {feat_dev}"
            print(f"| {what} | {probe_dev} | {100 * res.top1:.1f}% | {100 * train:.1f}% | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
