"""The training step on a GPU: clips/s, ms/step, data wait, peak memory and MFU per batch size,
with and without torch.compile, and the largest batch that fits.

Every timed row is the real loop (`salt_vla.trainer.loop.train`) on the chosen data: in-memory
random clips (default: isolates the step) or a store (`--cache`, as `gpu_check.sh` builds one:
JPEG decoding and the latent memory map included). Clips/s and ms/step come from the loop's
own metrics after `--warmup` steps (compilation and cuDNN autotuning happen there); the loop
reads the device only at its log steps, so an interval's wall time is the GPU's. The FLOPs
are counted on one forward + backward of the same model at the same batch shapes
(`trainer/flops.py`, torch's FlopCounterMode); MFU = FLOPs per step / ms per step / the
GPU's dense peak (a table of known GPUs by name; `--peak-tflops` overrides).

Also printed: which SDPA kernel runs for the student's and the predictor's attention shapes
(head dim 64 and 32 for exp3), host synchronisations per step (CUDA sync debug mode, N vs 2N
steps), the largest batch that fits (doubling, then bisection, bounded by memory alone:
torch.cuda.OutOfMemoryError ends it) and, with `--profile`, where one step's time goes.

    python benchmarks/bench_gpu.py                       # CUDA: the whole exp3 table
    python benchmarks/bench_gpu.py --cache WORK/cache    # from a store (gpu_check.sh does this)
    python benchmarks/bench_gpu.py --batches 32 --compile off --no-max-batch --profile
    # CPU smoke test (tests/test_bench_gpu.py runs it):
    python benchmarks/bench_gpu.py --device cpu --exp tiny --batches 4 --compile off \\
        --steps 2 --warmup 1 --log-every 1 --rows 8 --workers 0
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salt_vla.masking.collator import MaskCollator
from salt_vla.models.pixels import frames_to_input
from salt_vla.runs.rundir import CLIPS_KEY, INTERVAL_KEY, read_metrics
from salt_vla.trainer.build import config_grid, mask_config, view_spec
from salt_vla.trainer.experiments import TrainConfig, resolve
from salt_vla.trainer.flops import mfu, peak_tflops, train_step_flops
from salt_vla.trainer.loop import RunSpec, autocast_for, train
from salt_vla.trainer.optim import build_optimizer
from salt_vla.trainer.sources import DataSources, memory_sources
from salt_vla.trainer.task import SALT_TASK

# The one H100 measurement before issue 20 (BENCHMARKS.md): exp3, bf16, batch 32.
BASELINE_CLIPS_S = {"exp3": 290.0}


@dataclass
class Row:
    batch: int
    compile: bool
    cudnn_benchmark: bool
    clips_s: float = math.nan
    ms_step: float = math.nan
    data_wait: float = math.nan
    peak_gib: float = math.nan
    flops_step: float = math.nan
    mfu: float | None = None
    note: str = ""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--exp", default="exp3", help="experiment preset [exp3]")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as `salt train --set` (repeatable)")
    ap.add_argument("--batches", default="32,64,128", help="batch sizes [32,64,128]")
    ap.add_argument("--compile", choices=("both", "on", "off"), default="both",
                    help="rows without and/or with torch.compile [both]")
    ap.add_argument("--cudnn-benchmark", choices=("off", "on", "both"), default="both",
                    help="cudnn.benchmark for the grid; 'both' adds one row with it on at the "
                         "first batch size without compile [both]")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per row [30]")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first [10]")
    ap.add_argument("--log-every", type=int, default=10,
                    help="steps per logged interval; divides --steps and --warmup [10]")
    ap.add_argument("--cache", type=Path, default=None,
                    help="train from this store instead of in-memory random clips")
    ap.add_argument("--rows", type=int, default=64,
                    help="in-memory clips (batches larger than this repeat them) [64]")
    ap.add_argument("--workers", type=int, default=None,
                    help="loader worker processes [8 on CUDA, 0 on CPU]")
    ap.add_argument("--device", default="cuda", help="cuda or cpu [cuda]")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak TFLOP/s for MFU (default: from the GPU table)")
    ap.add_argument("--max-batch", action=argparse.BooleanOptionalAction, default=None,
                    help="search the largest batch that fits [on with CUDA]")
    ap.add_argument("--batch-resolution", type=int, default=8,
                    help="stop the bisection when the bracket is this narrow [8]")
    ap.add_argument("--profile", action="store_true",
                    help="print the top ops of one profiled step at the first batch size")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    if args.warmup % args.log_every or args.steps % args.log_every or args.steps <= 0:
        ap.error("--steps and --warmup must be multiples of --log-every (and --steps > 0)")
    if args.workers is None:
        args.workers = 8 if args.device.startswith("cuda") else 0
    if args.max_batch is None:
        args.max_batch = args.device.startswith("cuda")
    return args


# --- data -------------------------------------------------------------------------------

def memory_data(cfg: TrainConfig, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 clips and fp16 latents shaped for ``cfg``'s view and teacher."""
    spec = view_spec(cfg)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (rows, spec.num_frames, spec.size, spec.size, 3), np.uint8)
    tokens = config_grid(cfg).num_tokens
    targets = rng.standard_normal((rows, tokens, cfg.teacher_dim)).astype(np.float16)
    return frames, targets


def example_batch(cfg: TrainConfig, data: tuple[np.ndarray, np.ndarray], batch: int,
                  device: torch.device) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """``(x, masks, targets)`` of ``batch`` clips on ``device``, masks from the collator."""
    frames, targets = data
    idx = np.arange(batch) % len(frames)
    masks = MaskCollator(mask_config(cfg), config_grid(cfg), seed=cfg.seed).batch_masks(
        list(range(batch)), 0, 0)
    x = frames_to_input(torch.from_numpy(frames[idx]).to(device))
    return x, [(c.to(device), t.to(device)) for c, t in masks], \
        torch.from_numpy(targets[idx]).to(device)


# --- one training run per row -----------------------------------------------------------

def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "ALLOC_FAILED" in str(e)))


def free_device(device: torch.device) -> None:
    """Give back what a finished (or OOM-failed) run held: device memory and pinned pages."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        host_empty = getattr(torch._C, "_host_emptyCache", None)
        if host_empty is not None:
            host_empty()


def run_cfg(args: argparse.Namespace, batch: int, compile_: bool, steps: int,
            log_every: int) -> TrainConfig:
    return resolve(args.exp, [
        f"batch_size={batch}", f"compile={str(compile_).lower()}", f"max_steps={steps}",
        f"log_every={log_every}", "ckpt_every=1000000000", f"num_workers={args.workers}",
        f"device={args.device}", *args.set])


def train_once(cfg: TrainConfig, args: argparse.Namespace, sources: DataSources | None,
               out: Path, device: torch.device) -> list[dict[str, Any]] | None:
    """Train per ``cfg`` into ``out`` (removed after) from a fresh peak-memory count: its
    logged records, or None when it ran out of device memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        train(cfg, RunSpec(out=out, cache=args.cache), sources, echo=lambda s: None)
        return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    except Exception as e:
        if not is_oom(e):
            raise
        return None
    finally:
        shutil.rmtree(out, ignore_errors=True)
        free_device(device)


def timed_row(args: argparse.Namespace, row: Row, sources: DataSources | None, tmp: Path,
              device: torch.device) -> Row:
    """Fill ``row`` from a run of ``--warmup`` + ``--steps`` steps (or note the OOM)."""
    cfg = run_cfg(args, row.batch, row.compile, args.warmup + args.steps, args.log_every)
    torch.backends.cudnn.benchmark = row.cudnn_benchmark
    try:
        recs = train_once(cfg, args, sources, tmp / "run", device)
    finally:
        torch.backends.cudnn.benchmark = False
        if row.compile:
            torch._dynamo.reset()
    if recs is None:
        row.note = "out of memory"
        return row
    timed = [r for r in recs if r["step"] > args.warmup]
    seconds = sum(r[INTERVAL_KEY] for r in timed)
    clips = sum(r[CLIPS_KEY] for r in timed)
    row.clips_s = clips / seconds
    row.ms_step = 1000 * seconds / (timed[-1]["step"] - args.warmup)
    row.data_wait = sum(r["data_wait"] * r[INTERVAL_KEY] for r in timed) / seconds
    row.peak_gib = max((r.get("gpu_peak_gib", math.nan) for r in recs), default=math.nan)
    return row


def step_flops(args: argparse.Namespace, batch: int, data: tuple[np.ndarray, np.ndarray],
               sources: DataSources, device: torch.device) -> float:
    """Counted FLOPs of one forward + backward at ``batch`` (the model the loop builds)."""
    cfg = run_cfg(args, batch, False, 1, 1)
    torch.manual_seed(cfg.seed)
    model = SALT_TASK.build(cfg, sources).to(device).train()
    try:
        x, masks, targets = example_batch(cfg, data, batch, device)
        return float(train_step_flops(model, x, masks, targets, autocast_for(cfg, device)))
    except Exception as e:
        if not is_oom(e):
            raise
        return math.nan
    finally:
        del model
        free_device(device)


# --- the largest batch --------------------------------------------------------------------

def largest_batch(fits: Callable[[int], bool], start: int, resolution: int = 8
                  ) -> tuple[int, list[tuple[int, bool]]]:
    """The largest batch ``fits`` accepts: double from ``start`` until one fails (halve
    until one fits if ``start`` fails), then bisect the bracket down to ``resolution``.
    Bounded only by ``fits`` (memory): no cap. Returns ``(batch or 0, tries)``."""
    tries: list[tuple[int, bool]] = []

    def attempt(b: int) -> bool:
        ok = fits(b)
        tries.append((b, ok))
        return ok

    lo, hi = 0, start
    if attempt(start):
        lo = start
        while attempt(2 * lo):
            lo *= 2
        hi = 2 * lo
    else:
        b = start
        while b > 1 and lo == 0:
            b //= 2
            if attempt(b):
                lo = b
            else:
                hi = b
        if lo == 0:
            return 0, tries
    while hi - lo > max(resolution, 1):
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return lo, tries


def fits_in_memory(args: argparse.Namespace, sources: DataSources | None, tmp: Path,
                   device: torch.device, peaks: dict[int, float]) -> Callable[[int], bool]:
    """``fits(batch)``: two training steps (the second holds AdamW's state) run without OOM."""

    def fits(batch: int) -> bool:
        recs = train_once(run_cfg(args, batch, False, 2, 1), args, sources, tmp / "fit", device)
        if recs is not None:
            peaks[batch] = max((r.get("gpu_peak_gib", math.nan) for r in recs),
                               default=math.nan)
        return recs is not None

    return fits


# --- kernels, syncs, profile ----------------------------------------------------------------

def sdpa_ops(batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype,
             device: torch.device) -> list[str]:
    """The SDPA ops (backend) torch dispatches, forward and backward, for these shapes."""
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, device=device, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        F.scaled_dot_product_attention(q, k, v).float().sum().backward()
    names = sorted({e.name for e in prof.events()
                    if "scaled_dot_product" in e.name or "attention" in e.name})
    return [n for n in names if n != "aten::scaled_dot_product_attention"] or ["math (unfused)"]


def sdpa_priority() -> str:
    """torch's SDPA backend order (the first whose constraints the call meets runs)."""
    try:
        from torch.nn.attention import SDPBackend

        return ", ".join(SDPBackend(i).name.lower() for i in torch._C._get_sdp_priority_order())
    except (AttributeError, ImportError, ValueError):
        return "?"


def syncs_per_step(args: argparse.Namespace, sources: DataSources | None, tmp: Path,
                   batch: int, device: torch.device) -> str:
    """Synchronising CUDA calls the sync debug mode reports (any thread), N vs 2N steps with
    one log at the end: the difference over N is the step's own."""
    counts = []
    for steps in (args.log_every, 2 * args.log_every):
        cfg = run_cfg(args, batch, False, steps, steps)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_once(cfg, args, sources, tmp / "sync", device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    per = (counts[1] - counts[0]) / args.log_every
    return f"{per:.2f} per step ({counts[0]} in {args.log_every} steps, {counts[1]} in " \
           f"{2 * args.log_every}; start-up, log and end included in both)"


def profile_step(args: argparse.Namespace, batch: int, data: tuple[np.ndarray, np.ndarray],
                 sources: DataSources, device: torch.device) -> str:
    """The top ops (self time) of one training step after three warm-up steps."""
    cfg = run_cfg(args, batch, False, 1, 1)
    torch.manual_seed(cfg.seed)
    model = SALT_TASK.build(cfg, sources).to(device).train()
    optimizer = build_optimizer(SALT_TASK.parts(model).values(), cfg, device)
    x, masks, targets = example_batch(cfg, data, batch, device)

    def step() -> None:
        with autocast_for(cfg, device):
            loss, _ = model(x, masks, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=acts) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25)


# --- the table ------------------------------------------------------------------------------

def _f(v: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else \
        format(v, fmt) + unit


def table(rows: list[Row]) -> str:
    head = ("| batch | compile | cudnn.benchmark | clips/s | ms/step | data wait | peak GiB "
            "| TFLOP/step | TFLOP/s | MFU | note |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        tflops_s = r.flops_step / 1e12 / (r.ms_step / 1000) if r.ms_step == r.ms_step else None
        lines.append(
            f"| {r.batch} | {'on' if r.compile else 'off'} | "
            f"{'on' if r.cudnn_benchmark else 'off'} | {_f(r.clips_s, '.1f')} | "
            f"{_f(r.ms_step, '.1f')} | {_f(100 * r.data_wait, '.1f', '%')} | "
            f"{_f(r.peak_gib, '.2f')} | {_f(r.flops_step / 1e12, '.4g')} | "
            f"{_f(tflops_s, '.4g')} | {_f(None if r.mfu is None else 100 * r.mfu, '.1f', '%')} | "
            f"{r.note} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device visible (use --device cpu for the smoke "
                         "test)")
    base = run_cfg(args, args.batches[0], False, 1, 1)
    autocast = device.type == "cuda" and base.precision in ("auto", "bf16")
    precision = "bf16" if autocast else ("tf32" if device.type == "cuda" else "fp32")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = args.peak_tflops if args.peak_tflops is not None else peak_tflops(name, precision)
    print(f"# {platform.node()}: {name or 'cpu'}; torch {torch.__version__}"
          f"{' CUDA ' + str(torch.version.cuda) if device.type == 'cuda' else ''}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    print(f"# exp {args.exp} ({base.student} student, {base.predictor_depth}x"
          f"{base.predictor_width} predictor, masks {base.mask_strategy} {base.mask_ratio}), "
          f"precision {precision}, peak {_f(peak, '.0f')} TFLOP/s"
          f"{' (--peak-tflops)' if args.peak_tflops is not None else ' (table)'}; data: "
          f"{args.cache or f'{args.rows} in-memory random clips'}; {args.workers} workers; "
          f"{args.warmup} warm-up + {args.steps} timed steps per row", flush=True)

    data = memory_data(base, args.rows)
    mem_sources = memory_sources(base, *data)
    sources = None if args.cache else mem_sources  # None: the loop opens --cache
    dtype = torch.bfloat16 if autocast else torch.float32
    x, masks, _ = example_batch(base, data, 1, torch.device("cpu"))
    s_dim, _, s_heads = SALT_TASK.build(base, mem_sources).student.cfg.dims
    n_ctx = masks[0][0].shape[1]
    n_all = n_ctx + masks[0][1].shape[1]
    p_heads = base.predictor_heads
    print(f"# SDPA backend priority: {sdpa_priority()}")
    for who, heads, tokens, hd in (("student", s_heads, n_ctx, s_dim // s_heads),
                                   ("predictor", p_heads, n_all, base.predictor_width // p_heads)):
        ops = sdpa_ops(args.batches[0], heads, tokens, hd, dtype, device)
        print(f"# SDPA {who} ({heads} heads x {tokens} tokens x head dim {hd}, {dtype}): "
              f"{', '.join(ops)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_gpu.") as tmp_dir:
        tmp = Path(tmp_dir)
        if device.type == "cuda":
            print(f"# host syncs: {syncs_per_step(args, sources, tmp, args.batches[0], device)}",
                  flush=True)
        compiles = {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]
        bm = args.cudnn_benchmark == "on"
        plan = [Row(b, c, bm) for b in args.batches for c in compiles]
        if args.cudnn_benchmark == "both" and device.type == "cuda":
            plan.append(Row(args.batches[0], False, True))
        flops = {b: step_flops(args, b, data, mem_sources, device) for b in args.batches}
        rows = []
        for row in plan:
            t0 = time.perf_counter()
            row = timed_row(args, row, sources, tmp, device)
            row.flops_step = flops[row.batch]
            row.mfu = mfu(row.flops_step, row.ms_step / 1000, peak) if row.ms_step > 0 else None
            rows.append(row)
            print(f"# batch {row.batch} compile {row.compile} cudnn.benchmark "
                  f"{row.cudnn_benchmark}: {_f(row.clips_s, '.1f')} clips/s "
                  f"({time.perf_counter() - t0:.0f} s incl. set-up) {row.note}", flush=True)
        print(table(rows))
        best = max((r for r in rows if r.clips_s == r.clips_s), key=lambda r: r.clips_s,
                   default=None)
        baseline = BASELINE_CLIPS_S.get(args.exp)
        if best is not None and baseline and device.type == "cuda":
            print(f"best {best.clips_s:.1f} clips/s (batch {best.batch}, compile "
                  f"{'on' if best.compile else 'off'}) = {best.clips_s / baseline:.2f}x the "
                  f"{baseline:.0f} clips/s H100 baseline (target >= 2x)")
        if args.max_batch:
            peaks: dict[int, float] = {}
            fits = fits_in_memory(args, sources, tmp, device, peaks)
            biggest, tries = largest_batch(fits, max(args.batches), args.batch_resolution)
            print(f"largest batch that fits (compile off): {biggest} "
                  f"(peak {_f(peaks.get(biggest, math.nan), '.2f')} GiB); tries: "
                  + ", ".join(f"{b}{'' if ok else ' OOM'}" for b, ok in tries))
        if args.profile:
            print(profile_step(args, args.batches[0], data, mem_sources, device))
    return rows


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main(sys.argv[1:])
