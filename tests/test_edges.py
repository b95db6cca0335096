"""mask_edges: a band exactly around mask boundaries, empty for trivial masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diffiml_cli.data.edges import from_signed, mask_edges, to_signed

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of the other value, on both sides; the frame is not a boundary."""
    as_uint8 = mask.astype(np.uint8)
    grown = cv2.dilate(as_uint8, _CROSS, borderType=cv2.BORDER_REPLICATE) > 0
    shrunk = cv2.erode(as_uint8, _CROSS, borderType=cv2.BORDER_REPLICATE) > 0
    return grown & ~shrunk


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def _shapes() -> list[np.ndarray]:
    rectangle = np.zeros((64, 64), bool)
    rectangle[10:40, 20:50] = True
    disc = np.zeros((64, 64), np.uint8)
    cv2.circle(disc, (30, 34), 17, 1, -1)
    touching_frame = np.zeros((64, 64), bool)
    touching_frame[:, :25] = True
    ring = disc.astype(bool) & ~(cv2.circle(np.zeros((64, 64), np.uint8), (30, 34), 8, 1, -1) > 0)
    return [rectangle, disc.astype(bool), touching_frame, ring]


@pytest.mark.parametrize("width", [3, 7])
@pytest.mark.parametrize("shape_number", range(4))
def test_edges_cover_boundary_and_stay_near_it(shape_number, width):
    mask = _shapes()[shape_number]
    edges = mask_edges(mask, width)
    boundary = _boundary(mask)
    assert edges.dtype == np.bool_ and edges.shape == mask.shape
    assert edges[boundary].all(), "every boundary pixel lies inside the band"
    # Canny marks pixels next to the step; the band reaches width // 2 further.
    assert not (edges & ~_grow(boundary, 1 + width // 2)).any()


def test_frame_is_not_an_edge():
    mask = _shapes()[2]  # left part, touching top, bottom and left sides of the frame
    edges = mask_edges(mask, 3)
    assert not edges[:, :20].any()
    assert edges[:, 24].all()


@pytest.mark.parametrize("value", [False, True])
def test_trivial_masks_have_no_edges(value):
    assert not mask_edges(np.full((32, 48), value), 7).any()


def test_width_one_is_bare_contour_and_bad_width_rejected():
    mask = _shapes()[0]
    assert mask_edges(mask, 1).sum() < mask_edges(mask, 7).sum()
    with pytest.raises(ValueError):
        mask_edges(mask, 0)


def test_signed_round_trip():
    values = np.array([0.0, 1.0, 0.25])
    assert to_signed(values).tolist() == [-1.0, 1.0, -0.5]
    assert torch.equal(from_signed(to_signed(torch.tensor([0.0, 1.0]))), torch.tensor([0.0, 1.0]))


@settings(max_examples=50, deadline=None)
@given(
    mask=arrays(np.bool_, st.tuples(st.integers(4, 24), st.integers(4, 24))),
    width=st.integers(1, 9),
)
def test_edges_lie_inside_dilated_boundary(mask, width):
    edges = mask_edges(mask, width)
    boundary = _boundary(mask)
    assert not (edges & ~_grow(boundary, 1 + width // 2)).any()
    assert edges.any() == boundary.any()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([16, 33, 64]), width=st.integers(1, 9))
def test_random_masks_and_their_edges_are_binary(seed, size, width):
    """Training targets are binary and deterministic in the seed; their edges lie on the boundary band,
    the same for a mask and its complement."""
    from diffiml_cli.data.masks import random_mask

    mask = random_mask(np.random.default_rng(seed), size)
    assert mask.dtype == np.bool_ and mask.shape == (size, size)
    assert np.array_equal(mask, random_mask(np.random.default_rng(seed), size))
    edges = mask_edges(mask, width)
    assert edges.dtype == np.bool_ and edges.shape == mask.shape
    assert not (edges & ~_grow(_boundary(mask), 1 + width // 2)).any()
    assert np.array_equal(edges, mask_edges(~mask, width))
