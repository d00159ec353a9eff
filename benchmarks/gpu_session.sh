#!/usr/bin/env bash
# The scale benchmarks in one command on a GPU machine (~10 min on one H200 with the defaults):
#   bash benchmarks/gpu_session.sh                    # or: make bench-gpu
#   PY=.venv/bin/python OUT=runs/bench/h200 BUDGET_S=400 bash benchmarks/gpu_session.sh
#
# 1. Stage 2 training matrix of the 2B architecture (random weights, built offline): bf16-mixed vs 32-true,
#    flash_attention_2 vs sdpa (when flash-attn is installed), gradient checkpointing off/on, per-device
#    batch 8/16/32/64, and with >= 2 GPUs DDP, FSDP, DeepSpeed ZeRO-2/3 (their final loss against DDP's);
#    the DataModule's samples/s for the same batch; Stage 1's step time and its share of wall-clock at the
#    paper's 5k/50k steps; the largest per-device batch within 80 GB.
# 2. Inference latency per action chunk (backbone and decoder separately, eager and compiled decoder).
# Writes $OUT/train.json + train.md, $OUT/latency.json and $OUT/summary.md (both tables).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python}
OUT=${OUT:-runs/bench/gpu_session}
BACKBONE=${BACKBONE:-random:qwen3_vl_2b}
BUDGET_S=${BUDGET_S:-420}      # the training matrix stops starting runs after this (the rest is listed as skipped)
STEPS=${STEPS:-15}
WARMUP=${WARMUP:-5}
IMAGE_SIZE=${IMAGE_SIZE:-256}   # see --image-size in benchmarks/train_throughput.py
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

"$PY" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_session.sh: no CUDA device visible (torch.cuda.is_available() is False); "
             "on CPU run: make bench-train")
print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
EOF

# flash_attention_2 first (the base configuration) when flash-attn is installed, else SDPA only.
ATTN=$("$PY" -c "import importlib.util as u; print('flash_attention_2 sdpa' if u.find_spec('flash_attn') else 'sdpa')")

t0=$(date +%s)
failed=""  # one part failing still leaves the other's results and the summary
# shellcheck disable=SC2086  # ATTN is a word list on purpose
"$PY" -m benchmarks.train_throughput \
    --backbone "$BACKBONE" \
    --precision bf16-mixed 32-true \
    --attn $ATTN \
    --grad-ckpt off on \
    --batch-size 32 8 16 64 \
    --strategies single ddp fsdp deepspeed_zero2 deepspeed_zero3 \
    --steps "$STEPS" --warmup "$WARMUP" --image-size "$IMAGE_SIZE" \
    --max-batch --max-batch-cap-gb 80 --max-batch-limit 512 \
    --loader-workers 8 --loader-batches 20 --loader-episodes 6 \
    --stage1-steps 30 \
    --budget-s "$BUDGET_S" \
    --json "$OUT/train.json" --markdown "$OUT/train.md" || failed="$failed train_throughput"
echo "training matrix: $(( $(date +%s) - t0 )) s"

"$PY" -m benchmarks.inference_latency \
    --backbone "$BACKBONE" --device cuda --autocast bf16 --image-size "$IMAGE_SIZE" \
    --compile-decoder --target-ms 50 --iters 30 --warmup 5 \
    --json "$OUT/latency.json" || failed="$failed inference_latency"
echo "total: $(( $(date +%s) - t0 )) s"

"$PY" -m benchmarks.summary --train "$OUT/train.json" --latency "$OUT/latency.json" --out "$OUT/summary.md"
cat "$OUT/summary.md"
if [ -n "$failed" ]; then
    echo "gpu_session.sh: failed:$failed (see the output above)" >&2
    exit 1
fi
