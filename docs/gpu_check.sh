#!/usr/bin/env bash
# The prepared GPU check (issue #21): run on a machine with a CUDA GPU, from the repository root, after
# `pip install -e .`. Under 5 minutes on one H100/H200-class GPU. Everything it writes goes to ${OUT:-gpu-check}/.
#   1. localize a few generated images in fp16 on the GPU and in fp32 on the CPU; print how many mask pixels agree;
#   2. benchmark the shipped checkpoint in fp16 at N = 1 and 5, batch 1 and 32 (with fp32 beside it);
#   3. one training step of the paper preset with --amp bf16 (random weights, generated photos).
set -euo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT/images" "$OUT/photos"
python - "$OUT" <<'PY'
import sys
from pathlib import Path

import cv2
import numpy as np

out = Path(sys.argv[1])
rng = np.random.default_rng(0)
for index in range(6):  # textured scenes, each with one pasted patch; photos for the training step
    image = cv2.GaussianBlur(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8), (0, 0), 3)
    patch = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    top, left = rng.integers(0, 384 - 96), rng.integers(0, 512 - 96)
    edited = image.copy()
    edited[top:top + 96, left:left + 96] = patch
    cv2.imwrite(str(out / "images" / f"scene{index}.png"), edited)
    cv2.imwrite(str(out / "photos" / f"photo{index}.png"), image)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

diffiml localize "$OUT/images" --out "$OUT/gpu-fp16" --device cuda --precision fp16
diffiml localize "$OUT/images" --out "$OUT/cpu-fp32" --device cpu --precision fp32
python - "$OUT" <<'PY' | tee "$OUT/agreement.txt"
import sys
from pathlib import Path

import cv2
import numpy as np

out = Path(sys.argv[1])
agree = []
for gpu in sorted((out / "gpu-fp16").glob("*_mask.png")):
    a = cv2.imread(str(gpu), cv2.IMREAD_GRAYSCALE)
    b = cv2.imread(str(out / "cpu-fp32" / gpu.name), cv2.IMREAD_GRAYSCALE)
    agree.append(float((a == b).mean()))
    print(f"{gpu.name}: {100 * agree[-1]:.3f} % of mask pixels agree")
print(f"mean agreement, CUDA fp16 against CPU fp32: {100 * np.mean(agree):.3f} %")
PY

diffiml benchmark --device cuda --precision fp32,fp16 --ensemble 1,5 --batch-size 1,32 --iters 10 --json \
    > "$OUT/benchmark.json"
diffiml benchmark --device cuda --precision fp32,fp16 --ensemble 1,5 --batch-size 1,32 --iters 10 | tee "$OUT/benchmark.txt"

diffiml train --preset paper --synthetic-from "$OUT/photos" --steps 1 --batch-size 2 --amp bf16 --device cuda \
    --warmup-steps 1 --out "$OUT/paper-step" 2>&1 | tail -n 3 | tee "$OUT/train.txt"
test -f "$OUT/paper-step/final/model.safetensors" && echo "one bf16 training step of the paper preset: ok"
