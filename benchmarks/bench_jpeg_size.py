"""JPEG bytes per frame of a cache's frames, against the dry run's rule of thumb.

`salt cache build --dry-run` estimates the frames tars from ``JPEG_BITS_PER_PIXEL``
(cache/estimate.py) unless ``--estimate N`` measures a sample. This script is where that rule
comes from: each image (default: the natural photo matplotlib ships, grace_hopper.jpg) is
scaled to 240 px tall like an SSv2 video, panned over 48 frames, written as a VP9 .webm and
decoded back through the ``ssv2-16x224`` view, then each frame is encoded as the build does
(JPEG quality 90, 4:2:0). Prints bytes and bits per pixel per image, and the rule.

    python benchmarks/bench_jpeg_size.py [IMAGE ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from salt_vla.cache.estimate import JPEG_BITS_PER_PIXEL, rule_jpeg_bytes
from salt_vla.cache.frames import encode_jpeg
from salt_vla.data.video import write_webm
from salt_vla.data.view import load_view, view_preset


def _default_images() -> list[Path]:
    import matplotlib

    return [Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"]


def measure(image: Path, frames: int = 48, height: int = 240) -> tuple[float, float]:
    """(mean JPEG bytes, bits per pixel) of ``image`` through VP9 and the 16x224 view."""
    img = Image.open(image).convert("RGB")
    w, h = img.size
    base = np.asarray(img.resize((round(w * height / h) // 2 * 2, height), Image.BICUBIC))
    clip = np.stack([np.roll(base, 3 * t, axis=1) for t in range(frames)])  # a slow pan
    view = view_preset("ssv2-16x224")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clip.webm"
        write_webm(path, clip, fps=12)
        pixels = load_view(path, view, "bench")
    sizes = [len(encode_jpeg(f)) for f in pixels]
    mean = float(np.mean(sizes))
    return mean, mean * 8 / (view.size * view.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", type=Path)
    args = ap.parse_args()
    for image in args.images or _default_images():
        mean, bpp = measure(image)
        print(f"{image.name}: {mean / 1e3:.1f} kB a 224x224 frame = {bpp:.2f} bits/pixel")
    print(f"rule of thumb (cache/estimate.py): {rule_jpeg_bytes(224) / 1e3:.1f} kB = "
          f"{JPEG_BITS_PER_PIXEL:.2f} bits/pixel")


if __name__ == "__main__":
    main()
