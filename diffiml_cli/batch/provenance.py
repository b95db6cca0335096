"""Which image an output belongs to: the input's content hash, and a mark inside every PNG `localize` writes.

A record names its input by absolute path and by the SHA-256 of the file's bytes, so a result is never credited
to another image: not to a different photo with the same name in another folder, nor to the same path whose
file was replaced. Every output PNG also carries a `tEXt` chunk (keyword `diffiml-output`) with the hash of the
image it was computed from, so that outputs whose record a stop lost can still be told apart from another
image's, and so that diffiml's own outputs are never analysed as evidence when `--out` holds inputs.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from PIL import Image

from diffiml_cli.files import sha256_of

MARK_KEYWORD = "diffiml-output"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 data bytes and CRC


def sha256_file(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes. Raises OSError."""
    with open(path, "rb") as handle:
        return sha256_of(handle)


def mark_png(data: bytes, source_sha256: str, kind: str) -> bytes:
    """An encoded PNG with a `tEXt` chunk `diffiml-output` = {"source_sha256": ..., "kind": ...} after IHDR."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG that starts with IHDR")
    text = json.dumps({"source_sha256": source_sha256, "kind": kind}, separators=(",", ":"))
    body = MARK_KEYWORD.encode("latin-1") + b"\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:_IHDR_END] + chunk + data[_IHDR_END:]


def read_mark(path: str | Path) -> dict | None:
    """The mark of a PNG diffiml wrote ({"source_sha256", "kind"}), or None: not a PNG, unreadable, or no mark.
    Reads the header chunks only."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                return None
            text = image.info.get(MARK_KEYWORD)  # tEXt before the pixels: no decoding (`.text` would decode)
    except Exception:  # noqa: BLE001 - any unreadable file simply carries no mark
        return None
    try:
        mark = json.loads(text) if text else None
    except ValueError:
        return None
    if isinstance(mark, dict) and isinstance(mark.get("source_sha256"), str):
        return mark
    return None
