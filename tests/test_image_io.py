"""image_io: odd formats decode to (H, W, 3) uint8, broken files raise DiffimlError naming the path."""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import IMAGE_EXTENSIONS, image_size, list_images, load_mask, load_rgb, save_png_atomic


def _gradient(height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W, 3) uint8 with distinct rows, columns and channels, so rotations are detectable."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256]
    return np.stack(channels, axis=2).astype(np.uint8)


def _assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous


def test_extensions_are_lowercase_suffixes():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    loaded = load_rgb(path)
    _assert_rgb(loaded, 4, 4)
    assert loaded[0, :, 0].tolist() == [0, 4, 128, 255]
    assert (loaded[..., 0] == loaded[..., 2]).all()


@pytest.mark.parametrize(("values", "expected"), [
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # in [0, 1]: taken as intensities
    (np.array([[-2.0, 0.0, 2.0]], np.float32), [0, 128, 255]),  # outside: stretched min..max
])
def test_float_tiff(tmp_path, values, expected):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.repeat(values, 2, axis=0))
    loaded = load_rgb(path)
    _assert_rgb(loaded, 2, 3)
    assert loaded[0, :, 1].tolist() == expected


def test_float_image_via_pillow(tmp_path):
    path = tmp_path / "float_pil.tif"
    Image.fromarray(np.linspace(0, 1, 32, dtype=np.float32).reshape(4, 8), mode="F").save(path)
    _assert_rgb(load_rgb(path), 4, 8)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    loaded = load_rgb(path)
    _assert_rgb(loaded, 10, 20)
    red, green, blue = loaded[5, 10].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = load_rgb(tmp_path / "rgba.png")
    _assert_rgb(loaded, 8, 8)
    assert loaded[0, 0].tolist() == [255, 0, 0]
    assert loaded[7, 0].tolist() == [255, 255, 255]
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 1] = 255
    la[4:, :, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    loaded = load_rgb(tmp_path / "la.png")
    assert loaded[0, 0].tolist() == [0, 0, 0] and loaded[7, 0].tolist() == [255, 255, 255]


def test_palette_with_transparency_and_one_bit(tmp_path):
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    loaded = load_rgb(tmp_path / "palette.png")
    _assert_rgb(loaded, 6, 6)
    assert loaded[0, 0].tolist() == [255, 255, 255] and loaded[3, 3].tolist() == [0, 255, 0]
    bits = Image.fromarray(np.eye(5, dtype=bool))
    bits.save(tmp_path / "bits.png")
    loaded = load_rgb(tmp_path / "bits.png")
    _assert_rgb(loaded, 5, 5)
    assert loaded[0, 0].tolist() == [255] * 3 and loaded[0, 1].tolist() == [0] * 3


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 7), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    loaded = load_rgb(tmp_path / "anim.gif")
    _assert_rgb(loaded, 7, 10)
    assert loaded[3, 3].tolist() == [255, 0, 0]


def test_webp_and_bmp(tmp_path):
    Image.fromarray(_gradient()).save(tmp_path / "a.webp", lossless=True)
    Image.fromarray(_gradient()).save(tmp_path / "a.bmp")
    assert np.array_equal(load_rgb(tmp_path / "a.webp"), _gradient())
    assert np.array_equal(load_rgb(tmp_path / "a.bmp"), _gradient())


def test_exif_orientation_6_rotates(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(_gradient(48, 64)).save(path, exif=exif.tobytes(), quality=95)
    loaded = load_rgb(path)
    _assert_rgb(loaded, 64, 48)
    assert image_size(path) == (48, 64)
    upright = np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(loaded, upright)


def test_icc_profile_converted_or_ignored(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_gradient()).save(tmp_path / "srgb.png", icc_profile=srgb)
    loaded = load_rgb(tmp_path / "srgb.png")
    # sRGB to sRGB: at most rounding differences.
    assert np.abs(loaded.astype(int) - _gradient()).max() <= 2
    Image.fromarray(_gradient()).save(tmp_path / "junk_icc.jpg", icc_profile=b"not a profile" * 10, quality=95)
    _assert_rgb(load_rgb(tmp_path / "junk_icc.jpg"), 48, 64)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (1, 4000), (4000, 1)])
def test_extreme_shapes(tmp_path, height, width):
    path = tmp_path / "thin.png"
    Image.fromarray(np.full((height, width, 3), 7, np.uint8)).save(path)
    _assert_rgb(load_rgb(path), height, width)
    assert image_size(path) == (width, height)


def _broken_files(tmp_path: Path) -> dict[str, Path]:
    buffer = io.BytesIO()
    Image.fromarray(_gradient()).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(_gradient()).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    idat = png.find(b"IDAT")
    length = struct.unpack(">I", png[idat - 4:idat])[0]
    png[idat + 4 + length] ^= 0xFF  # the IDAT chunk's CRC: Pillow alone would not notice
    files = {
        "truncated": tmp_path / "truncated.jpg",
        "empty": tmp_path / "empty.jpg",
        "text": tmp_path / "text.jpg",
        "bad_crc": tmp_path / "bad_crc.png",
        "directory": tmp_path / "folder.png",
        "broken_link": tmp_path / "dangling.png",
        "missing": tmp_path / "missing.png",
    }
    files["truncated"].write_bytes(jpeg[: len(jpeg) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a picture\n")
    files["bad_crc"].write_bytes(bytes(png))
    files["directory"].mkdir()
    os.symlink(tmp_path / "nowhere.png", files["broken_link"])
    return files


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "bad_crc", "directory", "broken_link", "missing"])
def test_broken_files_raise_diffiml_error_naming_the_path(tmp_path, kind):
    path = _broken_files(tmp_path)[kind]
    for reader in (load_rgb, load_mask):
        with pytest.raises(DiffimlError) as caught:
            reader(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message
    if kind not in ("truncated", "bad_crc"):  # those two only show when the pixels are decoded
        with pytest.raises(DiffimlError, match=re.escape(str(path))):
            image_size(path)


def test_max_pixels_refusal(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(_gradient(100, 100)).save(path)
    with pytest.raises(DiffimlError, match=r"100x100 pixels.*5000 pixels.*`max_pixels`"):
        load_rgb(path, max_pixels=5000)
    with pytest.raises(DiffimlError, match="`max_pixels`"):
        image_size(path, max_pixels=5000)
    assert load_rgb(path, max_pixels=10_000).shape == (100, 100, 3)


def test_bomb_refused_from_header_before_decoding(tmp_path):
    # A PNG that claims 100000 x 100000 pixels but holds no pixel data: only the header is read.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data += struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(DiffimlError, match="100000x100000 pixels.*178956970 pixels.*`max_pixels`"):
        load_rgb(path)
    with pytest.raises(DiffimlError, match="100000x100000 pixels.*`max_pixels`"):
        image_size(path, max_pixels=10**10 - 1)


def test_list_images_folder_glob_and_errors(tmp_path):
    nested = tmp_path / "photos" / "nested"
    nested.mkdir(parents=True)
    for path in (tmp_path / "photos" / "b.jpg", tmp_path / "photos" / "a.PNG", nested / "c.tif"):
        path.write_bytes(b"x")
    (tmp_path / "photos" / "notes.txt").write_text("x")
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "dir.png").mkdir()
    folder = list_images([tmp_path / "photos"])
    # Hidden files are evidence like any other (a folder listing never leaves one out silently).
    assert [p.relative_to(tmp_path / "photos").as_posix() for p in folder] == [".hidden.jpg", "a.PNG", "b.jpg",
                                                                               "nested/c.tif"]
    matched = list_images([str(tmp_path / "photos" / "*.jpg")])
    assert [p.name for p in matched] == ["b.jpg"]
    odd = tmp_path / "scan.raw"
    odd.write_bytes(b"x")
    combined = list_images([odd, tmp_path / "photos", str(tmp_path / "photos" / "b.jpg")])
    assert combined[0] == odd and len(combined) == 5  # explicit odd file kept, duplicate b.jpg dropped
    with pytest.raises(DiffimlError, match="no such file"):
        list_images([tmp_path / "absent"])
    with pytest.raises(DiffimlError, match="matches no image"):
        list_images([str(tmp_path / "photos" / "*.gif")])


def test_save_png_atomic_round_trip_without_leftovers(tmp_path):
    image = _gradient()
    save_png_atomic(tmp_path / "out.png", image)
    save_png_atomic(tmp_path / "out.png", image)  # overwriting is fine too
    mask = np.eye(16, dtype=bool)
    save_png_atomic(tmp_path / "mask.png", mask)
    assert np.array_equal(load_rgb(tmp_path / "out.png"), image)
    assert np.array_equal(load_mask(tmp_path / "mask.png"), mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "out.png"]
    with pytest.raises(DiffimlError, match="cannot write"):
        save_png_atomic(tmp_path / "no_such_folder" / "x.png", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "out.png"]
