"""Cache build throughput vs its stages alone, bytes per clip, and the cost of bad videos.

On a synthetic SSv2-layout dataset made in a temporary directory (``--videos`` clips of
``--src-frames`` frames at ``--src-size`` px), with a random ``--arch`` teacher:

(b) decode-only: the DecodePool alone (decode + view + JPEG round trip, ``--workers``
    processes); teacher-only: the teacher alone on batches of the same shape; build:
    ``build_cache`` end to end. Pipeline efficiency = build / min(decode-only, teacher-only).
    On a CPU-only machine the teacher and the decoders share the cores, so the figure that
    can be reached is the serial bound 1 / (1/decode + 1/teacher); both are printed.
(c) bytes per clip of the store (latents, frames, index/tar/manifest overhead), and the
    cost of a bad video: time per corrupt file (zero-byte, truncated, text) through the
    decoders, time per decoder crash (kill + replacement worker), and disk per failed row.

    python benchmarks/bench_cache_build.py [--videos 48] [--frames 16] [--size 112]
        [--arch vit_tiny] [--batch-size 8] [--workers 1] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CrashingLoader:
    """The build's view loader, except that ids in ``crash`` kill the worker process."""

    inner: object
    crash: frozenset[str]

    def __call__(self, path: str, video_id: str, view_index: int) -> np.ndarray:
        if video_id in self.crash:
            os._exit(11)
        return self.inner(path, video_id, view_index)  # type: ignore[operator]


def _pool_rate(loader: object, tasks: list, workers: int, expect: tuple) -> tuple[float, list]:
    from salt_vla.cache.decode_pool import DecodePool

    with DecodePool(loader, workers=workers, timeout=60, expect_shape=expect) as pool:  # type: ignore[arg-type]
        list(pool.imap(tasks[: workers * 2]))  # start-up out of the timing
        t0 = time.perf_counter()
        results = list(pool.imap(tasks))
        dt = time.perf_counter() - t0
    return len(tasks) / dt, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=64, help="videos generated (~70%% train)")
    ap.add_argument("--src-frames", type=int, default=32)
    ap.add_argument("--src-size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--arch", default="vit_tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the teacher")
    ap.add_argument("--device", default="cpu", help="teacher device: cpu or cuda")
    args = ap.parse_args()

    import torch

    from salt_vla.cache.build import BuildConfig, build_cache, make_teacher_fn, plan_rows
    from salt_vla.cache.decode_pool import DecodeTask, ViewLoader
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.ssv2 import load_split
    from salt_vla.data.synth import SynthConfig, generate_dataset
    from salt_vla.data.view import ViewSpec
    from salt_vla.models.teacher import TeacherSpec, load_teacher

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        generate_dataset(data, SynthConfig(videos=args.videos, classes=6,
                                           frames=args.src_frames, height=args.src_size,
                                           width=args.src_size),
                         workers=min(os.cpu_count() or 1, 16))
        index = load_split(data, "train")
        n = len(index)
        print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
              f"({args.threads} thread(s)); {n} train videos of {args.src_frames} frames at "
              f"{args.src_size} px (made in {time.perf_counter() - t0:.0f} s); view "
              f"{args.frames}x{args.size}; random {args.arch} teacher, batch "
              f"{args.batch_size}; {args.workers} decoder process(es)")
        view = ViewSpec(num_frames=args.frames, size=args.size)
        ids, views, _, paths = plan_rows(index, 1, None)
        tasks = [DecodeTask(r, str(paths[r]), ids[r], 0) for r in range(n)]
        expect = (args.frames, args.size, args.size, 3)

        # (b) decode-only
        decode_rate, _ = _pool_rate(ViewLoader(view), tasks, args.workers, expect)
        # (b) teacher-only, same batch shape, warm
        teacher = load_teacher(f"random:{args.arch}:0",
                               TeacherSpec(arch=args.arch, num_frames=args.frames,
                                           img_size=args.size), device=args.device)
        fn = make_teacher_fn(teacher, args.device, "float16")
        frames = np.random.default_rng(0).integers(0, 256, (args.batch_size, *expect),
                                                   dtype=np.uint8)
        fn(frames)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            fn(frames)
            done += args.batch_size
        teacher_rate = done / (time.perf_counter() - t0)
        del teacher

        # (b) the build
        out = Path(tmp) / "store"
        cfg = BuildConfig(data_root=data, out=out, teacher=f"random:{args.arch}:0", view=view,
                          teacher_arch=args.arch, shard_size=args.shard_size,
                          device=args.device,
                          pipeline=PipelineConfig(batch_size=args.batch_size,
                                                  workers=args.workers),
                          command=("bench",), show_progress=False)
        t0 = time.perf_counter()
        result = build_cache(cfg, log=lambda m: None)
        e2e = time.perf_counter() - t0
        st = result.stats[0]
        build_rate = st.rows_ok / st.wall_seconds
        bound = min(decode_rate, teacher_rate)
        serial = 1 / (1 / decode_rate + 1 / teacher_rate)
        print("(b) throughput, videos/s")
        print(f"  decode-only    {decode_rate:8.1f}   ({args.workers} worker(s), incl. JPEG "
              f"round trip)")
        print(f"  teacher-only   {teacher_rate:8.1f}")
        print(f"  build          {build_rate:8.1f}   (pipeline wall {st.wall_seconds:.1f} s; "
              f"end to end incl. teacher load and start-up {n / e2e:.1f}/s)")
        print(f"  efficiency     {build_rate / bound:8.2f}   vs min(decode, teacher) = "
              f"{bound:.1f}/s")
        print(f"  vs serial      {build_rate / serial:8.2f}   vs 1/(1/decode + 1/teacher) = "
              f"{serial:.1f}/s (all stages sharing these CPU cores)")
        print(f"  stage seconds  decode {st.decode_seconds:.1f} (summed over workers), teacher "
              f"{st.teacher_seconds:.1f}, write {st.write_seconds:.1f}")

        # (c) bytes
        meta = json.loads((out / "cache.json").read_text())
        c = meta["counts"]
        rows = c["written_rows"]
        lat = meta["latents"]
        row_bytes = lat["tokens"] * lat["dim"] * 2
        man = (out / "cache.json").stat().st_size
        print("(c) bytes per clip")
        print(f"  latents  {c['latent_bytes'] / rows:10.0f} B  (raw row {row_bytes} B + index "
              f"{(c['latent_bytes'] - rows * row_bytes) / rows:.0f} B)")
        print(f"  frames   {c['frames_bytes'] / rows:10.0f} B  ({args.frames} JPEGs q90 at "
              f"{args.size} px + tar headers)")
        print(f"  manifest {man / rows:10.0f} B  (cache.json {man} B for {rows} rows)")
        vitb = 1568 * 768 * 2
        print(f"  ViT-B 16x224 latents: {vitb} B/clip ({vitb / 1e6:.2f} MB); x168,913 clips = "
              f"{vitb * 168913 / 1e9:.0f} GB")

        # (c) failure overhead
        bad = Path(tmp) / "bad"
        bad.mkdir()
        good = paths[0].read_bytes()
        kinds = {"zero-byte": b"", "truncated": good[: len(good) // 3],
                 "text": b"not a video\n" * 10}
        bad_tasks = []
        for k, (kind, blob) in enumerate(kinds.items()):
            p = bad / f"{kind}.webm"
            p.write_bytes(blob)
            bad_tasks += [DecodeTask(k, str(p), kind, 0)] * 4
        _, res = _pool_rate(ViewLoader(view), bad_tasks, args.workers, expect)
        print("(c) failure overhead")
        for kind in kinds:
            secs = [r.seconds for r in res if r.task.video_id == kind]
            assert all(not r.ok for r in res if r.task.video_id == kind)
            print(f"  {kind:<10} {1e3 * np.mean(secs):7.1f} ms per video (decoder time to fail; "
                  f"a good video: {1e3 * st.decode_seconds / max(1, st.rows_ok):.1f} ms)")
        crash_ids = frozenset(ids[::4])
        good_rate, _ = _pool_rate(ViewLoader(view), tasks, args.workers, expect)
        crash_rate, res = _pool_rate(CrashingLoader(ViewLoader(view), crash_ids), tasks,
                                     args.workers, expect)
        n_crash = sum(not r.ok for r in res)
        extra = (n / crash_rate - n / good_rate - 0) / n_crash
        saved = n / good_rate / n  # the crashed videos' own decode time is saved
        print(f"  crash      {1e3 * (extra + saved):7.1f} ms per crashed video (kill + new "
              f"worker from the forkserver; {n_crash} crashes in {n} videos)")
        print("  timeout    = --decode-timeout + the same replacement cost")
        print(f"  disk       16 B per failed row (an empty shard-index entry) + ~{100} B in "
              f"cache.json/failures.jsonl; failed rows write no latents and no frames")


if __name__ == "__main__":
    # Import ourselves by module name so decoder processes can unpickle CrashingLoader.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_cache_build

    bench_cache_build.main()
