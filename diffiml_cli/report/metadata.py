"""What a case report says about each input file: size, SHA-256, format, dimensions, EXIF camera fields and,
for JPEGs, the quality its quantization tables imply.

Everything is read from the file's header (Pillow's `Image.open` does not decode pixels) and its bytes are
hashed in fixed-size chunks, so a file of any size costs bounded memory. A file that cannot be read (missing,
not an image, corrupt header) still gives a `FileMetadata`, with whatever could be read and a note saying why
the rest is absent: one bad file never stops a report.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from diffiml_cli import files

EXIF_TEXT_LIMIT = 200  # characters kept of an EXIF text field; the rest of a hostile 64 KB string is noise

# EXIF tags shown in the report (TIFF 6.0 / Exif 2.32 numbers); DateTimeOriginal lives in the Exif sub-IFD.
_IFD0_TAGS = {"make": 0x010F, "model": 0x0110, "software": 0x0131, "datetime": 0x0132}
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003

# The IJG (libjpeg) example tables of the JPEG standard, Annex K.1 and K.2, in natural (row-major) order, which
# is the order Pillow's `image.quantization` uses.
_IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_IJG_CHROMINANCE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)


@dataclass
class FileMetadata:
    """One input file as the report describes it; a field is None when it could not be read (see `notes`).

    size: bytes; sha256: 64 lowercase hex digits; width, height: pixels of the stored image (before any EXIF
    rotation); exif: a subset of {"make", "model", "software", "datetime", "datetime_original"} -> text, empty
    when the file has no EXIF; jpeg_quality: 1..100, with `jpeg_tables_standard` telling whether the tables
    are exactly the IJG ones scaled (else the quality is the closest match, an approximation).
    """

    size: int | None = None
    sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    exif: dict[str, str] = field(default_factory=dict)
    jpeg_quality: int | None = None
    jpeg_tables_standard: bool | None = None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """A JSON-ready dict of the fields (the report's cache stores it)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> FileMetadata:
        """The inverse of `record`; unknown keys are ignored."""
        return cls(**{key: record[key] for key in cls.__dataclass_fields__ if key in record})


def sha256_of(path: Path) -> str:
    """SHA-256 of the file's bytes, read in pieces (bounded memory), as `localize` records it. Raises OSError."""
    with open(path, "rb") as handle:
        return files.sha256_of(handle)


def ijg_table(base: tuple[int, ...], quality: int) -> list[int]:
    """The IJG table `base` scaled for `quality` 1..100 as libjpeg's `jpeg_quality_scaling` and
    `jpeg_add_quant_table` (baseline: entries clamped to 1..255) do."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (value * scale + 50) // 100)) for value in base]


def estimate_jpeg_quality(quantization: dict[int, list[int]]) -> tuple[int, bool] | None:
    """(quality 1..100, exact) from a JPEG's quantization tables (Pillow's `image.quantization`: table id ->
    64 entries in natural order); None without a luminance table.

    No maintained Python package does this from the tables alone (ImageMagick's `identify -format %Q` does,
    as a separate program), so this is the usual small estimator: compare the luminance table (and the
    chrominance table when present) with the IJG standard tables scaled for each quality 1..100 and take the
    closest in summed absolute difference. `exact` is True when that match is perfect; encoders with their
    own tables (many cameras, Photoshop) get the nearest IJG quality, an approximation.
    """
    luminance = quantization.get(0)
    if luminance is None or len(luminance) != 64:
        return None
    chrominance = quantization.get(1)
    tables = [(list(luminance), _IJG_LUMINANCE)]
    if chrominance is not None and len(chrominance) == 64:
        tables.append((list(chrominance), _IJG_CHROMINANCE))
    best_quality, best_distance = 1, None
    for quality in range(1, 101):
        distance = sum(abs(a - b) for table, base in tables for a, b in zip(table, ijg_table(base, quality)))
        if best_distance is None or distance < best_distance:  # ties keep the lower quality
            best_quality, best_distance = quality, distance
    return best_quality, best_distance == 0


def _exif_text(value: object) -> str | None:
    """An EXIF value as one bounded text line; None when empty. Bytes are read as Latin-1 (never fails)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = str(value).replace("\x00", " ").strip()
    return text[:EXIF_TEXT_LIMIT] or None


def _read_exif(image: Image.Image) -> dict[str, str]:
    """The camera fields of the header's EXIF; {} when absent or unreadable."""
    # Pillow's PNG getexif() decodes the whole file to look for an eXIf chunk after the pixels; only the
    # header chunks are consulted (as `image_io._orientation` does) so that reading metadata stays cheap.
    if image.format == "PNG" and "exif" not in image.info:
        return {}
    try:
        exif = image.getexif()
        fields = {name: exif.get(tag) for name, tag in _IFD0_TAGS.items()}
        fields["datetime_original"] = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL)
    except Exception:  # noqa: BLE001 - malformed EXIF is common: the report then says "no EXIF"
        return {}
    texts = {name: _exif_text(value) for name, value in fields.items() if value is not None}
    return {name: text for name, text in texts.items() if text}


def _read_header(path: Path, metadata: FileMetadata) -> None:
    """Fill format, dimensions, EXIF and JPEG quality from the header, or add a note saying why not."""
    try:
        with Image.open(path) as image:
            metadata.format = image.format
            metadata.width, metadata.height = image.size
            metadata.exif = _read_exif(image)
            quantization = getattr(image, "quantization", None) if image.format == "JPEG" else None
            estimate = estimate_jpeg_quality(quantization) if quantization else None
            if estimate is not None:
                metadata.jpeg_quality, metadata.jpeg_tables_standard = estimate
    except Image.UnidentifiedImageError:
        metadata.notes.append("not a recognised image file")
    except Image.DecompressionBombError:
        metadata.notes.append("image too large to open safely")
    except Exception as error:  # noqa: BLE001 - a corrupt header is the file's fault; say so and carry on
        metadata.notes.append(f"cannot read image header ({_one_line(error)})")


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def read_metadata(path: Path) -> FileMetadata:
    """The metadata of the file at `path` (see `FileMetadata`); never raises for a bad or missing file.

    Pillow's warnings about damaged metadata are left to the caller (`build_report` silences them once, as
    `warnings.catch_warnings` is not safe to enter from several threads).
    """
    metadata = FileMetadata()
    try:
        status = os.stat(path)
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if os.path.islink(path) else ""
        metadata.notes.append(f"input file not found{broken}")
        return metadata
    except OSError as error:
        metadata.notes.append(f"cannot read the input file ({_one_line(error)})")
        return metadata
    if not Path(path).is_file():  # a FIFO would block the hash and the decoder forever
        metadata.notes.append("input is not a regular file")
        return metadata
    metadata.size = status.st_size
    try:
        metadata.sha256 = sha256_of(path)
    except OSError as error:
        metadata.notes.append(f"cannot read input bytes ({_one_line(error)})")
        return metadata
    _read_header(path, metadata)
    return metadata
