"""A training set small enough for tests: images with a bright square whose position is the mask."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


class Squares(Dataset):
    """`length` items of {"image" (3, size, size) in [0.2, 0.9], "mask" and "edge" (1, size, size) in {0, 1},
    "index"}: a 24 px square 0.5 brighter than its noisy ground, learnable from the condition alone."""

    def __init__(self, length: int = 16, size: int = 64) -> None:
        rng = np.random.default_rng(0)
        self.items = []
        for index in range(length):
            image = rng.uniform(0.2, 0.4, (3, size, size)).astype(np.float32)
            mask = np.zeros((1, size, size), np.float32)
            y, x = rng.integers(0, size - 24, 2)
            image[:, y : y + 24, x : x + 24] += 0.5
            mask[:, y : y + 24, x : x + 24] = 1
            edge = cv2.dilate(cv2.Canny((mask[0] * 255).astype(np.uint8), 100, 200), np.ones((3, 3), np.uint8))[None] > 0
            self.items.append({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask),
                               "edge": torch.from_numpy(edge.astype(np.float32)), "index": index})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]
