"""One-sentence definitions of every number `evaluate` reports, keyed as in metrics.json."""

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
    "image_auc": "ROC AUC of the detection score (the detection_score localize writes; the image score for "
    "a checkpoint without a detector) for separating tampered from authentic images (Mann-Whitney U, ties "
    "counted half). Chance is 0.5.",
    "max_score_auc": "Reference: ROC AUC of the image score (the maximum of the probability map), the "
    "detector a localizer has without one.",
    "image_accuracy": "Share of images whose label is predicted correctly, calling an image tampered "
    "when its detection score >= the calibrated threshold (its image score >= 0.5 without a detector).",
    "image_balanced_accuracy": "Mean of the share of tampered images called tampered and the share of "
    "authentic images called authentic, at the threshold of image_accuracy. Chance is 0.5.",
    "trivial_f1": "Baseline: per-image pixel F1 of predicting every pixel manipulated, 2P/(2P+N) for "
    "P manipulated and N authentic pixels, averaged over tampered images.",
    "pixel_f1_all": "Mean over every image, authentic ones counted: a tampered image scores its pixel F1 at "
    "0.5, an authentic image 1 when no pixel is predicted manipulated and 0 otherwise.",
    "image_score": "max of the probability map",
    "detection_score": "the detector's score of the whole image in [0, 1]; the verdict is manipulated at or "
    "above the checkpoint's calibrated threshold",
    "n_tampered": "Number of evaluated images whose mask has at least one manipulated pixel.",
    "n_authentic": "Number of evaluated images whose mask is empty.",
    "seconds_per_image": "Mean wall-clock seconds of inference per image, excluding file reading.",
}
"""Metric key -> one-sentence definition, for every number a report shows."""
