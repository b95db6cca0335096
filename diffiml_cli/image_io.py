"""Reading and writing images and masks, robust to the files users actually have.

Every function here turns any decode or filesystem failure into a `DiffimlError` whose one-line
message starts with the path, so callers can report bad files one by one and carry on.
Decoding uses Pillow; encoding uses OpenCV (faster PNG writes).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageCms

from diffiml_cli.defaults import DEFAULT_MAX_PIXELS
from diffiml_cli.errors import DiffimlError
from diffiml_cli.files import atomic_write_bytes, sha256_of
from diffiml_cli.listing import IMAGE_EXTENSIONS, list_images  # noqa: F401 - re-exported: one module reads images



# EXIF orientation -> the transpose that undoes it; the same table as PIL.ImageOps.exif_transpose.
# Applied by hand so that `image_size` and `load_rgb` read the orientation the same way.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# Pillow's bomb guard is a module global. It is switched off only while a header is parsed (under a
# lock, so threads do not race), and `_open_image` applies the caller's limit to the size just read:
# one check, whose message gives the width and height.
_PIL_LIMIT_LOCK = threading.Lock()
_SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def _check_regular_file(path: Path) -> None:
    """Raise DiffimlError unless `path` is an existing regular file (a FIFO would block the decoder forever)."""
    if path.is_dir():
        raise DiffimlError(f"{path}: is a folder, not an image file")
    if not path.exists():
        reason = "broken symbolic link" if path.is_symlink() else "no such file"
        raise DiffimlError(f"{path}: {reason}")
    if not path.is_file():  # a FIFO would block the decoder forever
        raise DiffimlError(f"{path}: not a regular file (a FIFO, socket or device)")


@contextlib.contextmanager
def _open_image(path: str | Path, max_pixels: int, handle: BinaryIO | None = None) -> Iterator[Image.Image]:
    """Open `path` lazily (header only), refusing images above `max_pixels`; from `handle` (the same file,
    already open) when given.

    Any failure inside the `with` block, decoding included, becomes a DiffimlError naming the path.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        if path.stat().st_size == 0:
            raise DiffimlError(f"{path}: empty file (0 bytes)")
        with _PIL_LIMIT_LOCK:
            saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(handle if handle is not None else path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved_limit
    except DiffimlError:
        raise
    except Image.DecompressionBombError as error:
        raise _too_large(path, error, max_pixels) from None
    except Image.UnidentifiedImageError:
        image = _float_tiff(path, handle, max_pixels)  # Pillow reads no float RGB TIFF; OpenCV does
        if image is None:
            raise DiffimlError(f"{path}: not a recognised image file") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is the file's fault
        raise DiffimlError(f"{path}: cannot read image ({_one_line(error)})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise _too_large(path, (width, height), max_pixels)
        try:
            yield image
        except DiffimlError:
            raise
        except Image.DecompressionBombError:
            raise _too_large(path, (width, height), max_pixels) from None
        except Exception as error:  # noqa: BLE001 - truncated data, bad CRC, bad tiles, ...
            raise DiffimlError(f"{path}: cannot decode image ({_one_line(error)})") from None


def _too_large(path: Path, size: tuple[int, int] | Exception, max_pixels: int) -> DiffimlError:
    """The refusal message; `size` is (width, height) or Pillow's DecompressionBombError."""
    if isinstance(size, tuple):
        shown = f"{size[0]}x{size[1]} pixels"
    else:
        counted = re.search(r"\((\d+) pixels\)", str(size))
        shown = f"{counted.group(1)} pixels" if counted else "too many pixels"
    return DiffimlError(
        f"{path}: image is {shown}, above the limit of {max_pixels} pixels "
        "(a guard against decompression bombs; raise it with `max_pixels`)"
    )


def _png_chunk_problem(data: bytes) -> str | None:
    """The first corrupt chunk of a PNG file's bytes, or None.

    Pillow does not check the CRC of pixel (IDAT) chunks, and a flipped bit there may still
    inflate to a plausible image; a forensic tool should not analyse silently corrupted data.
    """
    position = 8  # after the signature
    while position + 12 <= len(data):
        length, = struct.unpack(">I", data[position:position + 4])
        end = position + 8 + length
        if end + 4 > len(data):
            return "PNG is truncated"
        chunk_type = data[position + 4:position + 8]
        stored, = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(data[position + 4:end]) != stored:
            return f"PNG chunk {chunk_type.decode('latin-1')!r} has a bad CRC (file is corrupt)"
        if chunk_type == b"IEND":
            return None
        position = end + 4
    return "PNG has no IEND chunk (file is truncated)"


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 read from the header only (1 when absent or unreadable)."""
    # Pillow's PNG getexif() decodes the whole file to look for an eXIf chunk after the pixels;
    # only the header chunks are consulted here so that reading a size stays cheap.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF is common and harmless: ignore it
        return 1
    return value if value in _ORIENTATION_TRANSPOSE else 1


def _scale_high_bit(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer or float single-channel image -> (H, W) uint8.

    I;16: scaled by 255/65535 (not clipped). I (32-bit): read as 16-bit when its values lie in
    0..65535 (how 16-bit PNG/TIFF often arrive), otherwise stretched min..max.
    F (float TIFF): taken as intensities in [0, 1] when every finite value lies there, otherwise
    stretched min..max; NaN and infinities become 0.
    """
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return np.round(values * 255.0).astype(np.uint8)
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if image.mode == "I" and (low < 0 or high > 65535):
        span = max(high - low, 1)
        return ((values - low) * 255 // span).astype(np.uint8)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _composite(color: np.ndarray, alpha: np.ndarray, background: int) -> np.ndarray:
    """Blend (H, W, C) uint8 over a flat `background` with (H, W) uint8 alpha."""
    weight = alpha.astype(np.float32)[..., None] / 255.0
    blended = color.astype(np.float32) * weight + float(background) * (1.0 - weight)
    return np.round(blended).astype(np.uint8)


def _apply_icc(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert to sRGB through an ICC profile; on any failure keep the image as is."""
    if not icc or image.mode not in ("RGB", "CMYK", "L"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(image, source, _SRGB_PROFILE, outputMode="RGB")
    except Exception:  # noqa: BLE001 - broken or mismatched profiles are ignored, not fatal
        return image


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a classic TIFF's first IFD (tags 256 and 257), or None when it is not one."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8 or struct.unpack(order + "H", data[2:4])[0] != 42:
        return None
    offset, = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        return None
    count, = struct.unpack(order + "H", data[offset:offset + 2])
    size: dict[int, int] = {}
    for index in range(min(count, 4096)):
        entry = data[offset + 2 + 12 * index:offset + 14 + 12 * index]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _float_tiff(path: Path, handle: BinaryIO | None, max_pixels: int) -> Image.Image | None:
    """A float (or other OpenCV-only) TIFF as a PIL RGB image, or None when it is not a TIFF OpenCV reads.

    The size in its header is checked against `max_pixels` before decoding. Float samples are taken as
    intensities in [0, 1] when every finite value lies there, else stretched min..max; NaN and infinities become
    0 (as `_scale_high_bit` does for one channel)."""
    if handle is not None:
        handle.seek(0)
        data = handle.read()
    else:
        data = path.read_bytes()
    size = _tiff_size(data)
    if size is None:
        return None
    if size[0] * size[1] > max_pixels:
        raise _too_large(path, size, max_pixels)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        return None
    values = np.nan_to_num(pixels[..., :3].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if pixels.dtype.kind == "f":
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    else:
        values = values / float(np.iinfo(pixels.dtype).max)
    rgb = np.round(values[..., ::-1] * 255.0).astype(np.uint8)  # OpenCV gives BGR
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    image.format = "TIFF"
    return image


def _check_png(path: str | Path, image: Image.Image, handle: BinaryIO | None = None) -> None:
    if image.format == "PNG":
        if handle is not None:
            handle.seek(0)
        problem = _png_chunk_problem(handle.read() if handle is not None else Path(path).read_bytes())
        if problem is not None:
            raise DiffimlError(f"{path}: {problem}")


def _decode_rgb(image: Image.Image, *, background: int, use_icc: bool) -> np.ndarray:
    """Decode an opened image to (H, W, 3) uint8 RGB (first frame, EXIF-oriented).

    Transparent pixels are composited over a flat grey level `background` (255 for photos,
    0 for masks so that transparent means "not manipulated").
    """
    # Read before load(): a PNG's eXIf chunk after the pixels is ignored here as in image_size.
    transpose = _ORIENTATION_TRANSPOSE.get(_orientation(image))
    image.load()  # an animation stays on its first frame, where Image.open leaves it
    icc = image.info.get("icc_profile") if use_icc else None
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        gray = _scale_high_bit(image)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        color = np.asarray(_apply_icc(Image.fromarray(rgba[..., :3]), icc).convert("RGB"))
        rgb = _composite(color, rgba[..., 3], background)
    else:
        converted = _apply_icc(image, icc)
        rgb = np.asarray(converted if converted.mode == "RGB" else converted.convert("RGB"))
    if transpose is not None:
        rgb = np.asarray(Image.fromarray(rgb).transpose(transpose))
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def load_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any supported image as (H, W, 3) uint8 RGB.

    Honours EXIF orientation, takes the first frame of animations, converts through an embedded
    ICC profile to sRGB when possible, scales 16-bit and float data to 8 bits (see
    `_scale_high_bit`) and composites transparency over white (how documents and most viewers
    show it; one fixed choice keeps results reproducible). PNG chunk CRCs are verified. Images
    above `max_pixels` are refused from their header, before any decoding.
    Raises DiffimlError("<path>: <reason>").
    """
    with _open_image(path, max_pixels) as image:
        rgb = _decode_rgb(image, background=255, use_icc=True)
        _check_png(path, image)
        return rgb


def load_rgb_hashed(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """`load_rgb`, and the SHA-256 (hex) of the very bytes decoded: one open file serves both, so the hash and
    the pixels cannot come from two versions of a file replaced in between. Raises DiffimlError."""
    path = Path(path)
    _check_regular_file(path)
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise DiffimlError(f"{path}: cannot read image ({_one_line(error)})") from None
    with handle:
        try:
            digest = sha256_of(handle)
        except OSError as error:
            raise DiffimlError(f"{path}: cannot read image ({_one_line(error)})") from None
        with _open_image(path, max_pixels, handle) as image:
            rgb = _decode_rgb(image, background=255, use_icc=True)
            _check_png(path, image, handle)
    return rgb, digest


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """An already opened PIL image -> (H, W, 3) uint8 RGB, converted exactly as `load_rgb` converts a file."""
    try:
        return _decode_rgb(image, background=255, use_icc=True)
    except Exception as error:  # noqa: BLE001 - a lazily opened image can fail to decode here
        raise DiffimlError(f"cannot decode the image ({_one_line(error)})") from None


MASK_FORMS = ("0/255", "colour", "label map", "empty")


def load_mask(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a ground-truth mask as (H, W) bool, True = manipulated (the rule of `load_mask_with_form`).
    Raises DiffimlError("<path>: <reason>")."""
    return load_mask_with_form(path, max_pixels=max_pixels)[0]


def load_mask_with_form(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Read a ground-truth mask as ((H, W) bool, True = manipulated; its form, one of MASK_FORMS).

    The rule, whatever the file's form: a pixel's value is its brightest channel (so red, or any colour, on
    black counts), after 16-bit and float masks are scaled to 8 bits and transparent pixels are taken as black.
    A mask whose brightest value is 128 or more is manipulated above 127 ("0/255" when gray, "colour" when its
    channels differ: JPEG noise in a 0/255 mask stays authentic); one whose brightest value lies in 1..127 is a
    label map (0/1, or small class ids), manipulated wherever it is not 0 ("label map"); all 0 is "empty".
    Raises DiffimlError("<path>: <reason>").
    """
    with _open_image(path, max_pixels) as image:
        rgb = _decode_rgb(image, background=0, use_icc=False)
        _check_png(path, image)
    value = rgb.max(axis=2)
    top = int(value.max()) if value.size else 0
    if top == 0:
        return np.zeros(value.shape, bool), "empty"
    if top < 128:
        return value > 0, "label map"
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return value > 127, "0/255" if gray else "colour"


def image_size(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as `load_rgb` would return it, read from the header only.

    Width and height are swapped for EXIF orientations 5-8. Raises DiffimlError on bad files,
    including images above `max_pixels`.
    """
    with _open_image(path, max_pixels) as image:
        width, height = image.size
        if _orientation(image) >= 5:
            return height, width
        return width, height


def save_png_atomic(path: str | Path, array: np.ndarray, *, mark: Callable[[bytes], bytes] | None = None) -> None:
    """Write (H, W) or (H, W, 3) RGB uint8 (or bool, written as 0/255) to `path` as PNG; `mark`, when given,
    rewrites the encoded bytes first (`batch.provenance.mark_png` adds the image's provenance chunk).

    The data go to a hidden temporary file in the same folder, which is then renamed over `path`,
    so a reader never sees a truncated file under the final name (`files.atomic_write`). Raises
    DiffimlError, chained to the OSError, when the file cannot be written.
    """
    path = Path(path)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got {array.shape} {array.dtype}")
    pixels = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels))
    if not ok:
        raise DiffimlError(f"{path}: PNG encoding failed")
    data = encoded.tobytes()
    try:
        atomic_write_bytes(path, mark(data) if mark else data)
    except OSError as error:  # chained, so a caller can tell a full disk (files.is_out_of_space) from the rest
        raise DiffimlError(f"{path}: cannot write ({error.strerror or _one_line(error)})") from error
