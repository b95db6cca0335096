"""A corpus of bad and odd inputs, generated at test time (no binary files in git), and what diffiml must do.

Each table maps a short kind id to a recipe and the expected behaviour; `test_bad_input_corpus.py` runs every
kind through the real CLI and asserts exactly these exit codes and messages, and `python tests/corpus.py`
prints the same tables as markdown, so the documented behaviour is the tested one.

Messages are written with "…" for "any text"; `<path>` is the input's path as given on the command line.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms


def pattern(message: str) -> re.Pattern:
    """A documented message ("…" = any text) as a regex matching the whole message."""
    return re.compile(".*".join(re.escape(part) for part in message.split("…")), re.DOTALL)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a smooth gradient plus noise, like a small photo."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=2)
    noise = np.random.default_rng(seed).integers(0, 40, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    """`image` saved to bytes in `format`."""
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of every chunk of a PNG."""
    chunks, position = [], 8
    while position + 8 <= len(data):
        length, = struct.unpack(">I", data[position:position + 4])
        chunks.append((position, data[position + 4:position + 8]))
        position += 12 + length
    return chunks


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels but holds no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


# --- recipes: each writes one input at `path` -------------------------------------------------------


def _save(array: np.ndarray, **options) -> Callable[[Path], None]:
    return lambda path: Image.fromarray(array).save(path, **options)


def _bytes(make: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(make())


def _truncated_jpeg() -> bytes:
    data = encoded(Image.fromarray(photo(48, 64)), "JPEG", quality=90)
    return data[: len(data) // 2]


def _png_with(damage: str) -> bytes:
    data = bytearray(encoded(Image.fromarray(photo(48, 64)), "PNG"))
    offset = next(offset for offset, kind in png_chunks(bytes(data)) if kind == b"IDAT")
    length, = struct.unpack(">I", data[offset:offset + 4])
    if damage == "crc":
        data[offset + 8 + length] ^= 0xFF  # the stored CRC; the pixels still inflate (Pillow alone would not notice)
    elif damage == "pixels":
        data[offset + 8 + length // 2] ^= 0x55  # the compressed pixels themselves
    else:  # "truncated": cut in the middle of the pixel data
        return bytes(data[: offset + 8 + length // 2])
    return bytes(data)


def _gray16_png(path: Path) -> None:
    Image.fromarray((np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 53).astype(np.uint16)).save(path)


def _rgb16_png(path: Path) -> None:
    import cv2

    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 65536, (30, 40, 3), dtype=np.uint16))


def _tiff(dtype) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import tifffile

        values = np.linspace(0, 1, 30 * 40).reshape(30, 40)
        tifffile.imwrite(path, (values * 65535).astype(np.uint16) if dtype == np.uint16 else values.astype(dtype))

    return make


def _rgba(mode: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        rgb = photo(30, 40)
        alpha = np.full((30, 40), 255, np.uint8)
        alpha[:, 20:] = 0  # the right half fully transparent
        channels = [rgb, alpha[..., None]] if mode == "RGBA" else [rgb[..., :1], alpha[..., None]]
        Image.fromarray(np.concatenate(channels, axis=2), mode).save(path)

    return make


def _palette(path: Path) -> None:
    image = Image.fromarray(photo(30, 40)).quantize(16)
    image.save(path, transparency=0)


def _animated_gif(path: Path) -> None:
    frames = [Image.fromarray(photo(30, 40, seed)) for seed in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the upright image is 30 wide, 40 tall
    Image.fromarray(photo(30, 40)).save(path, exif=exif.tobytes(), quality=90)


def _with_icc(path: Path) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo(30, 40)).save(path, icc_profile=profile, quality=90)


def _cmyk(path: Path) -> None:
    Image.fromarray(photo(30, 40)).convert("CMYK").save(path, quality=90)


def _float_rgb_tiff(nan: bool) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import tifffile

        values = photo(30, 40).astype(np.float32) / 255.0
        if nan:
            values[:5, :5] = np.nan
            values[5:8, :5] = np.inf
        tifffile.imwrite(path, values, photometric="rgb")  # Pillow reads no float RGB TIFF; OpenCV does

    return make


def _multipage_tiff(path: Path) -> None:
    pages = [Image.fromarray(photo(30, 40, seed)) for seed in range(3)]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _apng(path: Path) -> None:
    frames = [Image.fromarray(photo(30, 40, seed)) for seed in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)


def _with_orientation(value: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        exif = Image.Exif()
        exif[0x0112] = value
        Image.fromarray(photo(30, 40)).save(path, exif=exif.tobytes(), quality=90)

    return make


def _polyglot(path: Path) -> None:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.txt", "a zip archive after the PNG's IEND")
    path.write_bytes(encoded(Image.fromarray(photo(30, 40)), "PNG") + buffer.getvalue())


def _huge_text_png(path: Path) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * 2_000_000)
    Image.fromarray(photo(30, 40)).save(path, pnginfo=info)


def _huge_comment_jpeg(path: Path) -> None:
    Image.fromarray(photo(30, 40)).save(path, quality=90, comment=b"y" * 65000)


def _apple_double(path: Path) -> None:
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))


def _marked_like_our_output(path: Path) -> None:
    """A photo carrying diffiml's output mark, given as evidence from outside --out: analysed all the same."""
    from diffiml_cli.batch.provenance import mark_png

    path.write_bytes(mark_png(encoded(Image.fromarray(photo(30, 40)), "PNG"), "0" * 64, "mask"))


def _mkdir(path: Path) -> None:
    path.mkdir()


def _broken_link(path: Path) -> None:
    os.symlink(path.with_name("no-such-target.jpg"), path)


def _unreadable(path: Path) -> None:
    Image.fromarray(photo(30, 40)).save(path)
    path.chmod(0)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@dataclass(frozen=True)
class ImageKind:
    """One input file for `diffiml localize`: how to make it and what must happen."""

    name: str  # file name, inside a folder of its own
    make: Callable[[Path], None]
    what: str  # what the file is, for the table
    error: str | None = None  # the reason after "<path>: " ("…" = any text); None = it is read
    size: tuple[int, int] | None = None  # (width, height) of every output when it is read
    args: tuple[str, ...] = ()  # extra localize options
    unreadable: bool = False  # skipped where the file can be read anyway (root: os.geteuid() == 0)
    run_error: bool = False  # the run stops before any image: `error: <path>: <reason>` only
    not_analysed: str | None = None  # deliberately not analysed: results.json `not_analysed` gives this reason

    def expected(self) -> str:
        """The behaviour column of the table."""
        options = f" with `{' '.join(self.args)}`" if self.args else ""
        if self.not_analysed is not None:
            return f"exit 0{options}, no outputs; results.json `not_analysed` with the reason `{self.not_analysed}`"
        if self.run_error:
            return f"exit 1{options}, one line `error: <path>: {self.error}`, nothing written"
        if self.error is not None:
            return f"exit 1{options}; results.json failure and stderr line `<path>: {self.error}`"
        return f"exit 0{options}; 4 PNGs at {self.size[0]}x{self.size[1]}, results.json status ok"


_JPEG = lambda array: _save(array, quality=90)  # noqa: E731
BOMB_LIMIT = 1000
CORRUPT_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00"  # 5 entries promised, 1 half there

IMAGE_KINDS: dict[str, ImageKind] = {kind_id: kind for kind_id, kind in {
    "truncated-jpeg": ImageKind("cut.jpg", _bytes(_truncated_jpeg), "JPEG cut in half",
                                "cannot decode image (image file is truncated…)"),
    "empty-file": ImageKind("empty.jpg", _bytes(lambda: b""), "0-byte file", "empty file (0 bytes)"),
    "text-as-jpeg": ImageKind("notes.jpg", _bytes(lambda: b"these are my notes, not a picture\n"),
                              "text file named .jpg", "not a recognised image file"),
    "png-bad-crc": ImageKind("crc.png", _bytes(lambda: _png_with("crc")), "PNG whose IDAT CRC is wrong",
                             "PNG chunk 'IDAT' has a bad CRC (file is corrupt)"),
    "png-corrupt-pixels": ImageKind("flipped.png", _bytes(lambda: _png_with("pixels")),
                                    "PNG with a flipped byte in its compressed pixels", "cannot decode image (…)"),
    "png-truncated": ImageKind("cut-png.png", _bytes(lambda: _png_with("truncated")), "PNG cut inside IDAT",
                               "cannot decode image (image file is truncated)"),
    "folder-named-png": ImageKind("x.png", _mkdir, "empty folder named x.png",
                                  "folder contains no images (…)", run_error=True),
    "broken-symlink": ImageKind("gone.jpg", _broken_link, "symlink to a missing file", "broken symbolic link"),
    "unreadable-000": ImageKind("locked.png", _unreadable, "file of mode 000 (skipped as root)",
                                "cannot read image (Permission denied)", unreadable=True),
    "fifo-named-jpeg": ImageKind("pipe.jpg", _fifo, "named pipe (FIFO) called .jpg",
                                 "not a regular file (a FIFO, socket or device)"),
    "markup-in-name": ImageKind("[bold]x[red].jpg", _bytes(lambda: b"\xff\xd8\xff"), "broken JPEG named with "
                                "rich-markup brackets", "not a recognised image file"),
    "bomb-refused": ImageKind("bomb.png", _save(photo(48, 64)), f"64x48 PNG above --max-pixels {BOMB_LIMIT}",
                              f"image is 64x48 pixels, above the limit of {BOMB_LIMIT} pixels (a guard against "
                              "decompression bombs; raise it with --max-pixels)", args=("--max-pixels", str(BOMB_LIMIT))),
    "bomb-allowed": ImageKind("bomb.png", _save(photo(48, 64)), "the same PNG with a raised --max-pixels",
                              size=(64, 48), args=("--max-pixels", str(64 * 48))),
    "bomb-header-only": ImageKind("huge.png", _bytes(lambda: header_only_png(50_000, 50_000)),
                                  "PNG header claiming 50000x50000 (no pixel data), default limit",
                                  "image is 50000x50000 pixels, above the limit of 178956970 pixels (…--max-pixels)"),
    "png-16bit": ImageKind("deep16.png", _gray16_png, "16-bit grayscale PNG", size=(40, 30)),
    "png-16bit-rgb": ImageKind("deep16-rgb.png", _rgb16_png, "16-bit RGB PNG (OpenCV)", size=(40, 30)),
    "tiff-16bit": ImageKind("deep16-tiff.tif", _tiff(np.uint16), "16-bit TIFF (tifffile)", size=(40, 30)),
    "tiff-float": ImageKind("float.tiff", _tiff(np.float32), "32-bit float TIFF", size=(40, 30)),
    "jpeg-cmyk": ImageKind("cmyk.jpg", _cmyk, "CMYK JPEG", size=(40, 30)),
    "rgba-transparent": ImageKind("alpha.png", _rgba("RGBA"), "RGBA, half transparent", size=(40, 30)),
    "la": ImageKind("gray-alpha.png", _rgba("LA"), "LA (gray + alpha)", size=(40, 30)),
    "palette-p": ImageKind("palette.png", _palette, "palette (P) with a transparent index", size=(40, 30)),
    "one-bit": ImageKind("bits.png", _save(photo(30, 40)[..., 0] > 128), "1-bit PNG", size=(40, 30)),
    "gif-animated": ImageKind("anim.gif", _animated_gif, "3-frame animated GIF (first frame used)", size=(40, 30)),
    "webp": ImageKind("lossy.webp", _save(photo(30, 40), quality=80), "lossy WebP", size=(40, 30)),
    "bmp": ImageKind("bitmap.bmp", _save(photo(30, 40)), "BMP", size=(40, 30)),
    "jpeg-exif-rotated": ImageKind("rotated.jpg", _exif_rotated, "40x30 JPEG with EXIF orientation 6",
                                   size=(30, 40)),
    "jpeg-corrupt-exif": ImageKind("bad-exif.jpg", _save(photo(30, 40), exif=CORRUPT_EXIF), "JPEG whose EXIF block is "
                                   "cut short (ignored, no warning printed)", size=(40, 30)),
    "icc-profile": ImageKind("icc.jpg", _with_icc, "JPEG with an embedded ICC profile", size=(40, 30)),
    "uppercase-suffix": ImageKind("UPPER.JPG", _JPEG(photo(30, 40)), "upper-case .JPG suffix", size=(40, 30)),
    "tiny-8x8": ImageKind("tiny.png", _save(photo(8, 8)), "8x8 image", size=(8, 8)),
    "thin-1x4000": ImageKind("thin.png", _save(photo(4000, 1)), "1 px wide, 4000 px tall", size=(1, 4000)),
    "wide-20000x20": ImageKind("wide.png", _save(photo(20, 20000)), "20000 px wide, 20 px tall", size=(20000, 20)),
    "unicode-spaces": ImageKind("Fälschung 写真 №1 (copy).png", _save(photo(30, 40)),
                                "unicode file name with spaces", size=(40, 30)),
    # Added with the evidence-integrity review: each was a crash, a refusal or a silent omission before.
    "wide-4000x2": ImageKind("strip.png", _save(photo(2, 4000)), "valid 4000 x 2 PNG (crashed the tiling once)",
                             size=(4000, 2)),
    "tall-2x4000": ImageKind("pole.png", _save(photo(4000, 2)), "valid 2 x 4000 PNG", size=(2, 4000)),
    "one-pixel": ImageKind("dot.png", _save(photo(1, 1)), "1 x 1 PNG", size=(1, 1)),
    "tiff-float-rgb": ImageKind("float-rgb.tif", _float_rgb_tiff(False), "RGB float32 TIFF (OpenCV reads it)",
                                size=(40, 30)),
    "tiff-float-rgb-nan": ImageKind("float-nan.tif", _float_rgb_tiff(True), "RGB float32 TIFF with NaN and inf "
                                    "samples (read as 0)", size=(40, 30)),
    "tiff-multipage": ImageKind("pages.tif", _multipage_tiff, "3-page TIFF (first page used)", size=(40, 30)),
    "apng": ImageKind("moving.png", _apng, "animated PNG (first frame used)", size=(40, 30)),
    "jpeg-orientation-8": ImageKind("rot8.jpg", _with_orientation(8), "40x30 JPEG with EXIF orientation 8",
                                    size=(30, 40)),
    "jpeg-orientation-99": ImageKind("rot99.jpg", _with_orientation(99), "JPEG with an invalid EXIF orientation "
                                     "(99: ignored)", size=(40, 30)),
    "png-zip-polyglot": ImageKind("poly.png", _polyglot, "PNG followed by a zip archive (a polyglot)", size=(40, 30)),
    "png-2mb-text": ImageKind("chatty.png", _huge_text_png, "PNG with a 2 MB text chunk", size=(40, 30)),
    "jpeg-64k-comment": ImageKind("commented.jpg", _huge_comment_jpeg, "JPEG with a 65,000-byte comment",
                                  size=(40, 30)),
    "png-named-jpg": ImageKind("really-a-png.jpg", _save(photo(30, 40), format="PNG"), "PNG bytes named .jpg",
                               size=(40, 30)),
    "hidden-file": ImageKind(".hidden.jpg", _JPEG(photo(30, 40)), "hidden file .hidden.jpg (evidence like any "
                             "other: analysed)", size=(40, 30)),
    "apple-double": ImageKind("._photo.jpg", _bytes(lambda: b"\x00\x05\x16\x07" + bytes(80)),
                              "macOS resource fork ._photo.jpg (AppleDouble bytes)",
                              not_analysed="a macOS resource fork (AppleDouble file), not an image"),
    "apple-double-name-real-jpeg": ImageKind("._real.jpg", _JPEG(photo(30, 40)), "a real JPEG named like a resource "
                                             "fork (._real.jpg): analysed", size=(40, 30)),
    "marked-outside-out": ImageKind("marked.png", _marked_like_our_output, "PNG carrying diffiml's output mark, "
                                    "outside --out (analysed: the mark counts only inside --out)", size=(40, 30)),
    "bidi-name": ImageKind("invoice\u202egnp.jpg", _JPEG(photo(30, 40)), "name with a right-to-left override",
                           size=(40, 30)),
    "newline-name": ImageKind("two\nlines.png", _save(photo(30, 40)), "name with a newline", size=(40, 30)),
    "escape-name": ImageKind("\x1b[31mred.png", _save(photo(30, 40)), "name with a terminal escape",
                             size=(40, 30)),
    "output-name-too-long": ImageKind("n" * 240 + ".png", _save(photo(30, 40)), "240-byte stem: its output "
                                      "names would pass 255 bytes", "its output names (… would be longer than the "
                                      "255 bytes a file name may have; rename the input"),
    "png-zero-width": ImageKind("zero.png", _bytes(lambda: header_only_png(0, 10)), "PNG header of 0 x 10 pixels",
                                "not a recognised image file"),
}.items()}

# The kinds a plain `diffiml localize FOLDER` can meet in one folder (no options of their own).
BATCH_KINDS = [kind_id for kind_id, kind in IMAGE_KINDS.items() if not kind.args and not kind.run_error]


# --- `diffiml evaluate`: bad manifests -----------------------------------------------------------------


@dataclass(frozen=True)
class DatasetKind:
    """A dataset spec for `diffiml evaluate`: entries of an IMDL-BenCo JSON (or a Tp/Gt folder layout)."""

    what: str
    entries: object  # the JSON document; "folder" = a Tp/Gt folder with a mask of the wrong size
    exit_code: int
    message: str | None = None  # a stderr line ("…" = any text); `<spec>` is the dataset path
    mask_value: int = 0  # fill of Gt/a.png outside its manipulated box (255 = all manipulated)

    def expected(self) -> str:
        return f"exit {self.exit_code}" + (f", stderr line `{self.message}`" if self.message else ", metrics written")


DATASET_KINDS: dict[str, DatasetKind] = {
    "eval-mask-other-size": DatasetKind("Tp/Gt folder whose mask is 40x24 for a 40x30 image", "folder", 1,
                                        "  <name>: <spec>/Gt/a.png: mask is 40x24 but its image <spec>/Tp/a.png is 40x30"),
    "eval-missing-mask": DatasetKind("JSON naming a mask file that does not exist", [["a.png", "gt/gone.png"]], 1,
                                     'error: <spec>: 1 of 1 entries have no mask file: entry 0: mask "gt/gone.png" '
                                     'is not a file (use "Negative" for authentic images)'),
    "eval-mask-all-255": DatasetKind("mask that is all 255 (everything manipulated): valid",
                                     [["a.png", "gt/a.png"]], 0, mask_value=255),
    "eval-empty-list": DatasetKind("JSON []", [], 1, "error: <spec>: dataset is empty"),
    "eval-json-not-list": DatasetKind('JSON object {"a.png": "gt/a.png"}', {"a.png": "gt/a.png"}, 1,
                                      "error: <spec>: top level is a JSON dict; expected an IMDL-BenCo list …"),
    "eval-json-syntax": DatasetKind("not JSON at all", "[[oops", 1, "error: <spec>: not valid JSON (…)"),
    "eval-entry-not-pair": DatasetKind("entry with three items", [["a.png", "gt/a.png", "x"]], 1,
                                       'error: <spec>: entry 0 is ["a.png", "gt/a.png", "x"]; expected …'),
    "eval-negative-lowercase": DatasetKind('"negative": read as "Negative"', [["a.png", "gt/a.png"], ["b.png", "negative"]], 0),
    "eval-negative-uppercase": DatasetKind('"NEGATIVE": read as "Negative"', [["a.png", "gt/a.png"], ["b.png", "NEGATIVE"]], 0),
    "eval-negative-misspelt": DatasetKind('"Negativ": refused', [["b.png", "Negativ"]], 1,
                                          'error: <spec>: 1 of 1 entries have no mask file: entry 0: mask "Negativ" is '
                                          'not a file (use "Negative" for authentic images)'),
    "eval-missing-image": DatasetKind("image file missing", [["a.png", "gt/a.png"], ["gone.png", "Negative"]], 1,
                                      "  <name>: <root>/gone.png: no such file"),
}


# --- whole-run scenarios (each has one test in test_bad_input_corpus.py) --------------------------------

SCENARIOS: dict[str, tuple[str, str]] = {
    "out-has-results": ("--out already holds this image's outputs",
                        "exit 0, `1 skipped`, files untouched; `--overwrite` redoes them; other files and results.json entries kept"),
    "out-holds-another-image": ("--out holds outputs of another image with the same stem (earlier run)",
                                "exit 1, `<path>: <out> already holds the outputs (tiny_mask.png, ...) of another image, "
                                "<other>; use another --out, or --overwrite to replace them`; `--overwrite` replaces them"),
    "out-equals-in": ("--out is the input folder", "exit 0, outputs beside the inputs, every input byte-identical"),
    "out-clobbers-input": ("--out is the input folder and an input is named like an output (a_mask.png)",
                           "exit 1, `<path>: refusing to overwrite input <out>/a_mask.png`, inputs unchanged"),
    "same-stem": ("a.jpg and a.png in one folder (same output names)",
                  "exit 1, a.jpg written, `<path>/a.png: its outputs (a_mask.png, ...) would overwrite those of <path>/a.jpg; …`"),
    "out-is-a-file": ("--out names an existing file", "exit 1, `error: <out>: the output folder exists and is not a folder`"),
    "nested-folders": ("input folder with sub-folders", "exit 0, outputs mirror the sub-folders under --out"),
    "debug-traceback": ("bad manifest with DIFFIML_DEBUG=1", "exit 1 with a full Python traceback ending in DiffimlError"),
    # The whole-run cases of the evidence-integrity review (tests/test_evidence_integrity.py, tests/test_batch.py).
    "predict-raises": ("the model raises on one image of a batch", "exit 1, `<path>: cannot be localized "
                       "(RuntimeError: …)`; the other images, its batch-mate too, written and recorded"),
    "evaluate-predict-raises": ("the model raises on one pair in `evaluate`", "exit 1, that pair skipped with "
                                "`<path>: cannot be localized (…)`; the others scored"),
    "same-name-other-folder": ("`a/p.png` localized from one working folder, then `/abs/b/p.png` from another into "
                               "the same --out", "exit 1, `<path>: <out> already holds the outputs (p_mask.png, ...) "
                               "of another image, <a/p.png resolved>; …`; never credited"),
    "same-photo-two-folders": ("one photo localized from two working folders", "exit 0, `1 skipped`; one record, "
                               "keyed by real path and SHA-256"),
    "file-replaced": ("the input's bytes changed since its outputs were written", "exit 1, `<path>: <out> already "
                      "holds outputs (p_mask.png, ...) computed from other bytes …`; `--overwrite` redoes it"),
    "outputs-without-record": ("outputs of this image exist but their record was lost (a kill between them)",
                               "exit 0, `1 localized`: computed again, with a full record"),
    "unvouched-outputs": ("unmarked outputs with no record (an older diffiml, or put by hand)",
                          "exit 1, `<path>: <out> already holds outputs (p_mask.png, ...) that no record of this image "
                          "vouches for; …`"),
    "out-equals-in-rerun": ("`localize case --out case` run twice", "exit 0, `1 skipped …, 4 not analysed`; the "
                            "outputs are listed under `not_analysed`, never analysed as evidence"),
    "results-jsonl-link": ("<out>/results.jsonl is a symbolic link to a file outside",
                           "exit 1, `error: <out>/results.jsonl: is a symbolic link; refusing to write through it "
                           "(…)`; the target untouched"),
    "output-subfolder-link": ("<out>/sub is a link outside, and an input lies in sub/", "exit 1, `<path>: its "
                              "outputs' folder <out>/sub leads outside the output folder …`; nothing written there"),
    "report-thumbs-link": ("`report` when <out>/thumbs links to another folder with an index.json",
                           "exit 1, `error: <out>/thumbs/index.json: leads outside the output folder …`; nothing "
                           "there written or deleted"),
    "folder-link-loops": ("a folder with two symbolic-link loops", "exit 0, each image once"),
    "long-names": ("--out or an input named with more than 255 bytes", "exit 1, one line `error: <name>: … (File name "
                   "too long)`"),
    "deep-manifest": ("an `evaluate` manifest nested 100,000 levels deep", "exit 1, `error: <spec>: JSON nested too "
                      "deeply to be a dataset list`"),
    "mask-forms": ("`evaluate` masks stored as 0/255, 0/1 label maps, or red on black",
                   "exit 0, each counted tampered; `masks of <name>: 1 <form>` on stderr, `mask_forms` in metrics.json"),
    "sigterm-sighup": ("SIGTERM or SIGHUP during a folder", "exit 143 or 129 after the batch in flight, results.json "
                       "rebuilt; the same command finishes the rest"),
}



DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
DOC_HEAD = """# Bad and odd input: what diffiml does with each

The rules are in README *Exit codes and bad input* and, in full, in
[large-jobs.md](large-jobs.md#exit-codes-and-bad-input). This table is generated from the test corpus
(`tests/corpus.py`, `tests/corpus_checkpoints.py`): every row is run through the real command line by
`tests/test_bad_input_corpus.py`, and `tests/test_evidence_integrity.py` holds the whole-run cases (links,
loops, stops, other working folders, `--out` equal to the input folder). Regenerate it with
`python tests/corpus.py --write`; a test fails when it is out of date.

`<path>` is the input as given on the command line; "…" is any text.

"""


def markdown_tables() -> str:
    """The corpus tables as markdown: kind, input, behaviour."""
    from corpus_checkpoints import CHECKPOINT_KINDS, USAGE_KINDS

    lines = ["| kind | input | behaviour (exit code, message) |", "|---|---|---|"]
    rows = [(k, v.what, v.expected()) for k, v in IMAGE_KINDS.items()]
    rows += [(k, v.what, v.expected()) for k, v in DATASET_KINDS.items()]
    rows += [(k, v.what, v.expected()) for k, v in CHECKPOINT_KINDS.items()]
    rows += [(k, v.what, v.expected()) for k, v in USAGE_KINDS.items()]
    rows += [(k, what, behaviour) for k, (what, behaviour) in SCENARIOS.items()]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        DOC.write_text(DOC_HEAD + markdown_tables() + "\n", encoding="utf-8")
    else:
        print(markdown_tables())
