"""Time loading an SSv2-sized train index, existence checks included (target: under 2 s).

Builds a synthetic dataset in a temporary directory: a 168,913-entry train.json in the real
schema, a 174-class labels.json and one empty ``.webm`` per id, then times ``load_split``.

    python benchmarks/bench_ssv2_index.py [--entries 168913] [--layout videos|root] [--repeat 3]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from salt_vla.data.ssv2 import load_split

ACTIONS = ["Putting", "Pushing", "Moving", "Lifting", "Dropping", "Turning", "Pretending to take"]


def make_dataset(root: Path, entries: int, classes: int, layout: str, seed: int = 0) -> None:
    """Write labels.json, train.json and empty video files for ``entries`` ids."""
    rng = random.Random(seed)
    templates = [
        f"{ACTIONS[c % len(ACTIONS)]} [something] {'onto' if c % 2 else 'next to'} "
        f"[something] (variant {c})"
        for c in range(classes)
    ]
    labels = {t.replace("[", "").replace("]", ""): str(c) for c, t in enumerate(templates)}
    (root / "labels.json").write_text(json.dumps(labels, indent=1))
    ids = rng.sample(range(1, 10 * entries), entries)  # SSv2 ids are sparse integers as strings
    train = []
    for vid in ids:
        t = templates[rng.randrange(classes)]
        ph = ["a red cup", "the table"]
        train.append(
            {
                "id": str(vid),
                "label": t.replace("[something]", "{}").format(*ph).lower(),
                "template": t,
                "placeholders": ph,
            }
        )
    # The official files are indented JSON; keep the size realistic (~30 MB for 168K entries).
    (root / "train.json").write_text(json.dumps(train, indent=1))
    vdir = root / "videos" if layout == "videos" else root
    vdir.mkdir(exist_ok=True)
    for vid in ids:
        os.close(os.open(vdir / f"{vid}.webm", os.O_CREAT | os.O_WRONLY, 0o644))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=int, default=168_913, help="train entries (SSv2: 168,913)")
    p.add_argument("--classes", type=int, default=174, help="classes (SSv2: 174)")
    p.add_argument(
        "--layout",
        choices=["videos", "root"],
        default="videos",
        help="videos in ROOT/videos/ or directly in ROOT",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed loads")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="build the dataset in this directory and keep it (reused when it already holds\n"
        "train.json) instead of a temporary one; building takes longer than loading",
    )
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ssv2-") as tmp:
        root = args.keep or Path(tmp)
        if args.keep and (root / "train.json").is_file():
            print(f"reusing {root} (--entries/--classes/--layout as when it was built)")
        else:
            root.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            make_dataset(root, args.entries, args.classes, args.layout)
            size_mb = (root / "train.json").stat().st_size / 1e6
            print(
                f"built {args.entries} entries, {args.classes} classes, layout={args.layout}, "
                f"train.json {size_mb:.1f} MB in {time.perf_counter() - t0:.1f} s in {root}"
            )
        # json.loads alone is the floor any stdlib-only loader pays; the rest is validation,
        # entry objects and the two directory listings.
        t0 = time.perf_counter()
        json.loads((root / "train.json").read_bytes())
        json_s = time.perf_counter() - t0
        walls, cpus = [], []
        index = None
        for _ in range(args.repeat):
            index = None  # free the previous index outside the timed region
            t0, c0 = time.perf_counter(), time.process_time()
            index = load_split(root, "train")
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        assert index is not None and not index.missing
        print(
            f"load_split(train) with existence checks ({len(index)} entries): "
            f"wall first {walls[0]:.3f} s, best {min(walls):.3f} s, "
            f"best CPU {min(cpus):.3f} s over {args.repeat} loads "
            f"(json.loads alone {json_s:.3f} s)"
        )
        print(f"all loads (wall s): {' '.join(f'{w:.3f}' for w in walls)}")
        print(
            f"load average (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
            f"{os.cpu_count()} CPUs"
        )


if __name__ == "__main__":
    main()
