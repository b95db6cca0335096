"""Write a detection set from a list of held-out photos: untouched, post-processed and edited versions of each.

For every photo named in the list (BSDS500 stems from docs/splits/, which docs/make_splits.py writes), it writes four images:
- Au/<stem>_plain.png: the photo as it is;
- Au/<stem>_processed.png: the photo given the generator's post-processing of edits (re-rendered as by another
  camera half the time, then resized, blurred or JPEG-compressed, once or twice, as `_post_process` draws), so
  that processing alone is not what tells the two classes apart;
- Tp/<stem>_edit0.png and Tp/<stem>_edit1.png (masks in Gt/): a splice, copy-move or inpaint each, the second
  with other-camera donors, post-processed the same way.
`diffiml evaluate --data DIR` and `diffiml calibrate --data DIR` read it (Tp/ + Gt/ + Au/); kinds.csv names each
image's kind. The seed decides every edit: use one seed for the calibration set and another for the test set.
Run from the repo root:
    python docs/make_detection_sets.py ../shared/data/authentic/bsds500 docs/splits/bsds500-calibration.txt \
        /tmp/detection-calibration --seed 31
    python docs/make_detection_sets.py ../shared/data/authentic/bsds500 docs/splits/bsds500-test.txt \
        /tmp/detection-test --seed 32
`--match-grain` writes the same set with every edit's grain matched to its host's (`train --match-grain`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from diffiml_cli.training_setup import read_stems
from diffiml_cli.data import SyntheticManipulations
from diffiml_cli.image_io import list_images, load_rgb


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos")
    parser.add_argument("stems")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--match-grain", action="store_true", help="give every edit its host's grain back (the same "
                        "edits and authentic images otherwise; train --match-grain)")
    args = parser.parse_args()

    wanted = set(read_stems(Path(args.stems)))
    others = [path.stem for path in list_images([args.photos]) if path.stem not in wanted]
    common = dict(exclude=others, seed=args.seed)
    processed = SyntheticManipulations(args.photos, authentic_share=1.0, other_camera_donors=True, **common)
    edited = {**common, "match_grain": args.match_grain}  # the authentic images stay as they were
    edits = [SyntheticManipulations(args.photos, authentic_share=0.0, **edited),
             SyntheticManipulations(args.photos, authentic_share=0.0, other_camera_donors=True,
                                    **{**edited, "seed": args.seed + 1})]
    root = Path(args.out)
    kinds = ["image,kind"]
    for index, photo in enumerate(processed.photos):
        _write(root / "Au" / f"{photo.stem}_plain.png", load_rgb(photo))
        kinds.append(f"{photo.stem}_plain.png,authentic")
    for index in range(len(processed.photos)):
        sample = processed.make_sample(index)
        _write(root / "Au" / f"{sample.host_path.stem}_processed.png", sample.image)
        kinds.append(f"{sample.host_path.stem}_processed.png,authentic")
        for number, maker in enumerate(edits):
            sample = maker.make_sample(index)
            name = f"{sample.host_path.stem}_edit{number}.png"
            _write(root / "Tp" / name, sample.image)
            _write(root / "Gt" / name, sample.mask.astype(np.uint8) * 255)
            kinds.append(f"{name},{sample.kind}")
    (root / "kinds.csv").write_text("\n".join(kinds) + "\n")
    print(f"{len(kinds) - 1} images from {len(processed.photos)} photos in {root}")


if __name__ == "__main__":
    main()
