"""Write the held-out BSDS500 photo lists: docs/splits/bsds500-calibration.txt and bsds500-test.txt.

The lists name photos of the data set, so they are not committed; they are drawn again, identically, from the
folder: numpy.random.default_rng(20261201).permutation over the 500 sorted stems, items 0-49 for the
calibration set (the detector's thresholds are chosen on it) and 50-99 for the held-out test of detection and
false alarms. `train --exclude-photos`, `distill-vae --exclude-photos`, docs/make_detection_sets.py and
docs/mine_hard_negatives.py read them. Run from the repo root:
    python docs/make_splits.py ../shared/data/authentic/bsds500
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffiml_cli.image_io import list_images

SEED = 20261201
SPLITS = {"bsds500-calibration.txt": (0, 50, "the detector's thresholds are chosen on them"),
          "bsds500-test.txt": (50, 100, "the held-out test of detection and false alarms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path, help="the BSDS500 folder (500 photos)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "splits")
    args = parser.parse_args()
    stems = sorted(path.stem for path in list_images([str(args.photos)]))
    if len(stems) != 500:
        raise SystemExit(f"{args.photos}: expected the 500 BSDS500 photos, found {len(stems)}")
    order = np.random.default_rng(SEED).permutation(len(stems))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (start, stop, use) in SPLITS.items():
        header = (f"# 50 photos of BSDS500 held out of every training run from 2026-12 on: {use}\n"
                  f"# Drawn with numpy.random.default_rng({SEED}).permutation over the 500 sorted stems "
                  f"(items {start}-{stop - 1}).\n")
        chosen = sorted(stems[i] for i in order[start:stop])
        (args.out / name).write_text(header + "".join(f"{stem}\n" for stem in chosen))
        print(f"-> {args.out / name}")


if __name__ == "__main__":
    main()
