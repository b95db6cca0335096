"""Generate docs/example.png: a procedural 'photo' with a spliced region, and its true mask.

No photograph is copied: the scene is drawn from noise, gradients and shapes, then a disc of texture from a
second, differently compressed scene is pasted in, the way a naive splice would be. Run from the repo root:
    python docs/make_example.py && diffiml localize docs/example.png --out docs/
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth sky-to-ground gradient with textured ground and a few soft shapes: (H, W, 3) uint8 RGB."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky, ground = rng.uniform(90, 230, 3), rng.uniform(40, 160, 3)
    image = (1 - y) * sky + y * ground + np.zeros((1, width, 1))
    texture = cv2.GaussianBlur(rng.normal(0, 18, (height, width)).astype(np.float32), (0, 0), 2.0)
    image += (y > 0.55) * texture[..., None]
    for _ in range(6):
        centre = (int(rng.integers(0, width)), int(rng.integers(height // 3, height)))
        axes = (int(rng.integers(20, 90)), int(rng.integers(15, 60)))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(30, 220, 3).tolist(), -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.2) + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def main(out_dir: Path = Path(__file__).resolve().parent) -> None:
    rng = np.random.default_rng(2026)
    height, width = 384, 512
    host = _jpeg(_scene(rng, height, width), 92)
    donor = _jpeg(_scene(rng, height, width), 60)
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (330, 250), (70, 55), 20, 0, 360, 255, -1)
    spliced = np.where(mask[..., None] > 0, np.roll(donor, (-40, 90), axis=(0, 1)), host)
    cv2.imwrite(str(out_dir / "example.png"), cv2.cvtColor(_jpeg(spliced, 90), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out_dir / "example_truth.png"), mask)


if __name__ == "__main__":
    main()
