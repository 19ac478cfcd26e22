"""Peak memory of reading a long full-HD video for sliding-window surprise: the chunked
window reader (``salt_vla.data.video_chunks.iter_windows``) vs a full decode.

Writes a 1920x1080 H.264 mp4 (libx264 through PyAV, B-frames on, as downloaded mp4s have;
``--seconds`` at ``--fps``: a ball moving over a textured gradient, generated frame by frame so
the writer never holds the clip), then runs each reader in a fresh Python process and reports
that process's peak resident memory (``ru_maxrss``) and times:

* ``imports``: the reader's imports only (what the other two include anyway);
* ``full``: what ``salt eval intphys`` did before the chunked reader: ``decode_frames`` of
  every frame, then the view's resize + centre crop of all of them (``render_view``);
* ``chunked``: ``iter_windows`` over the windows intphys uses (``--window`` frames, every
  ``--frame-step`` source frames, a window starting at every frame), each frame resized to
  the view as it is decoded, batches of ``--batch`` windows.

Both produce the same view frames (checked on the frames both hold). Run:

    python benchmarks/bench_video_chunks.py [--seconds 10] [--fps 30] [--size 224]
        [--window 16] [--frame-step 2] [--batch 8] [--keep DIR] [--skip-full]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 1920, 1080


def write_clip(path: Path, seconds: int, fps: int) -> None:
    """A 1080p H.264 mp4, one frame generated at a time (bounded memory while writing)."""
    import av

    n = seconds * fps
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack([xx / WIDTH, yy / HEIGHT, 0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 23.0)],
                    -1)
    texture = np.random.default_rng(0).integers(0, 24, (HEIGHT, WIDTH, 3)).astype(np.float32)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "x264-params": "bframes=2"}
        for i in range(n):
            img = base * 200.0 + texture
            cx, cy = 200 + (WIDTH - 400) * i / max(1, n - 1), HEIGHT / 2 + 300 * np.sin(i / 15)
            ball = (xx - cx) ** 2 + (yy - cy) ** 2 < 90.0 ** 2
            img[ball] = (240.0, 60.0, 40.0)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), "rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def child(mode: str, path: Path, size: int, window: int, step: int, batch: int) -> dict:
    """Run one reader in this (fresh) process; report its peak RSS and times."""
    from salt_vla.data.video import decode_frames, probe_video
    from salt_vla.data.video_chunks import ChunkStats, iter_windows, scan_video
    from salt_vla.data.view import ViewSpec
    from salt_vla.eval.intphys import view_transform, window_indices, window_starts

    view = ViewSpec(num_frames=window, size=size)
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict = {"mode": mode}
    if mode == "full":
        info = probe_video(path)
        frames = decode_frames(path, range(info.num_frames), backend="pyav")
        transform = view_transform(view, path.stem, info.height, info.width)
        small = np.stack([transform(f) for f in frames])  # render_view, frame by frame
        out["frames"] = len(small)
        out["checksum"] = int(small[::37].astype(np.int64).sum())
    elif mode == "chunked":
        table = scan_video(path)
        span = (window - 1) * step + 1
        starts = window_starts(table.num_frames, span, 1)
        windows = [window_indices(s, table.num_frames, window, step) for s in starts]
        transform = view_transform(view, path.stem, table.height, table.width)
        stats = ChunkStats()
        n = 0
        picked: dict[int, np.ndarray] = {}
        for clips in iter_windows(path, windows, transform, batch, table=table, stats=stats):
            for w in clips:
                for j, f in zip(windows[n], w, strict=True):
                    if j % 37 == 0:
                        picked[j] = f.copy()  # a view would keep its whole batch
                n += 1
        out.update(windows=n, decoded=stats.decoded, peak_buffered=stats.peak_buffered,
                   checksum=int(sum(f.astype(np.int64).sum() for f in picked.values())))
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--frame-step", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--skip-full", action="store_true",
                    help="Measure the chunked reader only (long clips: the full decode of a "
                    "30 s 1080p clip needs ~16 GB)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--clip", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.clip, args.size, args.window, args.frame_step,
                               args.batch)))
        return
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench_video_chunks_"))
    tmp.mkdir(parents=True, exist_ok=True)
    clip = tmp / f"clip-1080p-{args.seconds}s.mp4"
    t0 = time.perf_counter()
    if not clip.is_file():
        write_clip(clip, args.seconds, args.fps)
    print(f"clip: {clip} ({clip.stat().st_size / 2**20:.1f} MiB, {args.seconds} s at {args.fps} "
          f"fps, {WIDTH}x{HEIGHT} H.264 via PyAV {__import__('av').__version__}; written in "
          f"{time.perf_counter() - t0:.1f} s)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    n = args.seconds * args.fps
    print(f"full-size RGB of every frame: {n * WIDTH * HEIGHT * 3 / 2**20:.0f} MiB; view "
          f"{args.size}x{args.size}, windows of {args.window} frames every {args.frame_step}")
    results = {}
    for mode in ("imports", *(() if args.skip_full else ("full",)), "chunked"):
        cmd = [sys.executable, __file__, "--child", mode, "--clip", str(clip), "--size",
               str(args.size), "--window", str(args.window), "--frame-step",
               str(args.frame_step), "--batch", str(args.batch)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                        text=True).stdout.strip().splitlines()[-1])
        results[mode] = res
        extra = ""
        if mode == "chunked":
            extra = (f", {res['windows']} windows, {res['decoded']} frames decoded, at most "
                     f"{res['peak_buffered']} view frames held")
        print(f"  {mode:<8} peak RSS {res['peak_rss_mib']:7.0f} MiB "
              f"(+{res['peak_rss_mib'] - results['imports']['peak_rss_mib']:.0f} over imports), "
              f"wall {res['wall_s']:5.1f} s, CPU {res['cpu_s']:5.1f} s{extra}")
    if args.skip_full:
        return
    same = results["full"]["checksum"] == results["chunked"]["checksum"]
    print(f"same view frames (checksum of every 37th frame): {same}")
    full = results["full"]["peak_rss_mib"] - results["imports"]["peak_rss_mib"]
    chunked = results["chunked"]["peak_rss_mib"] - results["imports"]["peak_rss_mib"]
    print(f"peak memory over imports: full {full:.0f} MiB vs chunked {chunked:.0f} MiB "
          f"({full / max(chunked, 1):.0f}x less)")


if __name__ == "__main__":
    main()
