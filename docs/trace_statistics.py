"""How different the camera-trace statistics are inside and outside an edit, per kind of edit (issue #34, item 3).

For each image of a set (an IMDL-BenCo JSON, or a Tp/Gt/Au folder with kinds.csv), the Noiseprint front end's map
gives the detector's trace channels (`models/camera_trace.py`: per 8x8 cell, the log local energy and its robust
z-score against the image's own cells). Per kind of edit it reports:
- `z in - out`: the median over images of (mean z-score of the cells at least half inside the edit) minus (mean
  z-score of the cells outside it); 0 when the front end sees no difference;
- `cell AUC`: the AUC of z (higher energy inside) and of |z| (either way) for "cell inside the edit", pooled over
  the kind's images (0.5: chance);
- `image AUC`: the AUC of the image's top-1 % mean |z| for tampered (that kind) against the set's authentic images.
Images are read at their own resolution, never resampled (resampling erases the traces); a window of at most
`--window` pixels is cut, centred on the edit for a tampered image, so that every image costs about the same.
Run from the repo root (1 thread, about 3 s per 512^2 window with the teacher):
    python docs/trace_statistics.py runs/noiseprint-teacher docs/splits/real-train-train.json runs/sets/dtest
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from diffiml_cli.image_io import load_mask, load_rgb
from diffiml_cli.metrics import image_auc
from diffiml_cli.models.camera_trace import CameraTrace, trace_cells
from diffiml_cli.models.noiseprint import load_noiseprint


def read_set(spec: str) -> list[tuple[Path, Path | None, str]]:
    """(image, mask or None, kind) for a JSON list or a Tp/Gt/Au folder; kind from kinds.csv, else the set name."""
    path = Path(spec)
    if path.suffix == ".json":
        def kind(image: str) -> str:  # real-train's lists: the source set is the folder above the image's
            return Path(image).parent.parent.name or path.stem

        return [(Path(image), None if mask == "Negative" else Path(mask),
                 "authentic" if mask == "Negative" else kind(image)) for image, mask in json.loads(path.read_text())]
    kinds = {row["image"]: row["kind"] for row in csv.DictReader((path / "kinds.csv").open())}
    items = [(image, path / "Gt" / image.name, kinds.get(image.name, "tampered"))
             for image in sorted((path / "Tp").iterdir())]
    return items + [(image, None, "authentic") for image in sorted((path / "Au").iterdir())]


def window(image: np.ndarray, mask: np.ndarray | None, side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A crop of at most side x side pixels (multiples of 8), centred on the mask's centroid when there is one."""
    H, W = image.shape[:2]
    h, w = min(side, H) // 8 * 8, min(side, W) // 8 * 8
    cy, cx = H // 2, W // 2
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        cy, cx = int(ys.mean()), int(xs.mean())
    top, left = int(np.clip(cy - h // 2, 0, H - h)), int(np.clip(cx - w // 2, 0, W - w))
    crop = (slice(top, top + h), slice(left, left + w))
    return image[crop], None if mask is None else mask[crop]


@torch.inference_mode()
def measure(front: CameraTrace, items, side: int) -> dict[str, list]:
    """kind -> per-image rows (z in - out or None, |z| of cells, cell labels or None, top-1 % mean |z|, z of cells)."""
    rows: dict[str, list] = {}
    for image_path, mask_path, kind in items:
        image = load_rgb(image_path)
        mask = load_mask(mask_path) if mask_path else None
        image, mask = window(image, mask, side)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        z = trace_cells(front(tensor))[0, 1].numpy()
        magnitude = np.abs(z).ravel()
        top = float(np.sort(magnitude)[-max(1, magnitude.size // 100):].mean())
        inside = None
        if mask is not None:
            share = mask.reshape(z.shape[0], 8, z.shape[1], 8).mean(axis=(1, 3))
            inside = (share >= 0.5).ravel()
        delta = (float(z.ravel()[inside].mean() - z.ravel()[~inside].mean())
                 if inside is not None and inside.any() and (~inside).any() else None)
        rows.setdefault(kind, []).append((delta, magnitude, inside, top, z.ravel()))
    return rows


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC of scores for the boolean labels (ties count half): metrics.image_auc on any 1-D arrays."""
    return image_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels).bool())


def summarise(name: str, rows: dict[str, list]) -> None:
    authentic = [row[3] for row in rows.get("authentic", [])]
    for kind, kind_rows in sorted(rows.items()):
        if kind == "authentic":
            continue
        deltas = [row[0] for row in kind_rows if row[0] is not None]
        cells = [row for row in kind_rows if row[2] is not None and row[2].any() and (~row[2]).any()]
        labels = np.concatenate([row[2] for row in cells]) if cells else None
        cell_auc = roc_auc(np.concatenate([row[1] for row in cells]), labels) if cells else float("nan")
        signed_auc = roc_auc(np.concatenate([row[4] for row in cells]), labels) if cells else float("nan")
        tops = [row[3] for row in kind_rows]
        image_auc = roc_auc(np.array(tops + authentic), np.array([1] * len(tops) + [0] * len(authentic))) \
            if authentic else float("nan")
        print(f"| {name} | {kind} | {len(kind_rows)} / {len(authentic)} | {np.median(deltas):+.2f} | "
              f"{signed_auc:.3f} | {cell_auc:.3f} | {image_auc:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("noiseprint", help="a `convert --noiseprint` folder or a LightNP student")
    parser.add_argument("sets", nargs="+", help="IMDL-BenCo JSON lists or Tp/Gt/Au folders with kinds.csv")
    parser.add_argument("--window", type=int, default=512)
    args = parser.parse_args()
    network, config = load_noiseprint(args.noiseprint)
    front = CameraTrace(config)
    front.network.load_state_dict(network.state_dict())
    print("| set | kind | tampered / authentic | z in - out (median) | cell AUC of z | cell AUC of abs(z) | "
          "image AUC (top 1 %) |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.sets:
        summarise(Path(spec).stem if spec.endswith(".json") else Path(spec).name, measure(front, read_set(spec),
                                                                                              args.window))


if __name__ == "__main__":
    main()
