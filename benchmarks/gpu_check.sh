#!/usr/bin/env bash
# GPU check of the trainer: builds a small store (synthetic SSv2-like videos, random ViT-B
# teacher, ssv2-16x224 view), then prints the table of benchmarks/bench_gpu.py for the exp3
# ViT-B student trained from it in bf16: for batch 32/64/128, with and without torch.compile,
# clips/s, ms/step, data wait, peak GPU memory and MFU (counted FLOPs over the GPU's dense peak),
# plus the SDPA kernels, host syncs per step and the largest batch that fits.
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine: the whole table
#   WORKERS=4 BATCHES=64 COMPILE=off bash benchmarks/gpu_check.sh
#
# Every knob is an environment variable (defaults in brackets): PYTHON [python], WORK [a new
# temp dir; reused if it already holds data/cache], VIDEOS [96], SPLITS [0.9/0.05/0.05],
# SIZE [240x424], FRAMES [48],
# EXP [exp3], TEACHER [random:vit_base:0], VIEW [ssv2-16x224], BATCHES [32,64,128],
# COMPILE [both|on|off], STEPS [30 timed], WARMUP [10], LOG_EVERY [10], WORKERS [8],
# SYNTH_WORKERS [nproc], DEVICE [cuda], EXTRA ["--set k=v ..." / other bench_gpu.py options].
# CPU smoke test of this script: DEVICE=cpu EXP=tiny TEACHER=random:vit_tiny:0 VIEW=tiny-8x64
#   SIZE=64x64 FRAMES=16 VIDEOS=24 SPLITS=0.9/0/0 BATCHES=8 COMPILE=off STEPS=2 WARMUP=1 LOG_EVERY=1
#   WORKERS=1 bash benchmarks/gpu_check.sh
set -euo pipefail

PYTHON=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d -t salt_gpu_check.XXXXXX)}
VIDEOS=${VIDEOS:-96}
SPLITS=${SPLITS:-0.9/0.05/0.05}
SIZE=${SIZE:-240x424}
FRAMES=${FRAMES:-48}
EXP=${EXP:-exp3}
TEACHER=${TEACHER:-random:vit_base:0}
VIEW=${VIEW:-ssv2-16x224}
BATCHES=${BATCHES:-32,64,128}
COMPILE=${COMPILE:-both}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-10}
LOG_EVERY=${LOG_EVERY:-10}
WORKERS=${WORKERS:-8}
SYNTH_WORKERS=${SYNTH_WORKERS:-$(nproc)}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
SALT=("$PYTHON" -m salt_vla)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

echo "# gpu_check: work dir $WORK"
"$PYTHON" - <<EOF
import os, torch
dev = "$DEVICE"
if dev == "cuda" and not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device visible (set DEVICE=cpu for a smoke test)")
name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
print(f"# device: {name}; torch {torch.__version__}; {os.cpu_count()} CPUs")
EOF

t0=$(date +%s)
if [ ! -f "$WORK/data/train.json" ]; then
  "${SALT[@]}" data synth "$WORK/data" --videos "$VIDEOS" --classes 6 --frames "$FRAMES" \
    --size "$SIZE" --splits "$SPLITS" --seed 0 --workers "$SYNTH_WORKERS"
fi
if [ ! -f "$WORK/cache/cache.json" ]; then
  "${SALT[@]}" cache build "$WORK/data" --split train --teacher "$TEACHER" \
    --teacher-arch "$(echo "$TEACHER" | cut -d: -f2)" --view-preset "$VIEW" --shard-size 32 \
    --batch-size 16 --workers "$WORKERS" --device "$DEVICE" --out "$WORK/cache" --no-progress
fi
echo "# data + store ready in $(( $(date +%s) - t0 )) s"

t1=$(date +%s)
# shellcheck disable=SC2086
"$PYTHON" "$HERE/bench_gpu.py" --cache "$WORK/cache" --exp "$EXP" --device "$DEVICE" \
  --batches "$BATCHES" --compile "$COMPILE" --steps "$STEPS" --warmup "$WARMUP" \
  --log-every "$LOG_EVERY" --workers "$WORKERS" $EXTRA
echo "# bench wall time $(( $(date +%s) - t1 )) s"
