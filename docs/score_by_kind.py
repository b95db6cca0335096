"""Mean pixel F1@0.5 per edit kind on the held-out synthetic set, as in the model card's per-kind table.

Joins the `kinds.csv` that `docs/make_heldout.py` writes with the `per_image.csv` of `diffiml evaluate`.
Run from the repo root:
    python docs/score_by_kind.py /tmp/synth-heldout runs/eval/per_image.csv [DATASET]
DATASET is the name given to `evaluate --data NAME=...` (default: synthetic).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path


def main(heldout: str, per_image: str, dataset: str = "synthetic") -> None:
    with open(Path(heldout) / "kinds.csv", newline="") as handle:
        kind_of = {row["image"]: row["kind"] for row in csv.DictReader(handle)}
    scores: dict[str, list[float]] = defaultdict(list)
    with open(per_image, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["dataset"] == dataset and row["tampered"] == "True":
                scores[kind_of[Path(row["image"]).name]].append(float(row["pixel_f1"]))
    if not scores:
        sys.exit(f"no tampered images of dataset {dataset!r} in {per_image}")
    for kind, values in sorted(scores.items()):
        print(f"{kind:10s} {len(values):3d} images  F1@0.5 {sum(values) / len(values):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
