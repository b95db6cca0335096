"""Manipulation-localization metrics, following the field's protocol as implemented by IMDL-BenCo.

Pixel metrics are computed per image at the mask's ORIGINAL resolution (resize the prediction with
`resize_probability` first) and then averaged over images, as IMDL-BenCo and IML-ViT do; they are
not pooled over all pixels of a dataset.

Threshold convention, used by every function here: a pixel (or image) is predicted manipulated
when `prob >= threshold`, compared in the probability's own dtype. IMDL-BenCo uses `prob > threshold`;
the two differ only for values exactly equal to the threshold. With `>=`, threshold 0 marks every
pixel, so the 0..1 oracle grid includes the trivial all-manipulated prediction.

Tampered image: its mask has at least one positive pixel. Authentic image: an all-false mask.
F1 and IoU are undefined (nan) on authentic images and are averaged over tampered images only;
false positives on authentic images are reported separately (`authentic_pixel_fpr`,
`authentic_any_rate`).
"""

import math

import torch
import torch.nn.functional as F

from diffiml_cli.errors import DiffimlError

__all__ = [
    "METRIC_DEFINITIONS",
    "MetricAccumulator",
    "binarize",
    "counts_over_thresholds",
    "f1_over_thresholds",
    "false_positive_rate",
    "image_accuracy",
    "image_auc",
    "pixel_auc",
    "pixel_f1",
    "pixel_iou",
    "resize_probability",
    "threshold_grid",
]

METRIC_DEFINITIONS: dict[str, str] = {
    "pixel_f1": "Per-image pixel F1 = 2TP/(2TP+FP+FN) with pixels predicted manipulated where "
    "prob >= 0.5, at the mask's original resolution, averaged over tampered images only.",
    "pixel_iou": "Per-image pixel IoU = TP/(TP+FP+FN) at threshold 0.5, averaged over tampered "
    "images only.",
    "pixel_auc": "Per-image pixel ROC AUC of the probability map against the mask (Mann-Whitney U, "
    "ties counted half), averaged over tampered images that also have authentic pixels.",
    "oracle_f1": "ORACLE, uses the labels: mean per-image pixel F1 over tampered images at the single "
    "dataset-wide threshold from the 0, 0.01, ..., 1 grid that maximises it; an upper bound, not a "
    "deployable score.",
    "oracle_threshold": "ORACLE: the dataset-wide threshold at which oracle_f1 is attained (smallest "
    "on ties).",
    "authentic_pixel_fpr": "Mean over authentic images of the share of pixels predicted manipulated "
    "(prob >= 0.5), i.e. each authentic image's pixel false-positive rate.",
    "authentic_any_rate": "Share of authentic images with at least one pixel predicted manipulated "
    "(prob >= 0.5).",
    "image_auc": "ROC AUC of the per-image score for separating tampered from authentic images "
    "(Mann-Whitney U, ties counted half).",
    "image_accuracy": "Share of images whose label is predicted correctly, calling an image tampered "
    "when its image score >= 0.5.",
    "trivial_f1": "Baseline: per-image pixel F1 of predicting every pixel manipulated, 2P/(2P+N) for "
    "P manipulated and N authentic pixels, averaged over tampered images.",
    "pixel_f1_all": "Mean over every image, authentic ones counted: a tampered image scores its pixel F1 at "
    "0.5, an authentic image 1 when no pixel is predicted manipulated and 0 otherwise.",
    "image_score": "max of the probability map",
    "n_tampered": "Number of evaluated images whose mask has at least one manipulated pixel.",
    "n_authentic": "Number of evaluated images whose mask is empty.",
    "seconds_per_image": "Mean wall-clock seconds of inference per image, excluding file reading.",
}
"""Metric key -> one-sentence definition, for every number a report shows."""


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise DiffimlError(
            f"prediction of shape {tuple(pred.shape)} does not match mask of shape "
            f"{tuple(target.shape)}; resize the prediction to the mask's resolution first"
        )
    if target.dtype != torch.bool:
        raise ValueError(f"target must be a bool mask, got {target.dtype}")


def _confusion(pred_binary: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) pixel counts of two same-shape bool maps."""
    _check_pair(pred_binary, target)
    if pred_binary.dtype != torch.bool:
        # A float map here would silently count every non-zero probability as predicted.
        raise ValueError(f"pred_binary must be bool (see `binarize`), got {pred_binary.dtype}")
    pred = pred_binary
    tp = int((pred & target).sum())
    fp = int((pred & ~target).sum())
    fn = int((~pred & target).sum())
    return tp, fp, fn, target.numel() - tp - fp - fn


def binarize(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Predicted-manipulated map: `prob >= threshold`.

    Args:
        prob: any shape, float in [0, 1].
        threshold: compared in `prob`'s dtype.

    Returns:
        bool tensor, same shape as `prob`.
    """
    return prob >= threshold


def pixel_f1(pred_binary: torch.Tensor, target: torch.Tensor) -> float:
    """Pixel F1 of one image, 2TP / (2TP + FP + FN).

    Undefined on an authentic image (empty target): returns nan so that callers average over
    tampered images only. IMDL-BenCo's `PixelF1` instead scores such an image 0 even when the
    prediction is perfectly clean (IMDL-BenCo issue #46), which drags dataset F1 down in
    proportion to the authentic share.

    Args:
        pred_binary: (H, W) bool, predicted manipulated pixels.
        target: (H, W) bool, ground-truth manipulated pixels.

    Returns:
        F1 in [0, 1]; 0 for an empty prediction on a tampered image; nan when `target` is empty.
    """
    tp, fp, fn, _ = _confusion(pred_binary, target)
    if tp + fn == 0:
        return math.nan
    return 2 * tp / (2 * tp + fp + fn)


def pixel_iou(pred_binary: torch.Tensor, target: torch.Tensor) -> float:
    """Pixel IoU (Jaccard) of one image, TP / (TP + FP + FN).

    Args:
        pred_binary: (H, W) bool.
        target: (H, W) bool.

    Returns:
        IoU in [0, 1]; nan when `target` is empty (undefined for authentic images, as for F1).
    """
    tp, fp, fn, _ = _confusion(pred_binary, target)
    if tp + fn == 0:
        return math.nan
    return tp / (tp + fp + fn)


def false_positive_rate(pred_binary: torch.Tensor, target: torch.Tensor) -> float:
    """Pixel false-positive rate of one image, FP / (FP + TN).

    On an authentic image this is the share of pixels predicted manipulated.

    Args:
        pred_binary: (H, W) bool.
        target: (H, W) bool.

    Returns:
        FPR in [0, 1]; nan when every pixel is manipulated (no negatives).
    """
    _, fp, _, tn = _confusion(pred_binary, target)
    if fp + tn == 0:
        return math.nan
    return fp / (fp + tn)


def _rank_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC via the Mann-Whitney U statistic with average ranks for ties.

    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the rank sum of the positives;
    equals P(score_pos > score_neg) + P(score_pos = score_neg) / 2. Float64 keeps rank sums exact
    up to ~10^8 elements.
    """
    s = scores.reshape(-1).double()
    y = labels.reshape(-1).bool()
    if not torch.isfinite(s).all():
        raise ValueError("scores must be finite to rank them")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    sorted_s, order = torch.sort(s)
    _, group, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    # Tied values share the mean of the 1-based ranks their group spans: last - (count - 1) / 2.
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2
    rank_sum_pos = mean_rank[group][y[order]].sum().item()
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pixel_auc(prob: torch.Tensor, target: torch.Tensor) -> float:
    """Pixel ROC AUC of one image, threshold-free.

    Args:
        prob: (H, W) float in [0, 1].
        target: (H, W) bool.

    Returns:
        AUC in [0, 1]; nan when the image has only one class of pixel.
    """
    _check_pair(prob, target)
    return _rank_auc(prob, target)


def image_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image-level ROC AUC of detection scores.

    Args:
        scores: (N,) float, higher = more likely manipulated.
        labels: (N,) bool, True = tampered.

    Returns:
        AUC in [0, 1]; nan when only one class is present.
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ")
    return _rank_auc(scores, labels)


def image_accuracy(scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> float:
    """Image-level accuracy, an image predicted tampered when `score >= threshold`.

    Args:
        scores: (N,) float.
        labels: (N,) bool, True = tampered.
        threshold: decision threshold on the scores.

    Returns:
        Accuracy in [0, 1]; nan when N = 0.
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ")
    if scores.numel() == 0:
        return math.nan
    return (binarize(scores, threshold) == labels.bool()).double().mean().item()


def threshold_grid(steps: int = 101) -> torch.Tensor:
    """Evenly spaced thresholds 0, 1/(steps-1), ..., 1.

    Returns:
        (steps,) float64; the default is 0, 0.01, ..., 1.
    """
    return torch.arange(steps, dtype=torch.float64) / (steps - 1)


def counts_over_thresholds(
    prob: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel TP, FP, FN of one image at every threshold, in one sort.

    Each class's probabilities are sorted once; `searchsorted(side="left")` gives how many lie
    below each threshold, so the counts at `prob >= t` cost O(P log P + T log P) instead of T passes.

    Args:
        prob: (H, W) float in [0, 1].
        target: (H, W) bool.
        thresholds: (T,) float, any order; compared in `prob`'s dtype, as `binarize` does.

    Returns:
        tp, fp, fn: each (T,) int64.
    """
    _check_pair(prob, target)
    t = thresholds.to(prob.dtype).contiguous()
    pos = torch.sort(prob[target]).values
    neg = torch.sort(prob[~target]).values
    tp = pos.numel() - torch.searchsorted(pos, t, side="left")
    fp = neg.numel() - torch.searchsorted(neg, t, side="left")
    return tp, fp, pos.numel() - tp


def _f1_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    # nan where the target is empty (tp + fn == 0): F1 is undefined there, see `pixel_f1`.
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    f1 = 2 * tp / (2 * tp + fp + fn)
    return torch.where(tp + fn > 0, f1, torch.full_like(f1, math.nan))


def f1_over_thresholds(
    prob: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """Pixel F1 of one image at every threshold (prediction `prob >= t`).

    Args:
        prob: (H, W) float in [0, 1].
        target: (H, W) bool.
        thresholds: (T,) float, e.g. `threshold_grid()`.

    Returns:
        (T,) float64 in [0, 1]; all nan when `target` is empty.
    """
    return _f1_from_counts(*counts_over_thresholds(prob, target, thresholds))


def resize_probability(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a probability map to the ground-truth mask's original resolution.

    Uses `align_corners=False` (pixel centres aligned) and antialiasing, which matters only when
    shrinking. Convex interpolation weights keep values in [0, 1].

    Args:
        prob: (h, w) float in [0, 1].
        size: (H, W) target resolution.

    Returns:
        (H, W) float, same dtype as `prob`; `prob` itself when the size already matches.
    """
    if prob.ndim != 2:
        raise ValueError(f"prob must be (h, w), got shape {tuple(prob.shape)}")
    size = (int(size[0]), int(size[1]))
    if tuple(prob.shape) == size:
        return prob
    # float16/bfloat16 bilinear is not implemented on every CPU build; float64 is kept as is.
    work_dtype = torch.float64 if prob.dtype == torch.float64 else torch.float32
    out = F.interpolate(
        prob[None, None].to(work_dtype), size=size, mode="bilinear", align_corners=False,
        antialias=True,
    )
    # The triangle filter's weights are non-negative, but their normalisation can round a
    # value an ulp past 1.
    return out[0, 0].clamp_(0.0, 1.0).to(prob.dtype)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


class MetricAccumulator:
    """Collects per-image numbers over a dataset and summarises them (keys of METRIC_DEFINITIONS).

    Full maps are not kept: each image contributes a few scalars, plus (tampered images only)
    its TP/FP/FN counts at every threshold of the oracle grid, 3 x T int64.

    Args:
        thresholds: (T,) float grid for oracle_f1; default `threshold_grid()` (0, 0.01, ..., 1).
        image_threshold: decision threshold on image scores for image_accuracy (`score >= it`).
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
    ) -> None:
        """Record one image.

        Args:
            prob: (H, W) float in [0, 1], already at the mask's original resolution.
            target: (H, W) bool, True = manipulated pixel.
            image_score: detection score, higher = more likely manipulated.
            threshold: pixel threshold for F1, IoU and false-positive rates (`prob >= threshold`).
        """
        if prob.ndim != 2:
            raise ValueError(f"prob must be (H, W), got shape {tuple(prob.shape)}")
        _check_pair(prob, target)
        if not bool(((prob >= 0) & (prob <= 1)).all()):
            raise DiffimlError("probability map has values outside [0, 1] (or NaN)")
        tampered = bool(target.any())
        pred = binarize(prob, threshold)
        n_pos = int(target.sum())
        n_neg = target.numel() - n_pos
        record = {
            "tampered": tampered,
            "image_score": float(image_score),
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

    def _oracle(self) -> tuple[float, float]:
        if not self._threshold_counts:
            return math.nan, math.nan
        counts = torch.stack(self._threshold_counts)  # (N_tampered, 3, T)
        mean_f1 = _f1_from_counts(counts[:, 0], counts[:, 1], counts[:, 2]).mean(dim=0)  # (T,)
        best = int(torch.argmax(mean_f1))  # first maximum, i.e. the smallest threshold on ties
        return mean_f1[best].item(), self.thresholds[best].item()

    def summary(self) -> dict[str, float]:
        """Dataset-level numbers; every key is defined in METRIC_DEFINITIONS.

        Returns:
            pixel_f1, pixel_iou, pixel_auc, oracle_f1, oracle_threshold, trivial_f1 (means over
            tampered images), authentic_pixel_fpr, authentic_any_rate (over authentic images),
            image_auc, image_accuracy (over all images), n_tampered, n_authentic. A mean over
            no images is nan.
        """
        tampered = [r for r in self._records if r["tampered"]]
        authentic = [r for r in self._records if not r["tampered"]]
        scores = torch.tensor([r["image_score"] for r in self._records], dtype=torch.float64)
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
            "image_accuracy": image_accuracy(scores, labels, self.image_threshold),
            "n_tampered": len(tampered),
            "n_authentic": len(authentic),
        }
