"""Split ../shared/data/real-train by original photo into a training part and a fixed validation part.

An original and every edit made from it fall on one side: IMD2020's `00010_fake_02.png` and `00010_orig.jpg` are
the group `imd2020:00010`, a CoMoFoD forgery `005.png` and its original `005.png` the group `comofod:005`, and an
IMD2020 edit without a mask (`c8umnyd_0.jpg`) the group of its id. Per source, numpy.random.default_rng(20261203)
permutes the sorted groups and the first 30 % are the validation part, which no training run may read and on
which settings are chosen. The lists name files of the data set, so they are not committed; they are drawn again,
identically. Writes to docs/splits/:
    real-train-train.json, real-train-val.json   IMDL-BenCo lists [[image, mask] | [image, "Negative"]] (absolute)
    real-train-train-unmasked.txt, ...-val-unmasked.txt   edits without a mask (image-level positives only)
Run from the repo root:
    python docs/make_real_splits.py ../shared/data/real-train
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

SEED = 20261203
VALIDATION_SHARE = 0.3
_IMD_ID = re.compile(r"^(?P<id>[^_]+)_(?:fake|orig)")


def groups(root: Path) -> dict[str, list[tuple[Path, Path | None, str]]]:
    """Group key -> its files as (image, mask or None, kind); kind is "tampered", "authentic" or "unmasked"."""
    found: dict[str, list[tuple[Path, Path | None, str]]] = {}

    def add(key: str, item: tuple[Path, Path | None, str]) -> None:
        found.setdefault(key, []).append(item)

    imd = root / "imd2020"
    for image in sorted((imd / "tampered").glob("*")):
        masks = sorted((imd / "mask").glob(f"{image.stem}.*"))
        add(f"imd2020:{_imd_id(image)}", (image, masks[0] if masks else None, "tampered" if masks else "unmasked"))
    for image in sorted((imd / "authentic").glob("*")):
        add(f"imd2020:{_imd_id(image)}", (image, None, "authentic"))
    for image in sorted((imd / "tampered-unmasked").glob("*")):
        if image.suffix.lower() != ".txt":
            add(f"imd2020u:{image.stem.split('_')[0]}", (image, None, "unmasked"))
    comofod = root / "comofod"
    for image in sorted((comofod / "forged").glob("*")):
        mask = comofod / "mask" / image.name
        add(f"comofod:{image.stem}", (image, mask if mask.is_file() else None, "tampered"))
    for image in sorted((comofod / "authentic").glob("*")):
        add(f"comofod:{image.stem}", (image, None, "authentic"))
    return found


def _imd_id(image: Path) -> str:
    match = _IMD_ID.match(image.stem)
    return match.group("id") if match else image.stem


def split(found: dict[str, list]) -> dict[str, list[str]]:
    """{"train": [group keys], "val": [group keys]}: per source (the key's prefix), the first VALIDATION_SHARE of
    a seeded permutation of its sorted groups is validation."""
    parts: dict[str, list[str]] = {"train": [], "val": []}
    sources = sorted({key.split(":")[0] for key in found})
    for source in sources:
        keys = sorted(key for key in found if key.split(":")[0] == source)
        order = np.random.default_rng(SEED).permutation(len(keys))
        cut = round(VALIDATION_SHARE * len(keys))
        parts["val"] += sorted(keys[i] for i in order[:cut])
        parts["train"] += sorted(keys[i] for i in order[cut:])
    return parts


def write(found: dict[str, list], parts: dict[str, list[str]], out: Path) -> list[Path]:
    """Write each part's manifest and unmasked list under `out`; returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for part, keys in parts.items():
        items = [item for key in keys for item in found[key]]
        manifest = [[str(image.resolve()), str(mask.resolve()) if kind == "tampered" else "Negative"]
                    for image, mask, kind in items if kind in ("tampered", "authentic")]
        unmasked = [str(image.resolve()) for image, _, kind in items if kind == "unmasked"]
        paths = (out / f"real-train-{part}.json", out / f"real-train-{part}-unmasked.txt")
        paths[0].write_text(json.dumps(manifest, indent=1) + "\n")
        paths[1].write_text("".join(f"{line}\n" for line in unmasked))
        written += paths
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the real-train folder (imd2020/, comofod/)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "splits")
    args = parser.parse_args()
    found = groups(args.root)
    parts = split(found)
    for path in write(found, parts, args.out):
        print(f"-> {path}")
    for part, keys in parts.items():
        kinds = [kind for key in keys for _, _, kind in found[key]]
        print(f"{part}: {len(keys)} groups, " + ", ".join(f"{kinds.count(k)} {k}" for k in
                                                          ("tampered", "authentic", "unmasked")))


if __name__ == "__main__":
    main()
