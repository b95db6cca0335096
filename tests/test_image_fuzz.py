"""Bounded fuzzing of the image readers: random bytes and damaged PNG/JPEG/GIF/TIFF/WebP/BMP files.

Whatever the bytes, `load_rgb`, `load_mask` and `image_size` either return a well-formed result or raise
DiffimlError naming the file; nothing else escapes, and no file takes long. Each example also runs under a
SIGALRM watchdog, so a decoder stuck in Python code fails the test instead of hanging it.
"""

from __future__ import annotations

import io
import signal
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from corpus import encoded, photo
from diffiml_cli.errors import DiffimlError
from diffiml_cli.image_io import image_size, load_mask, load_rgb

MAX_PIXELS = 1 << 20  # damaged headers may claim huge sizes: keep every decode small (bombs are tested elsewhere)
WATCHDOG_SECONDS = 5
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on damaged metadata
FUZZ = settings(max_examples=400, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])


def _seeds() -> dict[str, bytes]:
    """Small valid files of every readable format, some with the features most likely to break."""
    rgb = Image.fromarray(photo(12, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.fromarray(photo(12, 16, seed)) for seed in range(2)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "png": encoded(rgb, "PNG"),
        "png16": encoded(Image.fromarray(np.arange(192, dtype=np.uint16).reshape(12, 16) * 300), "PNG"),
        "png-palette": encoded(rgb.quantize(8), "PNG", transparency=0),
        "jpeg": encoded(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg-cmyk": encoded(rgb.convert("CMYK"), "JPEG", quality=80),
        "gif": gif.getvalue(),
        "tiff": encoded(rgb, "TIFF"),
        "tiff-float": encoded(Image.fromarray(photo(12, 16)[..., 0].astype(np.float32) / 255), "TIFF"),
        "webp": encoded(rgb, "WEBP", quality=70),
        "bmp": encoded(rgb.convert("RGBA"), "BMP"),
    }


SEEDS = _seeds()


@st.composite
def damaged(draw) -> bytes:
    """A seed file with bit flips, overwritten bytes, a truncation, or all three."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    # Headers hold the interesting fields: most damage lands in the first 64 bytes.
    position = st.one_of(st.integers(0, min(63, len(data) - 1)), st.integers(0, len(data) - 1))
    for index, bit in draw(st.lists(st.tuples(position, st.integers(0, 7)), max_size=4)):
        data[index] ^= 1 << bit
    for index, value in draw(st.lists(st.tuples(position, st.integers(0, 255)), max_size=2)):
        data[index] = value
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


@contextmanager
def _watchdog(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"a reader ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def scratch() -> Path:
    with tempfile.TemporaryDirectory(prefix="diffiml-fuzz-") as folder:
        yield Path(folder)


def _read_everything(path: Path, data: bytes) -> None:
    """Every reader returns a well-formed result or raises DiffimlError naming `path`."""
    path.write_bytes(data)
    results = {}
    with _watchdog(WATCHDOG_SECONDS):
        for reader in (load_rgb, load_mask, image_size):
            try:
                results[reader.__name__] = reader(path, max_pixels=MAX_PIXELS)
            except DiffimlError as error:
                message = str(error)
                assert message.startswith(f"{path}: ") and "\n" not in message
    if "load_rgb" in results:
        rgb = results["load_rgb"]
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8 and rgb.shape[0] * rgb.shape[1] > 0
        assert results.get("image_size", (rgb.shape[1], rgb.shape[0])) == (rgb.shape[1], rgb.shape[0])
    if "load_mask" in results:
        assert results["load_mask"].dtype == np.bool_ and results["load_mask"].ndim == 2


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_reads(name, scratch):
    path = scratch / f"seed.{name.split('-')[0]}"
    path.write_bytes(SEEDS[name])
    width, height = image_size(path)
    assert load_rgb(path).shape == (height, width, 3) and {width, height} == {12, 16}


@FUZZ
@given(data=damaged(), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".bmp"]))
def test_damaged_files_raise_only_diffiml_error(scratch, data, suffix):
    _read_everything(scratch / f"damaged{suffix}", data)


@settings(max_examples=200, deadline=timedelta(seconds=2))
@given(magic=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*",
                              b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM"]),
       body=st.binary(max_size=256))
def test_random_bytes_raise_only_diffiml_error(scratch, magic, body):
    _read_everything(scratch / "random.jpg", magic + body)
