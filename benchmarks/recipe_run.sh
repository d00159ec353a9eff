#!/usr/bin/env bash
# Train one Stage 2 recipe and evaluate it closed loop on the fixed episodes of docs/policy_quality.md.
#   benchmarks/recipe_run.sh NAME STEPS [extra `actionprior fit` args...]
# env: DATA (default data_shards/sim-default), S1 (Stage 1 checkpoint, default runs/demo/stage1/checkpoints/last.ckpt;
#      "none" trains the decoder from scratch), EVAL_STEPS (checkpoints to evaluate, default STEPS), EPT (episodes per
#      task, default 10), OUT (default runs/pq), EVAL_ARGS (extra `actionprior eval` args, e.g. "--execution ensemble") and
#      EVAL_TAG (suffix of the evaluation folder, so a second execution mode keeps its own report).
#      Evaluation: --suite sim-default --seed 500, so every run of every recipe
#      sees the same episodes. Finished parts are skipped, so a rerun resumes.
set -euo pipefail
NAME=$1; shift; STEPS=$1; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
DATA=${DATA:-$ROOT/data_shards/sim-default}
S1=${S1:-$ROOT/runs/demo/stage1/checkpoints/last.ckpt}
OUT=${OUT:-$ROOT/runs/pq}/$NAME
EPT=${EPT:-10}
cd "$ROOT" && mkdir -p "$OUT"
s1_arg=(); [ "$S1" != none ] && s1_arg=("--stage1_ckpt=$S1")
if [ ! -f "$OUT/train.done" ]; then
  resume=(); [ -f "$OUT/checkpoints/last.ckpt" ] && resume=(--ckpt_path=last)
  start=$(date +%s)
  set -x
  # The recipe's own arguments come first: a config it adds (-c ...) must not move the output folder or the budget.
  "$PY" -m actionprior.cli fit -c configs/stage2.yaml "$@" "--data.datasets=[{path: $DATA}]" "${s1_arg[@]}" \
    --trainer.default_root_dir="$OUT" --trainer.logger.init_args.save_dir="$OUT" --trainer.max_steps="$STEPS" \
    --trainer.enable_progress_bar=false "${resume[@]}" > "$OUT/train.log" 2>&1
  { set +x; } 2>/dev/null
  echo $(( $(date +%s) - start )) > "$OUT/train.done"
fi
for s in ${EVAL_STEPS:-$STEPS}; do
  ckpt=$OUT/checkpoints/step$(printf %07d "$s").ckpt
  [ "$s" = "$STEPS" ] && ckpt=$OUT/checkpoints/last.ckpt
  ev=$OUT/eval-$s${EVAL_TAG:-}
  [ -f "$ev/report.json" ] && continue
  set -x
  # shellcheck disable=SC2086  # EVAL_ARGS is a list of words
  "$PY" -m actionprior.cli eval --ckpt "$ckpt" --suite sim-default --episodes-per-task "$EPT" --seed 500 --workers 2 \
    --out "$ev" --no-tensorboard ${EVAL_ARGS:-} > "$ev.log" 2>&1
  { set +x; } 2>/dev/null
done
echo "train: $(cat "$OUT/train.done") s; reports: $OUT/eval-*/report.json"
