"""`diffiml report`: the HTML case report of a localize folder, parsed back with the standard library."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffiml_cli.cli.app import app
from diffiml_cli.errors import DiffimlError
from diffiml_cli.report import build_report, read_metadata
from diffiml_cli.report.metadata import estimate_jpeg_quality
from report_fixtures import fake_batch, hostile_records, page_data, parse_page, strict_json, write_results

runner = CliRunner()

HOSTILE_NAMES = ['"><img src=x onerror=alert(1)>.png', "\x1b[31mred.png", "new\nline.png", '=HYPERLINK("x").png',
                 os.fsdecode(b"caf\xe9.png")]
SCRIPT_NAME = "<script>alert(1)</script>.png"  # a folder "<script>alert(1)<" holding "script>.png"
EXIF_SOFTWARE, EXIF_MAKE = "<script>alert(2)</script>", '"><img onerror=alert(3) src=x>'
OUR_TAGS = {"html", "head", "meta", "title", "script", "style", "body", "header", "h1", "h2", "div", "span", "b", "i",
            "main", "section", "p", "dl", "dt", "dd", "ul", "li", "input", "button", "table", "thead", "tbody",
            "tr", "th", "td", "a", "img", "dialog", "label", "figure", "figcaption"}


def _picture(seed: int, height: int = 40, width: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def batch(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real `localize` run into out/: plain, hostile-named and EXIF-carrying inputs, and one corrupt JPEG."""
    root = tmp_path_factory.mktemp("report")
    inputs = root / "inputs"
    (inputs / "<script>alert(1)<").mkdir(parents=True)
    _picture(0).save(inputs / "plain.png")
    _picture(1).save(inputs / "<script>alert(1)<" / "script>.png")
    for seed, name in enumerate(HOSTILE_NAMES, start=2):
        _picture(seed).save(inputs / name)
    exif = Image.Exif()
    exif[0x0131], exif[0x010F] = EXIF_SOFTWARE, EXIF_MAKE
    _picture(9).save(inputs / "camera.jpg", quality=80, exif=exif.tobytes())
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    out = root / "out"
    result = runner.invoke(app, ["localize", str(inputs), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                                 "--steps", "1", "--ensemble", "1", "--device", "cpu"])
    assert result.exit_code == 1, result.output  # the corrupt file fails; the others are written
    return out


@pytest.fixture
def out_dir(batch, tmp_path) -> Path:
    """A private copy of the batch's output folder (its records still name the original's paths)."""
    copy = tmp_path / "out"
    shutil.copytree(batch, copy)
    return copy


def _records(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["images"]


def _resolves(report: Path, url: str) -> bool:
    return os.path.isfile(os.path.join(os.fsencode(report.parent), unquote_to_bytes(url)))


def _links(page) -> list[str]:
    return [attrs[name] for _, attrs in page.elements for name in ("src", "href") if attrs.get(name)]


def _snapshot(*folders: Path, skip: set[str] = frozenset()) -> dict[Path, tuple[bytes, int]]:
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for folder in folders for path in folder.rglob("*")
            if path.is_file() and not skip & set(path.relative_to(folder).parts)}


def test_every_image_has_a_row_whose_links_resolve(out_dir):
    report = build_report(out_dir)
    page = parse_page(report)
    html = report.read_text(encoding="utf-8")
    rows = [attrs for tag, attrs in page.elements if tag == "tr" and "data-i" in attrs]
    data = page_data(page)
    assert len(rows) == len(data["rows"]) == len(_records(out_dir)) == 9
    links = _links(page) + [url for row in data["rows"] for url in row["d"]["full"].values() if url]
    assert links and all(_resolves(report, url) for url in links), [u for u in links if not _resolves(report, u)]
    assert all(not os.path.isabs(unquote_to_bytes(url)) for url in links)
    assert "http://" not in html and "https://" not in html
    thumbs = sum(1 for tag, attrs in page.elements if tag == "img" and attrs.get("class") == "thumb")
    assert thumbs == 3 * 8  # original, overlay and uncertainty of every image but the failed one


def test_sha256_and_metadata_match_the_inputs(out_dir):
    rows = page_data(parse_page(build_report(out_dir)))["rows"]
    by_name = {}
    for row in rows:
        by_name[row["d"]["name"]] = dict(row["d"]["details"])
    for record in _records(out_dir):
        facts = next(facts for name, facts in by_name.items() if name == _shown(record["image"]))
        data = Path(record["image"]).read_bytes()
        assert facts["SHA-256"] == hashlib.sha256(data).hexdigest()
        assert facts["File size"].startswith(f"{len(data):,} bytes")
    camera = by_name[_shown(next(r["image"] for r in _records(out_dir) if r["image"].endswith("camera.jpg")))]
    assert camera["Software"] == EXIF_SOFTWARE and camera["Camera make"] == EXIF_MAKE
    assert camera["Format"] == "JPEG, 56 × 40 px" and abs(int(camera["JPEG quality"].split()[1]) - 80) <= 2
    assert by_name[_shown(next(r["image"] for r in _records(out_dir) if r["image"].endswith("plain.png")))][
        "EXIF"] == "no EXIF"


def _shown(name: str) -> str:
    from diffiml_cli.report.rows import printable
    return printable(name)


def test_failed_input_is_listed_with_its_reason(out_dir):
    page = parse_page(build_report(out_dir))
    failed = next(r for r in _records(out_dir) if r["status"] == "failed")
    assert failed["image"].endswith("corrupt.jpg") and failed["error"]
    text = "".join(page.text)
    reason = failed["error"].removeprefix(failed["image"] + ": ")  # the name is shown beside it
    assert reason and reason != failed["error"]
    assert "Failed inputs (1)" in text and f"{_shown(failed['image'])}: {reason}" in text
    row = next(row for row in page_data(page)["rows"] if row["d"]["badge"] == "failed")
    assert row["d"]["error"] == reason and row["d"]["full"]["overlay"] is None


def test_building_changes_no_input_or_output_file(out_dir, batch):
    inputs = Path(_records(out_dir)[0]["image"]).parent
    before = _snapshot(out_dir, inputs)
    build_report(out_dir)
    build_report(out_dir)
    after = _snapshot(out_dir, inputs, skip={"thumbs", "report.html", ".report.lock"})
    assert after == {path: value for path, value in before.items() if path in after}
    assert set(before) <= set(after)


def test_hostile_names_and_exif_never_become_markup(out_dir):
    report = build_report(out_dir)
    page = parse_page(report)
    tags = [tag for tag, _ in page.elements]
    assert set(tags) <= OUR_TAGS
    assert tags.count("script") == 3  # the class switch, the JSON data and the page's script: ours only
    assert all(attrs.get("class") in ("thumb", "full") for tag, attrs in page.elements if tag == "img")
    assert not [name for _, attrs in page.elements for name in attrs if name.startswith("on")]
    text = "".join(page.text)
    titles = " ".join(attrs["title"] for tag, attrs in page.elements if tag == "tr" and "title" in attrs)
    for shown in (SCRIPT_NAME, '"><img src=x onerror=alert(1)>.png', "\\x1b[31mred.png", "new\\nline.png",
                  "caf\\xe9.png", '=HYPERLINK("x").png'):
        assert shown in titles  # the whole name, inert in an attribute
        assert shown.rsplit("/", 1)[-1] in text  # and its file name as text
    html = report.read_text(encoding="utf-8")
    assert "\x1b" not in html
    assert "<script>alert" not in html and "<img src=x" not in html and "<img onerror" not in html


def test_missing_or_corrupt_output_png_gives_a_row_with_a_note(out_dir):
    records = [r for r in _records(out_dir) if r["status"] == "ok"]
    missing, corrupt = (Path(r["outputs"]["overlay"]).name for r in records[:2])
    (out_dir / missing).unlink()
    (out_dir / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = build_report(out_dir)
    page = parse_page(report)
    rows = page_data(page)["rows"]
    assert len(rows) == len(_records(out_dir))
    notes = {row["d"]["name"]: row["d"]["notes"] for row in rows}
    assert "overlay output missing" in notes[_shown(records[0]["image"])]
    assert any(note.startswith("overlay: ") for note in notes[_shown(records[1]["image"])])
    assert all(_resolves(report, url) for url in _links(page))


def test_rerun_after_more_images_adds_their_rows_and_reuses_thumbnails(out_dir, tiny_checkpoint, tmp_path):
    report = build_report(out_dir)
    thumbs = {path: path.stat().st_mtime_ns for path in (out_dir / "thumbs").glob("*.jpg")}
    new = tmp_path / "more" / "late.png"
    new.parent.mkdir()
    _picture(42).save(new)
    result = runner.invoke(app, ["localize", str(new), "--checkpoint", str(tiny_checkpoint), "--out", str(out_dir),
                                 "--steps", "1", "--ensemble", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(out_dir)])
    assert result.exit_code == 0 and "report.html" in result.output
    names = [row["d"]["name"] for row in page_data(parse_page(report))["rows"]]
    assert len(names) == 10 and str(new) in names
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in thumbs.items())  # reused, not rewritten


def test_changed_output_gets_a_new_thumbnail(tmp_path):
    out = fake_batch(tmp_path, {"a.png": 0.9})
    build_report(out)
    thumb = next((out / "thumbs").glob("*_overlay.jpg"))
    first = thumb.read_bytes()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(out / "a_overlay.png")
    build_report(out)
    assert thumb.read_bytes() != first


def test_missing_or_corrupt_results_json_is_a_clear_error(tmp_path):
    with pytest.raises(DiffimlError, match="results.json: no such file"):
        build_report(tmp_path)
    (tmp_path / "results.json").write_text('{"images": [')
    with pytest.raises(DiffimlError, match="corrupt results file"):
        build_report(tmp_path)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "corrupt" in result.output
    with pytest.raises(DiffimlError, match="no such folder"):
        build_report(tmp_path / "absent")


def test_malformed_entries_are_left_out_not_fatal(tmp_path):
    out = fake_batch(tmp_path, {"a.png": 0.2})
    records = _records(out) + [{"image": 3}, "junk", {"image": "x.png", "status": "odd"}]
    write_results(out, records)
    page = parse_page(build_report(out))
    assert len(page_data(page)["rows"]) == 1 and "3 malformed entries" in "".join(page.text)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_jpeg_quality_estimate_is_within_two(tmp_path, quality):
    path = tmp_path / f"q{quality}.jpg"
    _picture(quality, 64, 64).save(path, quality=quality)
    metadata = read_metadata(path)
    assert metadata.format == "JPEG" and abs(metadata.jpeg_quality - quality) <= 2
    assert metadata.jpeg_tables_standard  # Pillow's encoder is libjpeg: the IJG tables, scaled


def test_quality_estimator_edge_cases(tmp_path):
    assert estimate_jpeg_quality({}) is None
    assert estimate_jpeg_quality({0: [1] * 64}) == (100, True)
    missing = read_metadata(tmp_path / "absent.jpg")
    assert missing.sha256 is None and missing.notes == ["input file not found"]
    (tmp_path / "junk.png").write_bytes(b"junk")
    junk = read_metadata(tmp_path / "junk.png")
    assert junk.size == 4 and junk.format is None and junk.notes == ["not a recognised image file"]


def test_stat_cache_reuses_values_within_and_across_runs(tmp_path):
    from diffiml_cli.report.cache import StatCache, signature

    source = tmp_path / "a.bin"
    source.write_bytes(b"one")
    cache = StatCache(tmp_path / "cache.json", salt=1)
    assert cache.lookup("a", signature(source)) is None
    cache.store("a", signature(source), {"v": 1})
    assert cache.lookup("a", signature(source)) == {"v": 1}  # an input listed twice is read once
    cache.save()
    assert StatCache(tmp_path / "cache.json", salt=1).lookup("a", signature(source)) == {"v": 1}
    assert StatCache(tmp_path / "cache.json", salt=2).lookup("a", signature(source)) is None
    source.write_bytes(b"changed")
    assert StatCache(tmp_path / "cache.json", salt=1).lookup("a", signature(source)) is None


def test_the_report_library_does_not_load_torch():
    # The report reads files only; loading torch would cost a GB of memory and seconds per run.
    code = "import sys, diffiml_cli.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_run_settings_name_the_calibration_and_the_precisions_it_was_scored_in():
    from diffiml_cli.report.build import run_settings

    calibration = {"threshold": 0.8088, "target_far": 0.05, "far": 0.05, "tpr": 0.56, "data": "cal: /sets/cal",
                   "precision": "bf16,fp32"}
    line = dict(run_settings({"calibration": calibration}))["Calibration"]
    assert "threshold 0.8088" in line and "on cal: /sets/cal, scored in bf16,fp32" in line
    older = dict(run_settings({"calibration": {**calibration, "precision": ""}}))["Calibration"]
    assert older.endswith("on cal: /sets/cal")  # configs from before the field say nothing of it


def test_a_page_of_nan_infinite_and_junk_records_holds_strict_json_and_shows_missing_scores(tmp_path):
    scores = {f"img_{index}.png": round(0.1 + 0.1 * index, 2) for index in range(8)}
    out = fake_batch(tmp_path, scores)
    records = hostile_records(out)
    write_results(out, records)  # json.dumps writes NaN and Infinity as the bare words: not JSON
    assert "NaN" in (out / "results.json").read_text()
    page = parse_page(build_report(out))
    data = strict_json(next(script for script in page.scripts if script.lstrip().startswith("{")))
    assert len(data["rows"]) == len(records) == 8
    by_name = {row["d"]["name"]: row for row in data["rows"]}
    for record in records[:6]:  # none of their scores is a finite number: missing, sorted last
        row = by_name[_shown(record["image"])]
        assert row["k"][0] is None and not any(label == "Detection score" for label, _ in row["d"]["details"])
    assert [by_name[_shown(r["image"])]["k"][0] for r in records[6:]] == [0.7, 0.8]
    html = (out / "report.html").read_text(encoding="utf-8")
    score_cells = {int(i): cell for i, cell in re.findall(r'<tr data-i="(\d+)".*?<td class="num">(.*?)</td>', html, re.S)}
    assert len(score_cells) == 8
    for index, row in enumerate(data["rows"]):  # a missing score is shown as missing, a score as itself
        assert score_cells[index] == "—" if row["k"][0] is None else f"{row['k'][0]:.3f}" in score_cells[index]


HOSTILE_FAILURES = ['<img src=x onerror=alert(1)>.png', 'x</script><script>alert(2)</script>.png',
                    '"quoted" and \'single\' & <b>bold</b>.jpg']


def test_hostile_names_in_the_failed_inputs_list_and_the_detail_view_stay_text(tmp_path):
    out = fake_batch(tmp_path, {"fine.png": 0.4})
    failures = [{"image": str(tmp_path / "inputs" / name), "status": "failed", "outputs": {},
                 "error": f"{tmp_path / 'inputs' / name}: cannot decode <script>alert(3)</script> \"{name}\""}
                for name in HOSTILE_FAILURES]
    write_results(out, _records(out) + failures)
    report = build_report(out)
    page = parse_page(report)
    html = report.read_text(encoding="utf-8")
    tags = [tag for tag, _ in page.elements]
    assert set(tags) <= OUR_TAGS and tags.count("script") == 3
    assert all(attrs.get("class") in ("thumb", "full") for tag, attrs in page.elements if tag == "img")
    assert not [name for _, attrs in page.elements for name in attrs if name.startswith("on")]
    assert "<img src=x" not in html and "<script>alert" not in html and "</script><script>" not in html
    assert "<b>bold" not in html
    text = "".join(page.text)
    assert f"Failed inputs ({len(HOSTILE_FAILURES)})" in text
    rows = {row["d"]["name"]: row["d"] for row in strict_json(page.scripts[1])["rows"]}
    for failure, name in zip(failures, HOSTILE_FAILURES):
        reason = f"cannot decode <script>alert(3)</script> \"{name}\""
        assert f"{_shown(failure['image'])}: {reason}" in text  # the list shows both as text, once unescaped
        detail = rows[_shown(failure["image"])]  # the detail view sets these with textContent
        assert detail["error"] == reason and detail["badge"] == "failed"
