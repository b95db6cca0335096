"""Small JPEG thumbnails of an image's original, overlay and uncertainty map, kept under `OUT_DIR/thumbs/`.

A thumbnail is written once (atomically) and reused by later reports while its source file keeps its
signature (see `cache.py`); its name is a hash of the kind and the source's absolute path, so any file name,
however hostile, maps to a plain ASCII name. Only files under `thumbs/` are ever written or deleted here;
the inputs and the localize outputs are only read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from diffiml_cli.errors import DiffimlError
from diffiml_cli.files import atomic_write_bytes, require_inside
from diffiml_cli.image_io import DEFAULT_MAX_PIXELS, pil_to_rgb
from diffiml_cli.report.cache import StatCache, signature

THUMBS_DIR = "thumbs"
THUMB_SIDE = 160  # pixels on the long side: sharp at the 80 px the table shows, on a 2x display
JPEG_QUALITY = 85
THUMB_KINDS = ("original", "overlay", "uncertainty")
INDEX_NAME = "index.json"


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail file under `thumbs/` and its size in pixels, or (path None) the note saying why none."""

    path: Path | None
    width: int = 0
    height: int = 0
    note: str | None = None


def thumbnail_name(kind: str, source: Path) -> str:
    """`<24 hex>_<kind>.jpg`, from the kind and the source's absolute path (bytes kept exactly)."""
    key = f"{kind}\0{os.path.abspath(source)}".encode("utf-8", "surrogateescape")
    return f"{hashlib.sha256(key).hexdigest()[:24]}_{kind}.jpg"


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def decode_small(path: Path, side: int = THUMB_SIDE) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8 RGB, oriented and converted as `localize` reads it, decoded at
    the smallest JPEG DCT scale that still has `2 * side` pixels (a fraction of a full decode's time).
    Raises DiffimlError naming the problem (not an image, too large, corrupt)."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > DEFAULT_MAX_PIXELS:
                raise DiffimlError(f"too large to decode safely ({image.width}x{image.height} pixels)")
            image.draft("RGB", (2 * side, 2 * side))  # no effect for formats other than JPEG
            return pil_to_rgb(image)
    except DiffimlError:
        raise
    except Image.UnidentifiedImageError:
        raise DiffimlError("not a recognised image file") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is the file's fault
        raise DiffimlError(f"cannot read image ({_one_line(error)})") from None


def encode_thumbnail(rgb: np.ndarray, side: int = THUMB_SIDE) -> tuple[bytes, int, int]:
    """(H, W, 3) uint8 RGB -> (JPEG bytes, width, height) with the long side at most `side`."""
    height, width = rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else rgb
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DiffimlError("JPEG encoding of the thumbnail failed")
    return data.tobytes(), size[0], size[1]


class ThumbnailStore:
    """The `thumbs/` folder of one output folder and its index of what each thumbnail was made from."""

    def __init__(self, out_dir: Path, *, side: int = THUMB_SIDE) -> None:
        """Create `out_dir/thumbs/` when needed. Raises DiffimlError when it cannot be created, or when it (or
        its index) is a symbolic link or leads outside `out_dir`."""
        self.folder = Path(out_dir) / THUMBS_DIR
        self.side = side
        require_inside(Path(out_dir), self.folder / INDEX_NAME)  # a planted link: its files are not ours to touch
        try:
            self.folder.mkdir(exist_ok=True)
        except OSError as error:
            raise DiffimlError(f"{self.folder}: cannot create the thumbnail folder ({_one_line(error)})") from None
        self.index = StatCache(self.folder / INDEX_NAME, salt={"side": side, "quality": JPEG_QUALITY})

    def get(self, kind: str, source: Path) -> Thumbnail:
        """The thumbnail of `source` (kind: one of THUMB_KINDS), made now or reused from an earlier report.

        A source that is missing or cannot be decoded gives a Thumbnail with a note (remembered, so it is not
        decoded again until it changes). Raises DiffimlError only when the thumbnail cannot be written.
        """
        current = signature(source)
        if current is None:
            return Thumbnail(None, note="file not found")
        name = thumbnail_name(kind, source)
        path = self.folder / name
        known = self.index.lookup(name, current)
        if known is not None and (known.get("note") or path.is_file()):
            return Thumbnail(None if known.get("note") else path, known.get("width", 0), known.get("height", 0),
                             known.get("note"))
        try:
            data, width, height = encode_thumbnail(decode_small(source, self.side), self.side)
        except DiffimlError as error:
            self.index.store(name, current, {"note": str(error)})
            return Thumbnail(None, note=str(error))
        try:
            atomic_write_bytes(path, data)
        except OSError as error:
            raise DiffimlError(f"{path}: cannot write the thumbnail ({_one_line(error)})") from None
        self.index.store(name, current, {"width": width, "height": height})
        return Thumbnail(path, width, height)

    def save(self) -> None:
        """Write the index and delete the thumbnails of sources no longer in the report (only files that the
        index names, inside `thumbs/`). Raises DiffimlError when the index cannot be written."""
        for name in self.index.dropped():
            if os.sep not in name and name.endswith(".jpg"):
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()
        try:
            self.index.save()
        except OSError as error:
            raise DiffimlError(f"{self.index.path}: cannot write the thumbnail index ({_one_line(error)})") from None
