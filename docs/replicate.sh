#!/usr/bin/env bash
# The small CPU comparison of docs/replication.md: the paper's Table 5 (DiffIML against a same-backbone
# discriminative head), Table 6 (edge supervision, error prior) and Table 7 (sampling steps), at one budget.
# Usage: docs/replicate.sh DATA_ROOT OUT [STEPS]
#   DATA_ROOT holds authentic/bsds500, authentic/kodak24 and casia-samples/casia-samples.json.
set -euo pipefail
DATA=${1:?DATA_ROOT}; OUT=${2:?OUT}; STEPS=${3:-150}
HELDOUT="$OUT/heldout"
mkdir -p "$OUT/eval"
[ -d "$HELDOUT/Tp" ] || python docs/make_heldout.py "$DATA/authentic/kodak24" "$HELDOUT"

# Every arm: the same preset, size, backbone weights, data stream (seed 0), steps and batch: the same samples seen.
# --resolution resize: the runs recorded in docs/replication.md predate the native-resolution tiny preset.
COMMON=(--synthetic-from "$DATA/authentic/bsds500" --preset tiny --image-size 256 --resolution resize
        --backbone-weights efficientnet-lite0
        --steps "$STEPS" --batch-size 8 --lr 3e-4 --warmup-steps 30 --ema 0.99 --save-every 50 --val-every 100000
        --num-workers 1 --seed 0)
declare -A ARMS=(
  [diffiml]=""
  [discriminative]="--model discriminative"
  [no-edge]="--no-edge"
  [prior-0]="--prior-rate 0"
  [prior-0.3]="--prior-rate 0.3"
)
EVAL=(--data casia="$DATA/casia-samples/casia-samples.json" --data synthetic="$HELDOUT" --batch-size 8)
for arm in diffiml discriminative no-edge prior-0 prior-0.3; do
  run="$OUT/runs/$arm"
  if [ ! -f "$run/final/model.safetensors" ]; then
    resume=(); [ -f "$run/state.pt" ] && resume=(--resume)
    # shellcheck disable=SC2086
    diffiml train "${COMMON[@]}" ${ARMS[$arm]} --out "$run" "${resume[@]}"
  fi
  if [ "$arm" = discriminative ]; then  # deterministic: one pass, no seeds
    diffiml evaluate -c "$run/final" "${EVAL[@]}" --out "$OUT/eval/$arm" --json > "$OUT/eval/$arm.json"
  else  # the paper's defaults (8 steps, N = 5) over 3 sampling seeds
    diffiml evaluate -c "$run/final" "${EVAL[@]}" --seeds 0,1,2 --out "$OUT/eval/$arm" --json > "$OUT/eval/$arm.json"
  fi
done
# Table 7: sampling steps on the default model, no retraining
diffiml evaluate -c "$OUT/runs/diffiml/final" "${EVAL[@]}" --sweep-steps 1,4,8,10 --seeds 0,1,2 \
    --out "$OUT/eval/diffiml-steps" --json > "$OUT/eval/diffiml-steps.json"
# Per-image F1 at sampling seed 0 for every arm: the paired differences and their standard errors
for arm in diffiml discriminative no-edge prior-0 prior-0.3; do
  diffiml evaluate -c "$OUT/runs/$arm/final" "${EVAL[@]}" --seed 0 --out "$OUT/eval/$arm-seed0" > /dev/null
done
