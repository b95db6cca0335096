"""Draw weights/checkerboard_before_after.png: one zoomed crop of the probability map of docs/example.png as the
old decoder (stride-2 transposed convolutions) and the refit one (resize, then convolve) decode it.

Both checkpoints share the encoder and denoiser, and sampling is seeded, so the two maps differ only by their
decoders. Run from the repo root, with the checkpoint before the refit as the first argument:
    python docs/make_checkerboard_figure.py OLD_CHECKPOINT weights
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from diffiml_cli.models.mask_vae import checkerboard_share
from diffiml_cli.pipeline import load_localizer

DOCS = Path(__file__).resolve().parent
CROP = (slice(176, 304), slice(250, 410))  # rows, columns: the splice's edge in docs/example.png
ZOOM = 4


def _panel(probability: np.ndarray, label: str) -> np.ndarray:
    """probability (H, W) in [0, 1] -> the zoomed crop as a JET image (h*ZOOM + band, w*ZOOM, 3) uint8 BGR."""
    crop = (probability[CROP] * 255).round().astype(np.uint8)
    zoomed = cv2.resize(crop, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST)
    panel = cv2.applyColorMap(zoomed, cv2.COLORMAP_JET)
    band = np.full((28, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(band, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, panel])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--out", type=Path, default=DOCS.parent / "weights" / "checkerboard_before_after.png")
    args = parser.parse_args()
    panels = []
    for source, name in ((args.before, "before: transposed-convolution decoder"), (args.after, "after: resize decoder")):
        result = load_localizer(source, device="cpu", precision="fp32").predict(DOCS / "example.png", seed=0)
        share = checkerboard_share(torch.from_numpy(result.probability))
        panels.append(_panel(result.probability, f"{name}, 8-px share {share:.3f}"))
        print(f"{source}: checkerboard share {share:.4f}")
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    cv2.imwrite(str(args.out), np.hstack([panels[0], gap, panels[1]]))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
