"""The evidence view `localize --noiseprint` writes: `<stem>_noiseprint.png` beside an image's other outputs.

The map is Noiseprint++'s, or a LightNP student's (models/noiseprint.py), computed at the image's own resolution
in tiles (nothing is resampled before the network), then contrast-stretched robustly (1st-99th percentile to
0-255, gray): a region whose camera or processing differs shows another texture or level. The report shows it in
the image's detail panel beside the overlay. Noiseprint++ is GRIP-UNINA's (TruFor, CVPR 2023): non-profit use
only; cite the authors when results are made public.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

SUFFIX = "_noiseprint.png"
MASK_SUFFIX = "_mask.png"


def noiseprint_png(mask_png: str | Path) -> Path | None:
    """The evidence view's path beside an image's `<stem>_mask.png`; None for any other name."""
    mask_png = Path(mask_png)
    if not mask_png.name.endswith(MASK_SUFFIX):
        return None
    return mask_png.with_name(mask_png.name[: -len(MASK_SUFFIX)] + SUFFIX)


def write_noiseprint_views(items: Iterable[tuple[str, str]], source: str | Path, *, tile: int = 512,
                           overwrite: bool = False, max_pixels: int | None = None,
                           on_done: Callable[[str, str | None], None] | None = None, allow_pickle: bool = False) -> int:
    """For each (image path, its `_mask.png` path), write `<stem>_noiseprint.png` (atomically) unless it exists
    and not `overwrite`. `source`: a noiseprint checkpoint (models.noiseprint.load_noiseprint; a .th file only
    with `allow_pickle`, read with torch.load(weights_only=True)). on_done(image, error or None) after each;
    returns the count written.
    An image that fails (unreadable, too large) is reported through on_done and the rest go on."""
    from diffiml_cli.errors import DiffimlError
    from diffiml_cli.image_io import load_rgb, save_png_atomic
    from diffiml_cli.models.noiseprint import extract_map, load_noiseprint, stretch_to_gray

    network, config = load_noiseprint(source, allow_pickle=allow_pickle)
    written = 0
    for image_path, mask_path in items:
        target = noiseprint_png(mask_path)
        if target is None or (target.exists() and not overwrite):
            continue
        try:
            image = load_rgb(image_path) if max_pixels is None else load_rgb(image_path, max_pixels=max_pixels)
            save_png_atomic(target, stretch_to_gray(extract_map(network, config, image, tile=tile)))
        except DiffimlError as error:
            if on_done:
                on_done(image_path, str(error))
            continue
        written += 1
        if on_done:
            on_done(image_path, None)
    return written
