"""The four PNGs `localize` writes per image, where they go, and how a partial set is undone."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from diffiml_cli.batch.provenance import mark_png
from diffiml_cli.image_io import save_png_atomic
from diffiml_cli.pipeline import LocalizationResult

OUTPUT_KINDS = ("mask", "prob", "overlay", "uncertainty")


def input_root(images: Sequence[Path]) -> Path:
    """The deepest folder that holds every input; outputs mirror the inputs' folders below it."""
    parents = [str(p.parent.resolve()) for p in images]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def output_paths(image: Path, root: Path, out_dir: Path) -> dict[str, Path]:
    """`<out>/<relative folder>/<stem>_<kind>.png` for each output kind; sub-folders mirror the input."""
    try:
        relative = image.parent.resolve().relative_to(root)
    except ValueError:
        relative = Path()
    return {kind: out_dir / relative / f"{image.stem}_{kind}.png" for kind in OUTPUT_KINDS}


def overlay_heatmap(image: np.ndarray, probability: np.ndarray, mask: np.ndarray,
                    caption: str | None = None) -> np.ndarray:
    """A JET heatmap blended on the photo where the model sees manipulation, with the mask outlined, and an
    optional caption (the detection score and verdict) in a band at the top.

    image: (H, W, 3) uint8 RGB; probability: (H, W) float in [0, 1]; mask: (H, W) bool -> (H, W, 3) uint8.
    A gated image (its mask emptied) is shown without heat: pass a zero probability.
    """
    heat = cv2.applyColorMap(np.round(probability * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    alpha = (0.7 * probability)[..., None]  # opaque where manipulated, the photo itself where not
    blended = image.astype(np.float32) * (1.0 - alpha) + heat * alpha
    overlay = np.round(blended).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), thickness)
    if caption:
        _caption(overlay, caption)
    return overlay


def _caption(overlay: np.ndarray, text: str) -> None:
    """Draw `text` (ASCII) in white on a dark band across the top of `overlay`, in place, scaled to its width."""
    height, width = overlay.shape[:2]
    scale = max(0.3, min(1.2, width / 900))
    text_width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, (width - 8) / max(text_width, 1))  # narrow images get smaller letters
    (_, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = min(height, text_height + baseline + 8)
    overlay[:band] = (overlay[:band].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(overlay, text, (4, band - baseline - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def caption_of(result: LocalizationResult) -> str | None:
    """"detection 0.83: manipulated" (or without the verdict when uncalibrated); None without a detector."""
    if result.detection_score is None:
        return None
    verdict = f": {result.verdict}" if result.verdict else ""
    gated = " (mask emptied)" if result.gated else ""
    return f"detection {result.detection_score:.2f}{verdict}{gated}"


def write_outputs(image: np.ndarray, result: LocalizationResult, paths: dict[str, Path], source_sha256: str) -> None:
    """Write the four PNGs of one image (each atomically), each marked with the SHA-256 of the input they were
    computed from (`provenance.mark_png`). On any failure the ones already written are removed (a partial set
    never stays under final names) and the DiffimlError propagates."""
    written: list[Path] = []
    probability = result.probability
    shown = np.zeros_like(probability) if result.gated else probability
    encoded = {
        "mask": result.mask.astype(np.uint8) * 255,
        "prob": np.round(probability * 255).astype(np.uint8),
        # The member std is at most 0.5, so 255 means maximal disagreement between ensemble members.
        "uncertainty": np.round(np.clip(result.uncertainty * 510, 0, 255)).astype(np.uint8),
        "overlay": overlay_heatmap(image, shown, result.mask, caption_of(result)),
    }
    try:
        for kind in OUTPUT_KINDS:
            save_png_atomic(paths[kind], encoded[kind], mark=functools.partial(mark_png, source_sha256=source_sha256,
                                                                               kind=kind))
            written.append(paths[kind])
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
