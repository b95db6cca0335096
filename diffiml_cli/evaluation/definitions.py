"""One-sentence definitions of every number `evaluate` reports, keyed as in metrics.json, the columns of its
reports and the robustness protocol's levels: the text `diffiml evaluate --help` shows, so nothing heavy here."""

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

# Column order of every report; all are keys of METRIC_DEFINITIONS.
METRIC_KEYS = (
    "n_tampered", "n_authentic", "pixel_f1", "pixel_f1_all", "pixel_iou", "pixel_auc", "oracle_f1",
    "oracle_threshold", "trivial_f1", "authentic_pixel_fpr", "authentic_any_rate", "image_auc", "max_score_auc",
    "image_accuracy", "image_balanced_accuracy", "seconds_per_image",
)
COUNT_KEYS = ("n_tampered", "n_authentic")
# Each dataset's oracle picks its own threshold, so a mean of thresholds would describe no prediction.
NOT_AVERAGED = ("oracle_threshold",)
AVERAGE_DEFINITION = (
    "Mean over datasets of each per-dataset value (datasets where it is undefined are left out); "
    "n_tampered and n_authentic are totals; oracle_threshold is not averaged."
)

PERTURBATION_LEVELS: dict[str, tuple[int, ...]] = {
    "jpeg": (100, 90, 80, 70, 60, 50),  # quality; lower = stronger
    "blur": (3, 7, 11, 15, 19, 23),  # square kernel side in pixels
    "noise": (3, 7, 11, 15, 19, 23),  # variance in squared 0..255 gray levels
}
"""Perturbation kind -> its levels, mildest first, as in the paper's robustness figure."""

PERTURBATION_DEFINITIONS: dict[str, str] = {
    "jpeg": "JPEG round trip through OpenCV (cv2.imencode, 4:2:0 chroma) at the given quality.",
    "blur": "cv2.GaussianBlur with a k x k kernel and sigma 0, i.e. sigma = 0.3 ((k - 1) / 2 - 1) + 0.8.",
    "noise": "Additive zero-mean Gaussian noise of the given variance on the 0..255 scale (std = sqrt(variance)), "
    "rounded and clipped to 0..255; seeded per (seed, image index), so it is reproducible.",
}
"""Perturbation kind -> one-sentence definition, for reports."""

LEVEL_NAMES = {"jpeg": "quality", "blur": "kernel", "noise": "variance"}

# The metrics a sweep summarises over seeds.
SWEEP_METRICS = ("pixel_f1", "pixel_f1_all", "oracle_f1", "authentic_pixel_fpr", "authentic_any_rate", "image_auc",
                 "max_score_auc", "image_balanced_accuracy", "seconds_per_image")
