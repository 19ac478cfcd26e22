#!/usr/bin/env bash
# GPU check of the trainer: builds a small store (synthetic SSv2-like videos, random ViT-B
# teacher, ssv2-16x224 view) and trains the exp3 ViT-B student for 50 steps in bf16 from it,
# then prints clips/s, the data-wait fraction and peak GPU memory.
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine
#   WORKERS=4 BATCH=64 bash benchmarks/gpu_check.sh
#
# Every knob is an environment variable (defaults in brackets): PYTHON [python], WORK [a new
# temp dir; reused if it already holds data/cache], VIDEOS [96], SIZE [240x424], FRAMES [48],
# EXP [exp3], TEACHER [random:vit_base:0], VIEW [ssv2-16x224], STEPS [50], BATCH [32],
# WORKERS [8], SYNTH_WORKERS [nproc], DEVICE [cuda], EXTRA ["--set ..." passed to salt train].
# CPU smoke test of this script: DEVICE=cpu EXP=tiny TEACHER=random:vit_tiny:0 VIEW=tiny-8x64
#   SIZE=64x64 FRAMES=16 VIDEOS=24 STEPS=3 BATCH=8 WORKERS=1 bash benchmarks/gpu_check.sh
set -euo pipefail

PYTHON=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d -t salt_gpu_check.XXXXXX)}
VIDEOS=${VIDEOS:-96}
SIZE=${SIZE:-240x424}
FRAMES=${FRAMES:-48}
EXP=${EXP:-exp3}
TEACHER=${TEACHER:-random:vit_base:0}
VIEW=${VIEW:-ssv2-16x224}
STEPS=${STEPS:-50}
BATCH=${BATCH:-32}
WORKERS=${WORKERS:-8}
SYNTH_WORKERS=${SYNTH_WORKERS:-$(nproc)}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
SALT=("$PYTHON" -m salt_vla)

echo "# gpu_check: work dir $WORK"
"$PYTHON" - <<EOF
import os, torch
dev = "$DEVICE"
name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
print(f"# device: {name}; torch {torch.__version__}; {os.cpu_count()} CPUs")
if dev == "cuda" and not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device visible (set DEVICE=cpu for a smoke test)")
EOF

t0=$(date +%s)
if [ ! -f "$WORK/data/train.json" ]; then
  "${SALT[@]}" data synth "$WORK/data" --videos "$VIDEOS" --classes 6 --frames "$FRAMES" \
    --size "$SIZE" --splits 0.9/0.05/0.05 --seed 0 --workers "$SYNTH_WORKERS"
fi
if [ ! -f "$WORK/cache/cache.json" ]; then
  "${SALT[@]}" cache build "$WORK/data" --split train --teacher "$TEACHER" \
    --teacher-arch "$(echo "$TEACHER" | cut -d: -f2)" --view-preset "$VIEW" --shard-size 32 \
    --batch-size 16 --workers "$WORKERS" --device "$DEVICE" --out "$WORK/cache" --no-progress
fi
echo "# data + store ready in $(( $(date +%s) - t0 )) s"

rm -rf "$WORK/run"
t1=$(date +%s)
# shellcheck disable=SC2086
"${SALT[@]}" train --exp "$EXP" --cache "$WORK/cache" --out "$WORK/run" \
  --set max_steps="$STEPS" --set batch_size="$BATCH" --set num_workers="$WORKERS" \
  --set log_every=10 --set ckpt_every=100000 --set device="$DEVICE" $EXTRA
echo "# train wall time $(( $(date +%s) - t1 )) s (including start-up)"

"$PYTHON" - "$WORK/run/metrics.jsonl" "$BATCH" <<'EOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
logs = [r for r in recs if "clips_per_s" in r]
steady = logs[1:] or logs  # the first interval includes worker start-up and warm-up
rate = statistics.mean(r["clips_per_s"] for r in steady)
wait = statistics.mean(r["data_wait"] for r in steady)
peak = max((r.get("gpu_peak_gib", float("nan")) for r in logs), default=float("nan"))
print(f"RESULT steps {logs[-1]['step']} batch {sys.argv[2]}: {rate:.1f} clips/s "
      f"({float(sys.argv[2]) / rate * 1000:.0f} ms/step), data wait {100 * wait:.1f}%, "
      f"peak GPU memory {peak:.2f} GiB, final loss {logs[-1]['loss']:.4f} "
      f"(normalised {logs[-1]['norm_loss']:.4f})")
EOF
