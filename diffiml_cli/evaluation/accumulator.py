"""Per-image metrics collected over a dataset and summarised into its report's numbers (keys of
`evaluation.definitions.METRIC_DEFINITIONS`); see `metrics.py` for the conventions."""

from __future__ import annotations

import math

import torch

from diffiml_cli.errors import DiffimlError
from diffiml_cli.metrics import (check_pair, f1_from_counts, balanced_accuracy, binarize, counts_over_thresholds,
                                 false_positive_rate, image_accuracy, image_auc, pixel_auc, pixel_f1, pixel_iou,
                                 threshold_grid)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


class MetricAccumulator:
    """Collects per-image numbers over a dataset and summarises them (keys of METRIC_DEFINITIONS).

    Full maps are not kept: each image contributes a few scalars, plus (tampered images only)
    its TP/FP/FN counts at every threshold of the oracle grid, 3 x T int64.

    Args:
        thresholds: (T,) float grid for oracle_f1; default `threshold_grid()` (0, 0.01, ..., 1).
        image_threshold: decision threshold for image_accuracy and image_balanced_accuracy (`score >= it`),
            on the detection scores when they are given (the calibrated threshold), else on the image scores.
    """

    def __init__(self, thresholds: torch.Tensor | None = None, image_threshold: float = 0.5):
        self.thresholds = threshold_grid() if thresholds is None else thresholds.double()
        self.image_threshold = image_threshold
        self._records: list[dict] = []
        self._threshold_counts: list[torch.Tensor] = []  # (3, T) int64 per tampered image

    def add(
        self,
        prob: torch.Tensor,
        target: torch.Tensor,
        image_score: float,
        *,
        threshold: float = 0.5,
        detection_score: float | None = None,
        predicted: torch.Tensor | None = None,
    ) -> None:
        """Record one image.

        Args:
            prob: (H, W) float in [0, 1], already at the mask's original resolution.
            target: (H, W) bool, True = manipulated pixel.
            image_score: the maximum of the probability map, higher = more likely manipulated.
            threshold: pixel threshold for F1, IoU and false-positive rates (`prob >= threshold`).
            detection_score: the detector's score in [0, 1], when the model has one; it then decides the
                image-level metrics.
            predicted: (H, W) bool, the mask as shipped (emptied by a gate), instead of `prob >= threshold`.
        """
        if prob.ndim != 2:
            raise ValueError(f"prob must be (H, W), got shape {tuple(prob.shape)}")
        check_pair(prob, target)
        if not bool(((prob >= 0) & (prob <= 1)).all()):
            raise DiffimlError("probability map has values outside [0, 1] (or NaN)")
        tampered = bool(target.any())
        pred = binarize(prob, threshold) if predicted is None else predicted
        n_pos = int(target.sum())
        n_neg = target.numel() - n_pos
        record = {
            "tampered": tampered,
            "image_score": float(image_score),
            "detection_score": None if detection_score is None else float(detection_score),
            "pixel_f1": pixel_f1(pred, target),
            "pixel_iou": pixel_iou(pred, target),
            "pixel_auc": pixel_auc(prob, target),
            "pixel_fpr": false_positive_rate(pred, target),
            "predicted_share": pred.double().mean().item(),
            "any_predicted": bool(pred.any()),
            "trivial_f1": 2 * n_pos / (2 * n_pos + n_neg) if tampered else math.nan,
            "pixel_f1_all": pixel_f1(pred, target) if tampered else float(not bool(pred.any())),
            "height": int(target.shape[0]),
            "width": int(target.shape[1]),
        }
        self._records.append(record)
        if tampered:
            self._threshold_counts.append(
                torch.stack(counts_over_thresholds(prob, target, self.thresholds))
            )

    def per_image(self) -> list[dict]:
        """One dict per added image, in order (copies; scalar values, nan where undefined)."""
        return [dict(r) for r in self._records]

    def entries(self) -> list[tuple[dict, torch.Tensor | None]]:
        """What this accumulator holds per image, in order: (record, (3, T) oracle counts or None), for
        `extend` in another process (torchrun ranks gather their entries on rank 0)."""
        counts = iter(self._threshold_counts)
        return [(dict(r), next(counts) if r["tampered"] else None) for r in self._records]

    def extend(self, entries: list[tuple[dict, torch.Tensor | None]]) -> None:
        """Add images recorded by other accumulators (see `entries`), in the given order."""
        for record, counts in entries:
            self._records.append(dict(record))
            if record["tampered"]:
                self._threshold_counts.append(counts)

    def _oracle(self) -> tuple[float, float]:
        if not self._threshold_counts:
            return math.nan, math.nan
        counts = torch.stack(self._threshold_counts)  # (N_tampered, 3, T)
        mean_f1 = f1_from_counts(counts[:, 0], counts[:, 1], counts[:, 2]).mean(dim=0)  # (T,)
        best = int(torch.argmax(mean_f1))  # first maximum, i.e. the smallest threshold on ties
        return mean_f1[best].item(), self.thresholds[best].item()

    def summary(self) -> dict[str, float]:
        """Dataset-level numbers; every key is defined in METRIC_DEFINITIONS.

        Returns:
            pixel_f1, pixel_iou, pixel_auc, oracle_f1, oracle_threshold, trivial_f1 (means over
            tampered images), authentic_pixel_fpr, authentic_any_rate (over authentic images),
            image_auc (of the detection scores when every image has one, else of the image scores),
            max_score_auc (always of the image scores), image_accuracy and image_balanced_accuracy (at
            `image_threshold`, on the scores image_auc ranks), pixel_f1_all (authentic images counted),
            n_tampered, n_authentic. A mean over no images is nan.
        """
        tampered = [r for r in self._records if r["tampered"]]
        authentic = [r for r in self._records if not r["tampered"]]
        max_scores = torch.tensor([r["image_score"] for r in self._records], dtype=torch.float64)
        detected = [r.get("detection_score") for r in self._records]
        scores = (torch.tensor(detected, dtype=torch.float64) if detected and None not in detected else max_scores)
        labels = torch.tensor([r["tampered"] for r in self._records], dtype=torch.bool)
        oracle_f1, oracle_threshold = self._oracle()
        return {
            "pixel_f1": _nanmean([r["pixel_f1"] for r in tampered]),
            "pixel_iou": _nanmean([r["pixel_iou"] for r in tampered]),
            "pixel_auc": _nanmean([r["pixel_auc"] for r in tampered]),
            "oracle_f1": oracle_f1,
            "oracle_threshold": oracle_threshold,
            "trivial_f1": _nanmean([r["trivial_f1"] for r in tampered]),
            "authentic_pixel_fpr": _nanmean([r["pixel_fpr"] for r in authentic]),
            "authentic_any_rate": _nanmean([float(r["any_predicted"]) for r in authentic]),
            "pixel_f1_all": _nanmean([r["pixel_f1_all"] for r in self._records]),
            "image_auc": image_auc(scores, labels),
            "max_score_auc": image_auc(max_scores, labels),
            "image_accuracy": image_accuracy(scores, labels, self.image_threshold),
            "image_balanced_accuracy": balanced_accuracy(scores, labels, self.image_threshold),
            "n_tampered": len(tampered),
            "n_authentic": len(authentic),
        }
