"""List the untouched photos that a localizer gets wrong: hard negatives for `diffiml train --hard-negatives`.

For every photo of a folder (minus held-out lists), this runs the localizer on the photo as it is and counts
the pixels it marks, and runs the copy-move cue's SIFT self-matching, which fires on natural repetition
(windows, tiles, foliage). A photo is a hard negative when the model marks at least MIN_MARKED of it, or when
at least MIN_MATCHES keypoints match elsewhere in it. It writes one stem per line, worst first, and a CSV of
both numbers for every photo. Run from the repo root:

    python docs/mine_hard_negatives.py ../shared/data/authentic/bsds500 runs/hard-negatives.txt \
        --exclude docs/splits/bsds500-calibration.txt --exclude docs/splits/bsds500-test.txt
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import torch

from diffiml_cli.checkpoint import default_checkpoint
from diffiml_cli.training_setup import read_stems
from diffiml_cli.image_io import list_images, load_rgb
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.pipeline import prepare_input
from diffiml_cli.models.build import load_model
from diffiml_cli.models.copy_move_cue import keypoint_matches

MIN_MARKED = 0.01  # share of the photo's pixels at prob >= 0.5
MIN_MATCHES = 20  # keypoints that match another place of the photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos")
    parser.add_argument("out")
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ensemble", type=int, default=5)
    args = parser.parse_args()

    excluded = {stem for path in args.exclude for stem in read_stems(Path(path))}
    photos = [path for path in list_images([args.photos]) if path.stem not in excluded]
    localizer, config = load_model(args.checkpoint or default_checkpoint())
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    sampling = SamplingOptions(steps=args.steps, ensemble=args.ensemble)
    rows = []
    for number, path in enumerate(photos):
        image = load_rgb(path)
        prediction = predictor.predict_inputs([prepare_input(image, config)], sampling)[0]
        marked = float((prediction.probability >= 0.5).float().mean())
        _, matched = keypoint_matches(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        rows.append({"stem": path.stem, "marked": marked, "matches": int(matched.sum())})
        if number % 50 == 0:
            print(f"{number}/{len(photos)}", flush=True)
    hard = sorted((row for row in rows if row["marked"] >= MIN_MARKED or row["matches"] >= MIN_MATCHES),
                  key=lambda row: (-row["marked"], -row["matches"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# hard negatives of {args.photos}: marked >= {MIN_MARKED} or matches >= {MIN_MATCHES}\n"
                   + "".join(f"{row['stem']}\n" for row in hard))
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["stem", "marked", "matches"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(hard)} of {len(rows)} photos are hard negatives -> {out}")


if __name__ == "__main__":
    main()
