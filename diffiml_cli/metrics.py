"""Manipulation-localization metrics, following the field's protocol as implemented by IMDL-BenCo.

Pixel metrics are computed per image at the mask's ORIGINAL resolution (the pipeline resizes every
prediction back, `pipeline.to_original_size`) and then averaged over images, as IMDL-BenCo and IML-ViT
do; they are not pooled over all pixels of a dataset.

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

from diffiml_cli.errors import DiffimlError

__all__ = [
    "balanced_accuracy",
    "binarize",
    "check_pair",
    "f1_from_counts",
    "counts_over_thresholds",
    "f1_over_thresholds",
    "false_positive_rate",
    "image_accuracy",
    "image_auc",
    "pixel_auc",
    "pixel_f1",
    "pixel_iou",
    "threshold_grid",
]




def check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise unless `pred` and the bool mask `target` have the same shape."""
    if pred.shape != target.shape:
        raise DiffimlError(
            f"prediction of shape {tuple(pred.shape)} does not match mask of shape "
            f"{tuple(target.shape)}; resize the prediction to the mask's resolution first"
        )
    if target.dtype != torch.bool:
        raise ValueError(f"target must be a bool mask, got {target.dtype}")


def _confusion(pred_binary: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) pixel counts of two same-shape bool maps."""
    check_pair(pred_binary, target)
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
    check_pair(prob, target)
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


def balanced_accuracy(scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean of the true-positive rate on tampered and the true-negative rate on authentic images, an image
    called tampered when `score >= threshold`; nan when a class is missing. Chance level is 0.5.

    Args:
        scores: (N,) float. labels: (N,) bool, True = tampered.
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ")
    called = binarize(scores, threshold)
    labels = labels.bool()
    if not labels.any() or labels.all():
        return math.nan
    return 0.5 * (called[labels].double().mean().item() + (~called[~labels]).double().mean().item())


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
    check_pair(prob, target)
    t = thresholds.to(prob.dtype).contiguous()
    pos = torch.sort(prob[target]).values
    neg = torch.sort(prob[~target]).values
    tp = pos.numel() - torch.searchsorted(pos, t, side="left")
    fp = neg.numel() - torch.searchsorted(neg, t, side="left")
    return tp, fp, pos.numel() - tp


def f1_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Per-threshold pixel F1 (T,) float64 from TP, FP, FN counts (T,); nan where the target is empty."""
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
    return f1_from_counts(*counts_over_thresholds(prob, target, thresholds))
