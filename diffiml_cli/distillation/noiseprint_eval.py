"""How well a LightNP student reproduces Noiseprint++ on held-out photos, beside maps that cost almost nothing.

For every held-out photo (`noiseprint_data.split_photos`), as it is and as one seeded post-processed variant, the
per-image Pearson correlation of a map with the teacher's whole-image map, over every pixel. The baselines:

- `laplacian`: the 3x3 Laplacian of the luma, a fixed high-pass filter;
- `srm-kv`: the 5x5 "KV" SRM residual of the luma (Fridrich and Kodovsky 2012), the high-pass TruFor-era
  detectors start from;
- `linear-9x9`: the best linear 9x9 filter of the RGB photo, least-squares fitted to the teacher's maps of the
  first training bank chunks (never the held-out photos): what a one-layer student could reach.

A fixed filter's sign is arbitrary, so the fixed filters are scored by |r|; the student and the fitted filter by r.
Each r is over the whole image and over its interior (BAND pixels at each border left out): near the borders the
teacher's map is dominated by its zero padding, and a student that misses that loses much of its whole-image r.
The teacher's held-out maps are cached in OUT/held-out/ (one safetensors file per photo and variant).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from diffiml_cli.distillation.noiseprint_data import cv_gray, photo_variant, split_photos
from diffiml_cli.files import atomic_write_bytes
from diffiml_cli.models.noiseprint import NoiseprintConfig, extract_map, flops_per_pixel, load_noiseprint

EVAL_SEED = 1_000_003  # the held-out variants' seed, apart from any training seed
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
SRM_KV = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
                   [-1, 2, -2, 2, -1]], np.float32) / 12.0
LINEAR_SIDE = 9
BAND = 17  # the interior scores leave out this many pixels at each border: the teacher's zero-padding reach


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays over all their elements (0 when either is constant)."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def high_pass(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(H, W) float32 response of an (H, W, 3) uint8 image's luma to a fixed 2-D kernel, zero-padded."""
    gray = torch.from_numpy(cv_gray(image))[None, None]
    weight = torch.from_numpy(kernel)[None, None]
    return F.conv2d(gray, weight, padding=kernel.shape[0] // 2)[0, 0].numpy()


def fit_linear_filter(images: list[np.ndarray], maps: list[np.ndarray], *, samples: int = 3000,
                      seed: int = 0) -> torch.Tensor:
    """Least-squares (1, 3, 9, 9) filter plus bias, packed as (3 * 81 + 1,), mapping RGB in [0, 1] to the maps."""
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    half = LINEAR_SIDE // 2
    for image, target in zip(images, maps):
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
        patches = F.unfold(x, LINEAR_SIDE, padding=half)[0].T  # (H * W, 243)
        chosen = torch.from_numpy(rng.choice(patches.shape[0], min(samples, patches.shape[0]), replace=False))
        rows.append(patches[chosen])
        targets.append(torch.from_numpy(target.astype(np.float32).ravel())[chosen])
    design = torch.cat(rows).double()
    design = torch.cat([design, torch.ones(design.shape[0], 1, dtype=torch.float64)], 1)
    return torch.linalg.lstsq(design, torch.cat(targets).double()[:, None]).solution[:, 0].float()


def linear_map(image: np.ndarray, packed: torch.Tensor) -> np.ndarray:
    """(H, W) float32 map of the fitted filter `packed` (see `fit_linear_filter`)."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
    weight = packed[:-1].reshape(1, 3, LINEAR_SIDE, LINEAR_SIDE)
    return (F.conv2d(x, weight, padding=LINEAR_SIDE // 2)[0, 0] + packed[-1]).numpy()


def _held_out_item(cache: Path, teacher, photo: Path, index: int, variant: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, teacher map) of one held-out photo variant, computed once and cached."""
    from safetensors.numpy import load_file, save_file

    path = cache / f"{index:04d}-{variant}.safetensors"
    if path.is_file():
        tensors = load_file(path)
        return tensors["image"], tensors["map"]
    image, _ = photo_variant(photo, EVAL_SEED, index, variant)
    target = extract_map(*teacher(), image)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"image": image, "map": target}, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)
    return image, target


def _summary(values: list[float]) -> dict[str, float]:
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "mean": float(np.mean(values))}


def evaluate_student(settings, student: Path, out: Path, *, limit: int | None = None) -> dict:
    """Score `student` (a noiseprint checkpoint) and the baselines on the held-out photos (`limit`: that many,
    evenly spaced over the sorted list); writes
    OUT/evaluation.json and returns {"photos", "rows": [{"name", "flops_per_pixel", "as_is", "post_processed"}],
    "per_image": [...]} with each part's median, quartiles and mean of r."""
    from diffiml_cli.distillation.noiseprint_distill import Bank

    network, config = load_noiseprint(student)
    teacher_cache: list = []

    def teacher():  # loaded only when a held-out map is not cached yet
        if not teacher_cache:
            teacher_cache.extend(load_noiseprint(settings.teacher, allow_pickle=True))
        return teacher_cache

    bank = Bank(out / "bank", settings)
    bank.load(4)
    packed = fit_linear_filter(bank.images, [m.astype(np.float32) for m in bank.maps])
    held_out = split_photos(settings.photos).held_out
    chosen = np.unique(np.round(np.linspace(0, len(held_out) - 1, min(limit or len(held_out), len(held_out)))))
    photos = [(int(index), held_out[int(index)]) for index in chosen]  # evenly spaced: BSDS500 and Kodak alike
    names = ("lightnp", "linear-9x9", "laplacian", "srm-kv")
    parts = ("as_is", "as_is_interior", "post_processed", "post_processed_interior")
    scores: dict[str, dict[str, list[float]]] = {name: {part: [] for part in parts} for name in names}
    per_image = []
    for index, photo in photos:
        for variant, part in ((0, "as_is"), (1, "post_processed")):
            image, target = _held_out_item(out / "held-out", teacher, photo, index, variant)
            maps = {"lightnp": extract_map(network, config, image), "linear-9x9": linear_map(image, packed)}
            maps["laplacian"], maps["srm-kv"] = high_pass(image, LAPLACIAN), high_pass(image, SRM_KV)
            b = BAND
            r = {name: pearson_r(m, target) for name, m in maps.items()}
            inner = {name: pearson_r(m[b:-b, b:-b], target[b:-b, b:-b]) for name, m in maps.items()}
            for name in ("laplacian", "srm-kv"):  # a fixed filter's sign is arbitrary
                r[name], inner[name] = abs(r[name]), abs(inner[name])
            for name in names:
                scores[name][part].append(r[name])
                scores[name][part + "_interior"].append(inner[name])
            per_image.append({"photo": photo.name, "variant": part, **r,
                              **{f"{name}_interior": value for name, value in inner.items()}})
    flops = {"lightnp": flops_per_pixel(config), "linear-9x9": 2.0 * 3 * LINEAR_SIDE ** 2, "laplacian": 2.0 * 9,
             "srm-kv": 2.0 * 25}
    result = {"photos": len(photos), "student": str(student), "student_config": dataclasses.asdict(config),
              "teacher_flops_per_pixel": flops_per_pixel(NoiseprintConfig()),
              "interior_band": BAND,
              "rows": [{"name": name, "flops_per_pixel": flops[name]} | {part: _summary(scores[name][part])
                                                                        for part in parts} for name in names],
              "per_image": per_image}
    atomic_write_bytes(out / "evaluation.json", (json.dumps(result, indent=1) + "\n").encode())
    return result
