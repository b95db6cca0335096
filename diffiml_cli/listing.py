"""Which files a `localize` run reads: files, folders (recursive, links followed, each real folder once) and
globs expanded into image paths, without hangs on link loops and without leaving hidden files out."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from diffiml_cli.errors import DiffimlError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
MAX_FOLDER_DEPTH = 256  # deeper nesting than any real case, shallower than a maze made to exhaust the walk


def _is_image_file(path: Path) -> bool:
    # Hidden files are kept: they are evidence like any other (a macOS "._x.jpg" resource fork is told apart
    # by its content when the run is planned, and our own temporaries end in ".tmp"). Anything with an image
    # suffix that is not a folder is kept, broken links and FIFOs included, so that decoding reports it
    # instead of the file silently going missing.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()


def _walk_images(folder: Path) -> list[Path]:
    """The image files below `folder`, following links to folders but entering each real folder once (by
    device and inode), so link loops neither hang nor repeat; deeper than MAX_FOLDER_DEPTH is refused."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [(folder, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            status = current.stat()
        except OSError:
            continue  # a folder that vanished or cannot be entered: its files cannot be listed either way
        if (status.st_dev, status.st_ino) in seen:
            continue
        seen.add((status.st_dev, status.st_ino))
        if depth > MAX_FOLDER_DEPTH:
            raise DiffimlError(f"{folder}: folders nested more than {MAX_FOLDER_DEPTH} deep (at {current})")
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if _entry_is_dir(entry):
                stack.append((path, depth + 1))
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
    return sorted(found)


def _entry_is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (recursive) and glob patterns into a list of image paths.

    A file named explicitly is kept whatever its extension or content (decoding reports it
    later); folders (each real folder once, links followed) and glob matches contribute every entry
    with an IMAGE_EXTENSIONS suffix, hidden ones too (broken links and special files included, so
    they are reported), in sorted order. Duplicates (by real path) are dropped, keeping the first.
    Raises DiffimlError for an input that does not exist, a glob matching no image, a folder holding
    none, or folders nested deeper than MAX_FOLDER_DEPTH.
    """
    listed: list[Path] = []
    for item in inputs:
        try:
            listed.extend(_expand(item))
        except OSError as error:  # a name the system refuses (longer than a name may be, ...)
            raise DiffimlError(f"{item}: cannot be listed ({error.strerror or error})") from None
    seen: set[str] = set()
    unique: list[Path] = []
    for path in listed:
        key = os.path.realpath(path)  # one file named twice (through a link, or . and ..) is one input
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _expand(item: str | Path) -> list[Path]:
    """One input of `list_images` -> its image paths."""
    text = str(item)
    path = Path(item)
    if path.is_dir():
        found = _walk_images(path)
        if not found:
            raise DiffimlError(f"{path}: folder contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    elif os.path.lexists(path):
        found = [path]
    elif glob.has_magic(text):
        found = []
        for match in sorted(glob.glob(text, recursive=True)):
            match_path = Path(match)
            found.extend(_walk_images(match_path) if match_path.is_dir() else
                         [match_path] if _is_image_file(match_path) else [])
        if not found:
            raise DiffimlError(f"{text}: pattern matches no image files")
    else:
        raise DiffimlError(f"{text}: no such file or folder")
    return found

