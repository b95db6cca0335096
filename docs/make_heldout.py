"""Write the held-out synthetic evaluation set used in weights/README.md and docs/replication.md.

60 pairs made by the project's own generator from the 24 Kodak photos (never used for training; training
uses BSDS500), with seed 777, which no training or validation run uses. Tampered images go to Tp/ with
their 0/255 masks in Gt/ (same stem), untouched photos to Au/, so `diffiml evaluate --data DIR` reads it.
kinds.csv names each pair's edit, for `docs/score_by_kind.py`.
Run from the repo root:
    python docs/make_heldout.py ../shared/data/authentic/kodak24 /tmp/synth-heldout
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from diffiml_cli.data import SyntheticManipulations

COUNT, SEED = 60, 777


def main(photos: str, out: str) -> None:
    root = Path(out)
    for folder in ("Tp", "Gt", "Au"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    generator = SyntheticManipulations(photos, seed=SEED)
    kinds = ["image,kind"]
    for index in range(COUNT):
        sample = generator.make_sample(index)
        name = f"k{index:03d}.png"
        kinds.append(f"{name},{sample.kind}")
        bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
        if sample.mask.any():
            cv2.imwrite(str(root / "Tp" / name), bgr)
            cv2.imwrite(str(root / "Gt" / name), sample.mask.astype(np.uint8) * 255)
        else:
            cv2.imwrite(str(root / "Au" / name), bgr)
    (root / "kinds.csv").write_text("\n".join(kinds) + "\n")
    print(f"{COUNT} pairs in {root}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
