"""Metrics against hand-computed values, plus property tests."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffiml_cli.errors import DiffimlError
from diffiml_cli.pipeline import to_original_size
from diffiml_cli.evaluation.accumulator import MetricAccumulator
from diffiml_cli.evaluation.definitions import METRIC_DEFINITIONS
from diffiml_cli.metrics import (
    balanced_accuracy,
    binarize,
    counts_over_thresholds,
    f1_over_thresholds,
    false_positive_rate,
    image_accuracy,
    image_auc,
    pixel_auc,
    pixel_f1,
    pixel_iou,
    threshold_grid,
)


def left_half(size: int = 4) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:, : size // 2] = True
    return mask


def top_half(size: int = 4) -> torch.Tensor:
    return left_half(size).T.contiguous()


# Hand-computed examples.


def test_perfect_prediction():
    target = left_half()
    assert pixel_f1(target.clone(), target) == 1.0
    assert pixel_iou(target.clone(), target) == 1.0
    assert false_positive_rate(target.clone(), target) == 0.0


def test_empty_prediction_on_tampered_image():
    target = left_half()
    empty = torch.zeros_like(target)
    assert pixel_f1(empty, target) == 0.0
    assert pixel_iou(empty, target) == 0.0


def test_half_overlap():
    # Left half vs top half of 4x4: TP = 4 (top-left), FP = 4 (top-right), FN = 4 (bottom-left).
    pred, target = top_half(), left_half()
    assert pixel_f1(pred, target) == pytest.approx(8 / 16) == 0.5
    assert pixel_iou(pred, target) == pytest.approx(4 / 12)
    assert false_positive_rate(pred, target) == pytest.approx(4 / 8)


def test_f1_and_iou_undefined_on_authentic_image():
    target = torch.zeros(4, 4, dtype=torch.bool)
    assert math.isnan(pixel_f1(torch.zeros_like(target), target))
    assert math.isnan(pixel_iou(torch.zeros_like(target), target))


def test_float_prediction_is_rejected():
    with pytest.raises(ValueError, match="bool"):
        pixel_f1(torch.rand(4, 4), left_half())


def test_authentic_image_not_counted_in_f1_average():
    acc = MetricAccumulator()
    target = left_half()
    acc.add(target.float(), target, image_score=1.0)
    authentic = torch.zeros(4, 4, dtype=torch.bool)
    acc.add(torch.zeros(4, 4), authentic, image_score=0.0)
    summary = acc.summary()
    assert summary["pixel_f1"] == 1.0
    assert summary["pixel_iou"] == 1.0
    assert summary["n_tampered"] == 1 and summary["n_authentic"] == 1
    assert summary["authentic_pixel_fpr"] == 0.0
    assert summary["authentic_any_rate"] == 0.0
    assert summary["image_auc"] == 1.0 and summary["image_accuracy"] == 1.0
    per_image = acc.per_image()
    assert [r["tampered"] for r in per_image] == [True, False]
    assert math.isnan(per_image[1]["pixel_f1"])


def test_authentic_image_with_quarter_predicted():
    prob = torch.zeros(4, 4)
    prob[:2, :2] = 0.9  # 4 of 16 pixels
    authentic = torch.zeros(4, 4, dtype=torch.bool)
    assert false_positive_rate(binarize(prob), authentic) == 0.25
    acc = MetricAccumulator()
    acc.add(prob, authentic, image_score=0.9)
    summary = acc.summary()
    assert summary["authentic_pixel_fpr"] == 0.25
    assert summary["authentic_any_rate"] == 1.0
    assert summary["n_tampered"] == 0 and math.isnan(summary["pixel_f1"])
    assert math.isnan(summary["oracle_f1"]) and math.isnan(summary["image_auc"])
    assert summary["image_accuracy"] == 0.0  # score 0.9 >= 0.5 calls it tampered


def test_prediction_at_other_resolution_is_resized_to_mask():
    prob = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    up = torch.from_numpy(to_original_size(prob, 4, 4))
    # Bilinear, pixel centres aligned: source x = (x_out + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
    assert torch.allclose(up, torch.tensor([1.0, 0.75, 0.25, 0.0]).expand(4, 4))
    assert pixel_f1(binarize(up), left_half()) == 1.0
    assert np.array_equal(to_original_size(prob, 2, 2), prob.numpy())
    down = torch.from_numpy(to_original_size(left_half(8).float(), 4, 4))  # area averaging when shrinking
    assert torch.equal(binarize(down), left_half(4))


def test_balanced_accuracy_weighs_both_classes_alike():
    scores = torch.tensor([0.9, 0.8, 0.2, 0.1, 0.1, 0.1, 0.1, 0.7])
    labels = torch.tensor([True, True, True, False, False, False, False, False])
    # 2 of 3 tampered called tampered, 4 of 5 authentic called authentic.
    assert balanced_accuracy(scores, labels, 0.5) == pytest.approx(0.5 * (2 / 3 + 4 / 5))
    assert math.isnan(balanced_accuracy(scores[3:7], labels[3:7]))


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(DiffimlError, match="resize"):
        pixel_f1(torch.zeros(2, 2, dtype=torch.bool), left_half())
    with pytest.raises(DiffimlError):
        MetricAccumulator().add(torch.zeros(2, 2), left_half(), image_score=0.0)


def test_out_of_range_probability_is_rejected():
    with pytest.raises(DiffimlError, match=r"\[0, 1\]"):
        MetricAccumulator().add(torch.full((4, 4), 1.5), left_half(), image_score=0.0)


def test_image_auc_and_accuracy_on_known_ranking():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1], dtype=torch.bool)
    # Positive-negative pairs: (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, *) ok -> 3 / 4.
    assert image_auc(scores, labels) == 0.75
    # Predicted tampered (>= 0.5): only 0.8 -> correct on 0.1, 0.4, 0.8 -> 3 / 4.
    assert image_accuracy(scores, labels) == 0.75
    assert math.isnan(image_auc(scores, torch.ones(4, dtype=torch.bool)))


def test_image_accuracy_threshold_is_inclusive():
    assert image_accuracy(torch.tensor([0.5]), torch.tensor([True])) == 1.0


def test_pixel_auc_with_ties():
    prob = torch.tensor([[0.3, 0.2], [0.2, 0.9]])
    target = torch.tensor([[False, True], [False, True]])
    # Positives {0.2, 0.9} vs negatives {0.3, 0.2}: 0 + 0.5 (tie) + 1 + 1 over 4 pairs.
    assert pixel_auc(prob, target) == 0.625
    assert pixel_auc(target.float(), target) == 1.0
    assert math.isnan(pixel_auc(prob, torch.zeros(2, 2, dtype=torch.bool)))


def test_trivial_f1_for_quarter_mask():
    target = torch.zeros(4, 4, dtype=torch.bool)
    target[0] = True  # P = 4, N = 12: all-ones F1 = 2P / (2P + N) = 8 / 20
    assert pixel_f1(torch.ones_like(target), target) == 0.4
    # Threshold 0 with `>=` marks every pixel, so the grid's first F1 is the trivial one.
    assert f1_over_thresholds(torch.rand(4, 4), target, threshold_grid())[0].item() == 0.4
    acc = MetricAccumulator()
    acc.add(torch.zeros(4, 4), target, image_score=0.0)
    assert acc.summary()["trivial_f1"] == 0.4


def test_oracle_finds_smallest_best_threshold():
    target = left_half()
    prob = torch.where(target, torch.tensor(0.3), torch.tensor(0.1))
    acc = MetricAccumulator()
    acc.add(prob, target, image_score=0.3)
    summary = acc.summary()
    assert summary["pixel_f1"] == 0.0  # nothing reaches 0.5
    assert summary["oracle_f1"] == 1.0
    # At 0.10 the negatives (exactly 0.1) are included by `>=`; 0.11 is the first perfect threshold.
    assert summary["oracle_threshold"] == pytest.approx(0.11)


def test_counts_over_thresholds_by_hand():
    prob = torch.tensor([[0.2, 0.6], [0.8, 0.4]])
    target = torch.tensor([[False, True], [True, False]])
    tp, fp, fn = counts_over_thresholds(prob, target, torch.tensor([0.0, 0.4, 0.6, 0.9]))
    assert tp.tolist() == [2, 2, 2, 0]
    assert fp.tolist() == [2, 1, 0, 0]
    assert fn.tolist() == [0, 0, 0, 2]


def test_definitions_cover_every_summary_key():
    acc = MetricAccumulator()
    acc.add(left_half().float(), left_half(), image_score=1.0)
    assert set(acc.summary()) <= set(METRIC_DEFINITIONS)
    assert {"image_score", "seconds_per_image"} <= set(METRIC_DEFINITIONS)
    assert "ORACLE" in METRIC_DEFINITIONS["oracle_f1"]


# Property tests. Probabilities are quantised to tenths so that ties and values exactly at the
# threshold occur, which exercises the `>=` convention.


@st.composite
def prob_and_target(draw):
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    prob = torch.randint(0, 11, (h, w), generator=g).float() / 10
    target = torch.rand(h, w, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    return prob, target


SETTINGS = settings(max_examples=50, deadline=None)


@SETTINGS
@given(prob_and_target())
def test_f1_iou_bounds_and_order(pair):
    prob, target = pair
    pred = binarize(prob)
    f1, iou = pixel_f1(pred, target), pixel_iou(pred, target)
    if not target.any():
        assert math.isnan(f1) and math.isnan(iou)
        return
    assert 0.0 <= iou <= f1 <= 1.0


@SETTINGS
@given(prob_and_target(), st.integers(0, 2**31 - 1))
def test_f1_symmetric(pair, seed):
    _, target = pair
    other = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    if target.any() and other.any():
        assert pixel_f1(other, target) == pixel_f1(target, other)


@SETTINGS
@given(prob_and_target())
def test_f1_over_thresholds_matches_pixel_f1(pair):
    prob, target = pair
    grid = threshold_grid()
    curve = f1_over_thresholds(prob, target, grid)
    for i in (0, 7, 30, 50, 70, 100):
        expected = pixel_f1(binarize(prob, grid[i].item()), target)
        got = curve[i].item()
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


@SETTINGS
@given(prob_and_target())
def test_pixel_auc_matches_pairwise_definition(pair):
    prob, target = pair
    pos, neg = prob[target], prob[~target]
    auc = pixel_auc(prob, target)
    if pos.numel() == 0 or neg.numel() == 0:
        assert math.isnan(auc)
        return
    diff = pos[:, None] - neg[None, :]
    pairwise = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    assert auc == pytest.approx(pairwise)


@SETTINGS
@given(st.lists(prob_and_target(), min_size=1, max_size=5))
def test_oracle_f1_at_least_f1_at_half(pairs):
    acc = MetricAccumulator()
    for prob, target in pairs:
        acc.add(prob, target, image_score=prob.max().item())
    summary = acc.summary()
    if summary["n_tampered"] == 0:
        assert math.isnan(summary["oracle_f1"])
        return
    assert summary["oracle_f1"] >= summary["pixel_f1"] - 1e-12
    assert summary["oracle_f1"] >= summary["trivial_f1"] - 1e-12
    assert 0.0 <= summary["pixel_iou"] <= summary["pixel_f1"] <= 1.0


@SETTINGS
@given(prob_and_target())
def test_perfect_prediction_scores_one_and_its_complement_zero(pair):
    _, target = pair
    if not target.any():
        assert math.isnan(pixel_f1(target, target)) and false_positive_rate(target, target) == 0.0
        return
    assert pixel_f1(target, target) == 1.0 and pixel_iou(target, target) == 1.0
    assert pixel_f1(~target, target) == 0.0 and pixel_iou(~target, target) == 0.0


@SETTINGS
@given(prob_and_target(), st.integers(0, 2**31 - 1))
def test_f1_ignores_where_the_pixels_are(pair, seed):
    """F1 counts pixels: the same permutation of prediction and target does not change it."""
    prob, target = pair
    order = torch.randperm(target.numel(), generator=torch.Generator().manual_seed(seed))
    pred = binarize(prob)
    shuffled = pixel_f1(pred.flatten()[order].reshape(pred.shape), target.flatten()[order].reshape(target.shape))
    original = pixel_f1(pred, target)
    assert (math.isnan(original) and math.isnan(shuffled)) or shuffled == pytest.approx(original)


@SETTINGS
@given(st.lists(prob_and_target(), min_size=1, max_size=4))
def test_accumulator_of_perfect_predictions(pairs):
    acc = MetricAccumulator()
    for _, target in pairs:
        acc.add(target.float(), target, image_score=float(target.any()))
    summary = acc.summary()
    if summary["n_tampered"]:
        assert summary["pixel_f1"] == 1.0 and summary["oracle_f1"] == 1.0
    if summary["n_authentic"]:
        assert summary["authentic_pixel_fpr"] == 0.0
