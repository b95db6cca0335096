"""One row of the case report per `results.json` record: where its files are now, and what the table and the
detail view show of it, as display-ready strings and relative URLs.

Everything here is evidence-controlled text (file names, EXIF fields, error messages) or derived from it. It
leaves this module in two forms only: `printable` strings, which the template's autoescaping then makes
inert HTML, and URLs from `relative_url`, which are percent-encoded relative paths (no scheme can appear, as
`:` is encoded), so neither can become markup or a link elsewhere.
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from diffiml_cli.noiseprint_view import noiseprint_png
from diffiml_cli.report.cache import StatCache, signature
from diffiml_cli.report.metadata import FileMetadata, read_metadata
from diffiml_cli.report.thumbnails import Thumbnail, ThumbnailStore

BROWSER_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP"})  # what a browser shows; TIFF is not
FULL_KINDS = ("original", "overlay", "mask", "uncertainty")  # the detail view's panels, in order
VERDICT_RANK = {"manipulated": 3, "none": 2, "authentic": 1, "failed": 0}  # the verdict column's sort order
NUL_NOTE = "the recorded path holds a NUL byte: no file can have that name"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _shown(character: str) -> str:
    code = ord(character)
    if character in _NAMED:
        return _NAMED[character]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    if unicodedata.category(character) in ("Cc", "Cf", "Zl", "Zp"):  # controls, bidi and zero-width characters
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    return character


def printable(text: object) -> str:
    """str(text) with control, format and undecodable characters shown as Python-style escapes, exactly as the
    terminal shows names (`cli.display.visible`, which the library cannot import): a name holding a newline or
    an ESC byte reads as one line, and a report page never holds a lone surrogate (unencodable as UTF-8)."""
    return "".join(_shown(character) for character in str(text))


def relative_url(path: Path, base: Path) -> str:
    """`path` as a percent-encoded URL relative to the folder `base` (its bytes kept exactly, `/` kept)."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    return quote(os.fsencode(relative), safe="/")


def locate_output(recorded: object, out_dir: Path) -> Path | None:
    """The output file a record names, found under `out_dir`; None when it is not there.

    Records keep output paths as `localize` was given them (relative to its working folder, or absolute),
    and the folder may have moved since, so the longest tail of the recorded path that exists under `out_dir`
    is taken: outputs always lie under the folder the report is built in.
    """
    if not isinstance(recorded, str) or not recorded or "\0" in recorded:
        return None
    parts = Path(recorded).parts
    for start in range(len(parts)):
        tail = parts[start:]
        if tail[0] == os.sep or ".." in tail:  # never a file outside `out_dir`
            continue
        candidate = out_dir.joinpath(*tail)
        if candidate.is_file():
            return candidate
    return None


@dataclass
class RowSources:
    """What building a row needs besides its record: the report's folder, its two caches, and the folder that
    holds every input (names are shown relative to it)."""

    out_dir: Path
    thumbs: ThumbnailStore
    metadata: StatCache
    input_root: str = ""


def cached_metadata(path: Path, cache: StatCache) -> FileMetadata:
    """`read_metadata(path)`, reused from `cache` while the file's signature is unchanged."""
    key = os.path.abspath(path)
    current = signature(path)  # taken before reading: a file changed meanwhile is read again next time
    known = cache.lookup(key, current)
    if known is not None:
        return FileMetadata.from_record(known)
    metadata = read_metadata(path)
    if metadata.sha256 is not None:
        cache.store(key, current, metadata.record())
    return metadata


def human_size(size: int | None) -> str:
    """1234567 -> "1.2 MiB"; None -> ""."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def finite_number(value: object) -> float | None:
    """A record's score or fraction as a finite float; None (shown as missing) for anything else: a record is a
    file anyone can edit, and NaN, an infinity or 1e400 would not survive the page's JSON."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


BADGE_TITLES = {
    "manipulated": "the detection score reaches the calibrated threshold",
    "authentic": "no manipulation detected: not proof that none exists",
    "none": "no verdict: the checkpoint has no calibrated detector",
    "failed": "the input could not be analysed",
}


def _badge(entry: dict) -> tuple[str, str]:
    """(css class / sort key, text) of the verdict column."""
    if entry.get("status") == "failed":
        return "failed", "failed"
    verdict = entry.get("verdict")
    if verdict in ("manipulated", "authentic"):
        return verdict, verdict
    return "none", "no verdict"


def _reason(entry: dict) -> str | None:
    """A failed record's error without the leading "<image>: " that localize puts before every reason."""
    error = entry.get("error") if entry.get("status") == "failed" else None
    if not isinstance(error, str) or not error:
        return None
    prefix = f"{entry['image']}: "
    return error[len(prefix):] if error.startswith(prefix) and len(error) > len(prefix) else error


def _metadata_details(metadata: FileMetadata) -> list[tuple[str, str]]:
    """The detail view's (label, value) lines about the input file."""
    lines = []
    if metadata.size is not None:
        lines.append(("File size", f"{metadata.size:,} bytes ({human_size(metadata.size)})"))
    if metadata.sha256:
        lines.append(("SHA-256", metadata.sha256))
    if metadata.format:
        lines.append(("Format", f"{metadata.format}, {metadata.width} × {metadata.height} px"))
        exif = metadata.exif
        labels = {"make": "Camera make", "model": "Camera model", "software": "Software"}
        lines.extend((label, printable(exif[key])) for key, label in labels.items() if key in exif)
        date = exif.get("datetime_original") or exif.get("datetime")
        if date:
            lines.append(("Date (EXIF)", printable(date)))
        if not exif:
            lines.append(("EXIF", "no EXIF"))
    if metadata.jpeg_quality is not None:
        how = "standard IJG tables" if metadata.jpeg_tables_standard else "nearest IJG quality; non-standard tables"
        lines.append(("JPEG quality", f"≈ {metadata.jpeg_quality} ({how})"))
    return lines


def _score_details(entry: dict, badge: str) -> list[tuple[str, str]]:
    """The detail view's (label, value) lines about what localize found."""
    lines = []
    detection, image = finite_number(entry.get("detection_score")), finite_number(entry.get("image_score"))
    fraction = finite_number(entry.get("manipulated_fraction"))
    if detection is not None:
        lines.append(("Detection score", f"{detection:.3f}"))
    if image is not None:
        lines.append(("Image score", f"{image:.3f} (maximum of the probability map)"))
    if badge != "failed":
        lines.append(("Verdict", {"none": "none (no calibrated detector)"}.get(badge, badge)))
    if fraction is not None:
        lines.append(("Manipulated fraction", f"{100 * fraction:.2f} % of the pixels"))
    if entry.get("gated") is True:
        lines.append(("Mask", "emptied: the detector called the image authentic (gate)"))
    if isinstance(entry.get("tiles"), int) and entry["tiles"] > 1:
        lines.append(("Tiles", f"{entry['tiles']} (run at full resolution)"))
    if isinstance(entry.get("run_id"), str):
        lines.append(("Run id", printable(entry["run_id"])))
    return lines


def _thumb_cell(thumb: Thumbnail, base: Path) -> dict | None:
    if thumb.path is None:
        return None
    return {"url": relative_url(thumb.path, base), "width": thumb.width, "height": thumb.height}


def _files(entry: dict, input_path: Path, metadata: FileMetadata, sources: RowSources) -> tuple[dict, dict, list]:
    """(thumbnail cells, full-size URLs, notes) of one record's original and outputs."""
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
    found = {kind: locate_output(outputs.get(kind), sources.out_dir) for kind in ("overlay", "mask", "uncertainty")}
    found["original"] = input_path if metadata.format else None  # the metadata notes say why not
    notes = []
    if entry.get("status") != "failed":
        notes.extend(f"{kind} output missing" for kind in ("overlay", "mask", "uncertainty") if found[kind] is None)
    thumbs, full = {}, {}
    for kind in ("original", "overlay", "uncertainty"):
        thumb = sources.thumbs.get(kind, found[kind]) if found[kind] is not None else None
        thumbs[kind] = _thumb_cell(thumb, sources.out_dir) if thumb is not None else None
        if thumb is not None and thumb.note and not (kind == "original" and entry.get("status") == "failed"):
            notes.append(f"{kind}: {printable(thumb.note)}")  # a failed input's own error already says why
            if kind != "original":
                found[kind] = None  # an unreadable output is not linked as if it could be viewed
    for kind in FULL_KINDS:
        full[kind] = relative_url(found[kind], sources.out_dir) if found[kind] is not None else None
    view = noiseprint_png(found["mask"]) if found["mask"] is not None else None  # localize --noiseprint's view
    shown = view is not None and view.is_file() and not view.is_symlink()
    full["noiseprint"] = relative_url(view, sources.out_dir) if shown else None
    if full["original"] is not None and metadata.format not in BROWSER_FORMATS:
        full["original"] = thumbs["original"]["url"] if thumbs["original"] else None
        if metadata.format:
            notes.append(f"{metadata.format} is not shown by browsers: the detail view shows its thumbnail")
    return thumbs, full, notes


def input_root(images: list[str]) -> str:
    """The deepest folder holding every input (absolute), or "" when there is none."""
    try:
        return os.path.commonpath([os.path.dirname(os.path.abspath(image)) for image in images])
    except ValueError:  # no images, or a name with a NUL byte
        return ""


def _folder_shown(image: str, root: str) -> str:
    folder = os.path.dirname(os.path.abspath(image))
    return os.path.relpath(folder, root) if root and folder != root else ("" if root else folder)


def build_row(entry: dict, sources: RowSources) -> dict:
    """The table row and detail view of one record (a dict from results.json's "images").

    Returns {"name", "file", "folder", "badge", "badge_text", "score", "score_text", "score_kind",
    "fraction_text", "size_text", "format_text", "camera_text", "thumbs": {kind: {"url", "width", "height"} | None},
    "full": {kind: url | None}, "details": [(label, value)], "notes": [str], "error": str | None, "key": [...],
    "search": str}; `key` is [score | None, verdict rank, fraction | None, name, size | None] for sorting.
    """
    image = entry["image"]
    real = entry.get("path")  # the input's real path, whatever folder localize ran from; an older record's is
    input_path = Path(real if isinstance(real, str) and "\0" not in real else image)  # relative to this folder
    metadata = cached_metadata(input_path, sources.metadata) if "\0" not in image else FileMetadata(notes=[NUL_NOTE])
    badge, badge_text = _badge(entry)
    thumbs, full, notes = _files(entry, input_path, metadata, sources)
    notes = [printable(note) for note in metadata.notes] + notes
    recorded = entry.get("sha256")
    if isinstance(recorded, str) and metadata.sha256 and recorded != metadata.sha256:
        notes.append(f"the file's bytes changed since it was localized (SHA-256 then {printable(recorded[:16])}…, "
                     f"now {metadata.sha256[:16]}…): these results are of the earlier file")
    if isinstance(entry.get("note"), str):
        notes.append(printable(entry["note"]))
    detection, image_score = finite_number(entry.get("detection_score")), finite_number(entry.get("image_score"))
    score = detection if detection is not None else image_score
    fraction = finite_number(entry.get("manipulated_fraction"))
    name = printable(image)
    format_text = f"{metadata.format} · {metadata.width} × {metadata.height}" if metadata.format else ""
    if metadata.jpeg_quality is not None:
        format_text += f" · Q≈{metadata.jpeg_quality}"
    camera = " ".join(printable(metadata.exif[key]) for key in ("make", "model") if key in metadata.exif)
    software = printable(metadata.exif.get("software", ""))
    reason = _reason(entry)
    error = None if reason is None else printable(reason)
    return {
        "name": name,
        "file": printable(os.path.basename(image) or image),
        "folder": printable(_folder_shown(image, sources.input_root)),
        "badge": badge,
        "badge_text": badge_text,
        "badge_title": BADGE_TITLES[badge],
        "score": score,
        "score_text": "" if score is None else f"{score:.3f}",
        "score_kind": None if score is None else ("detection" if detection is not None else "image"),
        "image_score_text": "" if image_score is None or detection is None else f"{image_score:.3f}",
        "fraction_text": "" if fraction is None else f"{100 * fraction:.1f} %",
        "size_text": human_size(metadata.size),
        "format_text": format_text,
        "camera_text": camera,
        "thumbs": thumbs,
        "full": full,
        "details": _metadata_details(metadata) + _score_details(entry, badge),
        "notes": notes,
        "error": error,
        "key": [score, VERDICT_RANK[badge], fraction, name.lower(), metadata.size],
        "search": " ".join([name, badge_text, format_text, camera, software]).lower(),
    }
