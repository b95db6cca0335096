"""Evidence is hostile: file names that carry markup, escape codes, line breaks, spreadsheet formulas or bytes that
are not UTF-8 must reach the terminal as inert text, the CSV files as neutral cells, and results.json exactly."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffiml_cli.cli.app import app
from diffiml_cli.cli.display import markup_safe, visible
from diffiml_cli.evaluation.report import spreadsheet_safe

HOSTILE = [
    "[bold red]evil",
    "[link=https:example.com]click",  # a name holds no "/"
    "esc\x1b[31mred",
    "osc\x1b]8;;https:example.com\x07link\x1b]8;;\x07",
    "new\nline",
    "carriage\rreturn",
    "tab\tand\x7fdel\x9bcsi",
    "bidi\u202eexe.gnp",
    "<script>alert(1)<\\script>",  # the closing tag would need a "/"
    '"><img src=x onerror=alert(1)>',
    '=HYPERLINK("https:example.com")',
    "+cmd",
    "-2+3",
    "@SUM(A1)",
    "x" * 251,  # with ".png": a 255-byte name, the longest most filesystems take
]
INVALID_UTF8 = b"bytes\xff\xfe"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # all but \t and \n


def _write_png(folder: Path, stem: str | bytes, *, corrupt: bool) -> str:
    """Write `<stem>.png` (a valid image, or a truncated one) and return its path as Python lists it."""
    name = (stem + b".png") if isinstance(stem, bytes) else os.fsencode(stem + ".png")
    path = os.path.join(os.fsencode(folder), name)
    if corrupt:
        data = b"\x89PNG\r\n\x1a\n not a whole png"
    else:
        rng = np.random.default_rng(len(name))
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        data = buffer.getvalue()
    with open(path, "wb") as handle:
        handle.write(data)
    return os.fsdecode(path)


def _assert_inert(text: str) -> None:
    assert not RAW_CONTROL.search(text), repr(RAW_CONTROL.search(text).group())


def test_visible_escapes_what_a_terminal_would_obey_and_keeps_the_rest():
    assert visible("esc\x1b[31mred\n.jpg") == "esc\\x1b[31mred\\n.jpg"
    assert visible(os.fsdecode(b"a\xff.png")) == "a\\xff.png"
    assert visible("bidi\u202eexe") == "bidi\\u202eexe" and visible("café ü 写真") == "café ü 写真"
    assert visible("back\\slash") == "back\\\\slash"  # so that a name holding the text "\\n" stays distinct
    assert markup_safe("[bold red]evil") == "\\[bold red]evil"
    assert [spreadsheet_safe(v) for v in ("=1+1", "+1", "-1", "@x", "\tx", "ok", 3.5, -2)] == [
        "'=1+1", "'+1", "'-1", "'@x", "'\tx", "ok", 3.5, -2]


@pytest.fixture
def hostile_folder(tmp_path) -> tuple[Path, list[str], list[str]]:
    """One valid and one corrupt image per hostile name: (folder, valid paths, corrupt paths)."""
    folder = tmp_path / "evidence"
    folder.mkdir()
    stems = HOSTILE + [INVALID_UTF8]
    valid = [_write_png(folder, stem, corrupt=False) for stem in stems]
    corrupt = [_write_png(folder, (stem + b"-bad") if isinstance(stem, bytes) else stem[:240] + "-bad", corrupt=True)
               for stem in stems]
    return folder, valid, corrupt


def test_localize_shows_hostile_names_inertly_one_line_each_and_records_them_exactly(tiny_checkpoint, hostile_folder,
                                                                                      tmp_path):
    folder, valid, corrupt = hostile_folder
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["localize", str(folder), "-c", str(tiny_checkpoint), "-o", str(out),
                                      "--steps", "1", "--ensemble", "1", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    _assert_inert(result.stdout + result.stderr)
    lines = result.stderr.splitlines()
    failures = lines[lines.index("failures:") + 1:]
    # The 255-byte name is read, but its `_uncertainty.png` would be too long a name: one more failure, said so.
    longest = next(path for path in valid if os.path.basename(path).startswith("xxx"))
    assert len(failures) == len(corrupt) + 1  # exactly one line per failure, whatever the name holds
    for path in [*corrupt, longest]:
        assert sum(visible(path) in line for line in failures) == 1, visible(path)
    assert "would be longer than the 255 bytes a file name may have" in next(
        line for line in failures if visible(longest) + ":" in line)
    assert "\\[bold red]evil" not in result.stderr and "[bold red]evil" in result.stderr  # shown, not obeyed
    entries = {entry["image"]: entry for entry in json.loads((out / "results.json").read_text())["images"]}
    assert set(entries) == set(valid) | set(corrupt)  # every name round-trips exactly, undecodable bytes too
    assert all(entries[path]["status"] == "ok" for path in valid if path != longest)
    for path in valid:
        if path == longest:
            continue
        for output in entries[path]["outputs"].values():
            assert os.path.exists(output) and Path(output).resolve().is_relative_to(out.resolve())


def test_evaluate_neutralises_csv_cells_and_keeps_json_names_exact(tiny_checkpoint, hostile_folder, tmp_path):
    folder, valid, corrupt = hostile_folder
    masks = tmp_path / "masks"
    masks.mkdir()
    entries = []
    for index, path in enumerate(valid):
        mask = np.zeros((24, 32), np.uint8)
        mask[4:16, 5:20] = 255
        Image.fromarray(mask).save(masks / f"m{index}.png")
        entries.append([os.path.relpath(path, tmp_path), f"masks/m{index}.png"] if index % 2 else
                       [os.path.relpath(path, tmp_path), "Negative"])
    entries.append([os.path.relpath(corrupt[0], tmp_path), "Negative"])
    manifest = tmp_path / "set.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "-d", str(manifest), "-c",
                                      str(tiny_checkpoint), "--steps", "1", "--ensemble", "1", "--device", "cpu",
                                      "-o", str(out)])
    assert result.exit_code == 1  # the corrupt pair is listed and skipped
    _assert_inert(result.stdout + result.stderr)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("  set: ")]
    assert len(skipped) == 1 and visible(corrupt[0]) in skipped[0]
    with open(out / "per_image.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1 + len(valid)
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")) and not (cell.startswith("-") and not _number(cell))
    document = json.loads((out / "metrics.json").read_text())
    assert document["datasets"]["set"]["bad_pairs"][0]["image"] == os.path.join(str(tmp_path), os.path.relpath(
        corrupt[0], tmp_path))


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
