"""Print the markdown tables of docs/replication.md from the outputs of docs/replicate.sh.

    python docs/replication_table.py runs/replication

Reads OUT/eval/<arm>.json (a sweep document over sampling seeds, or, for the deterministic discriminative
arm, a plain metrics document), OUT/eval/diffiml-steps.json, and OUT/eval/<arm>-seed0/per_image.csv for the
paired per-image differences against the default DiffIML arm.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

ARMS = ("diffiml", "discriminative", "no-edge", "prior-0", "prior-0.3")
DATASETS = ("casia", "synthetic")
METRICS = (("pixel_f1", "F1@0.5"), ("oracle_f1", "ORACLE F1"), ("authentic_pixel_fpr", "Au pixel FPR"))


def _cell(value: dict | float) -> str:
    """mean ± std (sem) over seeds, or a single number."""
    if isinstance(value, dict):
        return f"{value['mean']:.3f} ± {value['std']:.3f} ({value['sem']:.3f})"
    return f"{value:.3f}"


def _arm_metrics(document: dict) -> dict[str, dict]:
    """dataset -> metric -> summary (sweep with one cell) or number (plain evaluate)."""
    if "cells" in document:
        return document["cells"][0]["datasets"]
    return {name: entry["metrics"] for name, entry in document["datasets"].items()}


def _per_image_f1(path: Path) -> dict[tuple[str, str], float]:
    with path.open() as handle:
        return {(row["dataset"], row["image"]): float(row["pixel_f1"])
                for row in csv.DictReader(handle) if row["tampered"] == "True"}


def main(out: str) -> None:
    root = Path(out) / "eval"
    print("| arm | " + " | ".join(f"{d} {label}" for d in DATASETS for _, label in METRICS) + " | s/img |")
    print("|---" * (2 + len(DATASETS) * len(METRICS)) + "|")
    for arm in ARMS:
        path = root / f"{arm}.json"
        if not path.exists():
            continue
        metrics = _arm_metrics(json.loads(path.read_text()))
        seconds = metrics["casia"]["seconds_per_image"]
        seconds = seconds["mean"] if isinstance(seconds, dict) else seconds
        cells = [_cell(metrics[d][key]) for d in DATASETS for key, _ in METRICS]
        print(f"| {arm} | " + " | ".join(cells) + f" | {seconds:.3f} |")

    steps_path = root / "diffiml-steps.json"
    if steps_path.exists():
        print("\n| DDIM steps | N | " + " | ".join(f"{d} {label}" for d in DATASETS for _, label in METRICS[:2]) + " | s/img |")
        print("|---" * (3 + len(DATASETS) * 2) + "|")
        for cell in json.loads(steps_path.read_text())["cells"]:
            values = [_cell(cell["datasets"][d][key]) for d in DATASETS for key, _ in METRICS[:2]]
            print(f"| {cell['steps']} | {cell['ensemble']} | " + " | ".join(values)
                  + f" | {cell['datasets']['casia']['seconds_per_image']['mean']:.3f} |")

    reference_path = root / "diffiml-seed0" / "per_image.csv"
    if reference_path.exists():
        reference = _per_image_f1(reference_path)
        print("\n| arm − diffiml (seed 0) | " + " | ".join(f"{d} ΔF1 ± SE (n)" for d in DATASETS) + " |")
        print("|---" * (1 + len(DATASETS)) + "|")
        for arm in ARMS[1:]:
            path = root / f"{arm}-seed0" / "per_image.csv"
            if not path.exists():
                continue
            other = _per_image_f1(path)
            cells = []
            for dataset in DATASETS:
                diffs = [other[key] - reference[key] for key in reference if key[0] == dataset and key in other]
                mean = sum(diffs) / len(diffs)
                se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
                cells.append(f"{mean:+.3f} ± {se:.3f} ({len(diffs)})")
            print(f"| {arm} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
