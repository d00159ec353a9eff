#!/usr/bin/env bash
# The whole path a GPU user takes with LIBERO's real datasets, on one task without them: scripted-expert demos in
# LIBERO's HDF5 layout -> `data import hdf5` -> Stage 1 -> Stage 2 -> `serve` -> `eval-libero`. Tiny by default
# (a CPU proof of the path, not a policy that solves the task); every size is a variable:
#
#   bash benchmarks/libero/end_to_end.sh [OUT]      # default runs/libero/e2e
#   DEMOS=50 STAGE1_STEPS=20000 STAGE2_STEPS=30000 RENDER=128 EPISODES=50 bash benchmarks/libero/end_to_end.sh
#
# Needs `make install` (ours) and `make libero-env` (LIBERO's). Each step is skipped when its output exists, so
# an interrupted run continues.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-runs/libero/e2e}
SUITE=${SUITE:-libero_object}
TASK=${TASK:-0}
DEMOS=${DEMOS:-6}
RENDER=${RENDER:-64}
STAGE1_STEPS=${STAGE1_STEPS:-300}
STAGE2_STEPS=${STAGE2_STEPS:-300}
EPISODES=${EPISODES:-2}
MAX_STEPS=${MAX_STEPS:-}
PORT=${PORT:-8799}
# AP: the actionprior command (split on spaces, e.g. AP="python -m actionprior.cli")
AP=${AP:-"$repo/.venv/bin/actionprior"}
LIBERO_PY=${ACTIONPRIOR_LIBERO_PYTHON:-"$repo/.venv-libero/bin/python"}
export MUJOCO_GL=${MUJOCO_GL:-egl} LIBERO_CONFIG_PATH=${LIBERO_CONFIG_PATH:-"$(dirname "$LIBERO_PY")/../libero-config"}
mkdir -p "$out"
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }

step "1/5 expert demos ($DEMOS, $RENDER px) in LIBERO's HDF5 layout"
[[ -f "$out/demos.hdf5" ]] || PYTHONPATH="$repo" "$LIBERO_PY" "$repo/benchmarks/libero/expert_demos.py" \
  --suite "$SUITE" --task "$TASK" --demos "$DEMOS" --render-size "$RENDER" --out "$out/demos.hdf5"

step "2/5 import"
[[ -f "$out/shards/manifest.json" ]] || $AP data import hdf5 "$out/demos.hdf5" --out "$out/shards" \
  --spec "$repo/configs/embodiments/libero_panda.yaml" --flip-images --state-keys ee_pos,ee_ori,gripper_states \
  --cameras scene=agentview_rgb,wrist=eye_in_hand_rgb --image-size 64 --workers 1

fit() {  # config run_dir steps extra...
  local config=$1 dir=$2 steps=$3
  shift 3
  [[ -f "$dir/checkpoints/last.ckpt" ]] && return 0
  $AP fit -c "$repo/configs/$config" "--data.datasets=[{path: $out/shards}]" --data.val_fraction=0 \
    "--trainer.default_root_dir=$dir" "--trainer.logger.init_args.save_dir=$dir" "--trainer.max_steps=$steps" \
    "$@"
}
step "3/5 Stage 1 ($STAGE1_STEPS steps)"
fit stage1.yaml "$out/stage1" "$STAGE1_STEPS"
step "4/5 Stage 2 ($STAGE2_STEPS steps)"
fit stage2.yaml "$out/stage2" "$STAGE2_STEPS" "--stage1_ckpt=$out/stage1/checkpoints/last.ckpt"

step "5/5 serve + eval-libero ($EPISODES episodes)"
$AP serve --ckpt "$out/stage2/checkpoints/last.ckpt" --port "$PORT" > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q "listening\|serving" "$out/serve.log" 2>/dev/null && break; sleep 1; done
$AP eval-libero --suite "$SUITE" --tasks "$TASK" --episodes "$EPISODES" --server "ws://127.0.0.1:$PORT" \
  --render-size "$RENDER" --libero-python "$LIBERO_PY" --out "$out/eval" ${MAX_STEPS:+--max-steps "$MAX_STEPS"}
