"""Every kind of bad or odd input of `tests/corpus.py`, run through the real CLI on the tiny checkpoint.

Each test asserts the exit code and the exact message (a one-line `error: ...` on stderr, or a failure in
results.json and at the end of stderr), or, for odd but valid files, the outputs at the original size.
The tables live in tests/corpus.py and tests/corpus_checkpoints.py; `python tests/corpus.py` prints them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from corpus import BATCH_KINDS, DATASET_KINDS, IMAGE_KINDS, SCENARIOS, pattern, photo
from corpus_checkpoints import CHECKPOINT_KINDS, SENTINEL, USAGE_KINDS
from diffiml_cli.cli.app import app
from diffiml_cli.batch import OUTPUT_KINDS
from diffiml_cli.cli.display import cli_wording

FAST = ("--steps", "1", "--ensemble", "1", "--device", "cpu")


def invoke(args: list, **env: str):
    """Run `diffiml *args` in-process; a crash (anything but a clean exit) fails the test with its traceback."""
    result = CliRunner().invoke(app, [str(arg) for arg in args], env=env or None)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(*result.exc_info)))
    return result


def localize(inputs, checkpoint: Path, out: Path, *extra):
    return invoke(["localize", *([inputs] if isinstance(inputs, Path) else inputs), "-c", checkpoint, "-o", out, *FAST, *extra])


def error_line(result) -> str:
    """The one `error: ...` line a failed run must print, and nothing else on stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def assert_outputs(out: Path, stem: str, size: tuple[int, int]) -> None:
    """The four PNGs of one image exist at `size` (width, height), and the mask is 0/255."""
    for kind in OUTPUT_KINDS:
        with Image.open(out / f"{stem}_{kind}.png") as written:
            assert written.size == size, kind
            if kind == "mask":
                assert set(np.unique(np.asarray(written)).tolist()) <= {0, 255}


def make_image(folder: Path, kind_id: str) -> Path:
    kind = IMAGE_KINDS[kind_id]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / kind.name
    kind.make(path)
    return path


# --- image files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind_id", IMAGE_KINDS)
def test_image_kind(kind_id, tiny_checkpoint, tmp_path):
    kind = IMAGE_KINDS[kind_id]
    path = make_image(tmp_path / "in", kind_id)
    if kind.unreadable and os.access(path, os.R_OK):
        pytest.skip("this user can read a file of mode 000 (root)")
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = localize(path, tiny_checkpoint, out, *kind.args)
    assert not [w for w in caught if "PIL" in w.filename], "Pillow's warnings reach stderr"
    if kind.run_error:
        assert result.exit_code == 1
        assert pattern(f"error: {path}: {kind.error}").fullmatch(error_line(result))
        assert not out.exists()
        return
    document = json.loads((out / "results.json").read_text())
    if kind.not_analysed is not None:
        assert result.exit_code == 0, result.output
        assert document["images"] == [] and not list(out.glob("*.png"))
        assert document["not_analysed"] == [{"image": str(path), "reason": kind.not_analysed}]
        assert "0 localized, 0 skipped (outputs exist; --overwrite redoes them), 0 failed, 1 not analysed" \
            in result.stderr
        return
    [entry] = document["images"]
    assert entry["image"] == str(path)
    if kind.error is None:
        assert result.exit_code == 0, result.output
        assert entry["status"] == "ok" and (entry["width"], entry["height"]) == kind.size
        assert document["failures"] == []
        assert_outputs(out, path.stem, kind.size)
        return
    assert result.exit_code == 1, result.output
    error = cli_wording(entry["error"])  # results.json keeps the library wording: `max_pixels`, not --max-pixels
    assert pattern(f"{path}: {kind.error}").fullmatch(error), error
    assert entry["status"] == "failed" and document["failures"] == [{"image": str(path), "error": entry["error"]}]
    lines = result.stderr.splitlines()
    assert ["failed", error] in [line.split(None, 1) for line in lines] and lines[-2:] == ["failures:", f"  {error}"]
    assert not list(out.glob("*.png"))


def test_batch_continues_past_every_bad_kind_and_loses_nothing(tiny_checkpoint, tmp_path):
    """One folder with every bad and odd kind: the good ones are written, every failure listed, exit 1."""
    out = tmp_path / "out"
    earlier = tmp_path / "earlier.png"
    Image.fromarray(photo(16, 16)).save(earlier)
    assert localize(earlier, tiny_checkpoint, out).exit_code == 0
    (out / "notes.txt").write_text("the analyst's notes")
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}

    folder = tmp_path / "batch"
    paths = {kind_id: make_image(folder, kind_id) for kind_id in BATCH_KINDS}
    for kind_id, path in list(paths.items()):
        if IMAGE_KINDS[kind_id].unreadable and os.access(path, os.R_OK):  # root reads it: leave it out
            path.unlink()
            del paths[kind_id]
    kinds = list(paths)
    (folder / "empty-folder.png").mkdir()  # a folder is searched, not read: it is neither output nor failure
    result = localize(folder, tiny_checkpoint, out)

    assert result.exit_code == 1
    document = json.loads((out / "results.json").read_text())
    entries = {entry["image"]: entry for entry in document["images"]}
    assert entries[str(earlier)]["status"] == "ok"  # the earlier run's entry is kept
    bad = {kind_id for kind_id in kinds if IMAGE_KINDS[kind_id].error is not None}
    left_out = {kind_id for kind_id in kinds if IMAGE_KINDS[kind_id].not_analysed is not None}
    assert sorted(item["image"] for item in document["not_analysed"]) == sorted(str(paths[k]) for k in left_out)
    for kind_id, path in paths.items():
        if kind_id in left_out:
            assert str(path) not in entries
            continue
        kind, entry = IMAGE_KINDS[kind_id], entries[str(path)]
        if kind_id in bad:
            assert entry["status"] == "failed" and pattern(f"{path}: {kind.error}").fullmatch(cli_wording(entry["error"]))
        else:
            assert entry["status"] == "ok", entry
            assert_outputs(out, path.stem, kind.size)
    failures = document["failures"]
    assert sorted(f["image"] for f in failures) == sorted(str(paths[kind_id]) for kind_id in bad)
    lines = result.stderr.splitlines()
    assert lines[-len(failures) - 1:] == ["failures:", *(f"  {cli_wording(f['error'])}" for f in failures)]
    assert f"{len(paths) - len(bad) - len(left_out)} localized, 0 skipped" in result.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.png") if p.name in before} == before
    assert (out / "notes.txt").read_text() == "the analyst's notes"


# --- scenarios ---------------------------------------------------------------------------------------------


def test_out_has_results_skips_unless_overwrite_and_keeps_old_files(tiny_checkpoint, tmp_path):
    assert "out-has-results" in SCENARIOS
    folder = tmp_path / "in"
    first, second = make_image(folder, "tiny-8x8"), make_image(folder, "bmp")
    out = tmp_path / "out"
    assert localize(first, tiny_checkpoint, out).exit_code == 0
    (out / "tiny_mask.png").write_bytes(b"an analyst's edited mask")
    (out / "report.docx").write_bytes(b"keep me")
    again = localize(folder, tiny_checkpoint, out)
    assert again.exit_code == 0 and "1 localized, 1 skipped" in again.stderr
    assert (out / "tiny_mask.png").read_bytes() == b"an analyst's edited mask"
    statuses = {Path(e["image"]).name: e["status"] for e in json.loads((out / "results.json").read_text())["images"]}
    assert statuses == {first.name: "ok", second.name: "ok"}  # the skipped image keeps the entry of the run that wrote it
    forced = localize(first, tiny_checkpoint, out, "--overwrite")
    assert forced.exit_code == 0 and "1 localized, 0 skipped" in forced.stderr
    assert_outputs(out, "tiny", (8, 8))
    assert (out / "report.docx").read_bytes() == b"keep me" and (out / "bitmap_mask.png").is_file()


def test_outputs_of_another_image_are_not_mistaken_for_this_ones(tiny_checkpoint, tmp_path):
    assert "out-holds-another-image" in SCENARIOS
    first, second = make_image(tmp_path / "first", "tiny-8x8"), make_image(tmp_path / "second", "tiny-8x8")
    out = tmp_path / "out"
    assert localize(first, tiny_checkpoint, out).exit_code == 0
    mask = (out / "tiny_mask.png").read_bytes()
    result = localize(second, tiny_checkpoint, out)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"  {second}: {out} already holds the outputs (tiny_mask.png, ...) of another image, {first}; "
        "use another --out, or --overwrite to replace them")
    assert (out / "tiny_mask.png").read_bytes() == mask
    forced = localize(second, tiny_checkpoint, out, "--overwrite")
    assert forced.exit_code == 0
    assert [e["image"] for e in json.loads((out / "results.json").read_text())["images"]] == [str(second)]


def test_out_equal_to_input_folder_never_clobbers_inputs(tiny_checkpoint, tmp_path):
    assert {"out-equals-in", "out-clobbers-input"} <= set(SCENARIOS)
    folder = tmp_path / "in"
    make_image(folder, "tiny-8x8"), make_image(folder, "jpeg-cmyk")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = localize(folder, tiny_checkpoint, folder)
    assert result.exit_code == 0, result.output
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert_outputs(folder, "cmyk", (40, 30))

    clash = tmp_path / "clash"
    make_image(clash, "tiny-8x8")
    Image.fromarray(photo(8, 8, 1)).save(clash / "tiny_mask.png")  # an input named like tiny.png's mask
    before = {p.name: p.read_bytes() for p in clash.iterdir()}
    result = localize(clash, tiny_checkpoint, clash)
    assert result.exit_code == 1
    assert f"  {clash / 'tiny.png'}: refusing to overwrite input {clash / 'tiny_mask.png'}" in result.stderr.splitlines()
    assert {name: (clash / name).read_bytes() for name in before} == before


def test_two_inputs_with_one_stem_do_not_overwrite_each_other(tiny_checkpoint, tmp_path):
    assert "same-stem" in SCENARIOS
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo(30, 40)).save(folder / "a.jpg")
    Image.fromarray(photo(20, 24)).save(folder / "a.png")
    out = tmp_path / "out"
    result = localize(folder, tiny_checkpoint, out)
    assert result.exit_code == 1
    assert_outputs(out, "a", (40, 30))  # the JPEG's, not overwritten by the PNG's
    [failure] = json.loads((out / "results.json").read_text())["failures"]
    assert cli_wording(failure["error"]) == (f"{folder / 'a.png'}: its outputs (a_mask.png, ...) would overwrite those of "
                                f"{folder / 'a.jpg'}; rename one of them or localize it with another --out")


def test_out_that_is_a_file_is_one_line(tiny_checkpoint, tmp_path):
    assert "out-is-a-file" in SCENARIOS
    image = make_image(tmp_path / "in", "tiny-8x8")
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    result = localize(image, tiny_checkpoint, out)
    assert result.exit_code == 1
    assert error_line(result) == f"error: {out}: the output folder exists and is not a folder"


def test_nested_folders_are_mirrored(tiny_checkpoint, tmp_path):
    assert "nested-folders" in SCENARIOS
    folder = tmp_path / "in"
    make_image(folder, "tiny-8x8"), make_image(folder / "sub" / "deeper", "webp")
    result = localize(folder, tiny_checkpoint, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert_outputs(tmp_path / "out", "tiny", (8, 8))
    assert_outputs(tmp_path / "out" / "sub" / "deeper", "lossy", (40, 30))


@pytest.mark.slow
def test_debug_gives_a_traceback_and_plain_runs_one_line(tmp_path):
    assert "debug-traceback" in SCENARIOS
    spec = tmp_path / "set.json"
    spec.write_text('{"a.png": "gt/a.png"}')
    message = f"{spec}: top level is a JSON dict"
    plain = invoke(["evaluate", "-d", spec])
    assert plain.exit_code == 1 and error_line(plain).startswith(f"error: {message}")
    env = {**os.environ, "DIFFIML_DEBUG": "1"}
    debug = subprocess.run([sys.executable, "-m", "diffiml_cli", "evaluate", "-d", str(spec)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode == 1
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert f"diffiml_cli.errors.DiffimlError: {message}" in debug.stderr
    assert "load_spec" in debug.stderr  # the frames show where it was raised


# --- `diffiml evaluate` manifests -----------------------------------------------------------------------


def make_dataset(root: Path, kind_id: str) -> Path:
    """The dataset of one DATASET_KINDS entry: 40x30 images a.png, b.png and a mask gt/a.png beside its spec."""
    kind = DATASET_KINDS[kind_id]
    mask = np.full((30, 40), kind.mask_value, np.uint8)
    mask[5:15, 10:30] = 255
    if kind.entries == "folder":  # Tp/Gt: a good pair and one whose mask has the wrong size
        for sub in ("Tp", "Gt"):
            (root / sub).mkdir(parents=True)
        for name in ("a.png", "b.png"):
            Image.fromarray(photo(30, 40)).save(root / "Tp" / name)
        Image.fromarray(mask[:24]).save(root / "Gt" / "a.png")
        Image.fromarray(mask).save(root / "Gt" / "b.png")
        return root
    (root / "gt").mkdir(parents=True)
    Image.fromarray(photo(30, 40)).save(root / "a.png")
    Image.fromarray(photo(30, 40, 1)).save(root / "b.png")
    Image.fromarray(mask).save(root / "gt" / "a.png")
    spec = root / "set.json"
    spec.write_text(kind.entries if isinstance(kind.entries, str) else json.dumps(kind.entries))
    return spec


@pytest.mark.parametrize("kind_id", DATASET_KINDS)
def test_dataset_kind(kind_id, tiny_checkpoint, tmp_path):
    kind = DATASET_KINDS[kind_id]
    root = tmp_path / "set"
    spec = make_dataset(root, kind_id)
    out = tmp_path / "out"
    result = invoke(["evaluate", "-d", spec, "-c", tiny_checkpoint, "--out", out, "--json", *FAST])
    assert result.exit_code == kind.exit_code, result.output
    if kind.message is not None:
        expected = kind.message.replace("<spec>", str(spec)).replace("<name>", spec.stem).replace("<root>", str(root))
        if expected.startswith("error: "):
            assert pattern(expected).fullmatch(error_line(result)), result.stderr
        else:
            assert any(pattern(expected).fullmatch(line) for line in result.stderr.splitlines()), result.stderr
    if kind.exit_code == 0:
        metrics = json.loads(result.stdout)["datasets"][spec.stem]["metrics"]
        n_authentic = sum(mask.lower() == "negative" for _, mask in kind.entries)
        assert (metrics["n_tampered"], metrics["n_authentic"]) == (len(kind.entries) - n_authentic, n_authentic)
        assert (out / "metrics.json").is_file()


# --- checkpoints -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind_id", CHECKPOINT_KINDS)
def test_checkpoint_kind(kind_id, tiny_checkpoint, tmp_path):
    kind = CHECKPOINT_KINDS[kind_id]
    folder = tmp_path / "checkpoint"
    checkpoint = kind.make(folder, tiny_checkpoint)
    image = make_image(tmp_path / "in", "tiny-8x8")
    out = tmp_path / "out"
    result = localize(image, checkpoint, out, *kind.args)
    if kind.message is None:
        assert result.exit_code == 0, result.output
        assert_outputs(out, "tiny", (8, 8))
    else:
        assert result.exit_code == 1
        assert pattern(kind.message.replace("<ckpt>", str(checkpoint))).fullmatch(error_line(result)), result.stderr
    assert not (folder / SENTINEL).exists(), "the pickle's payload ran"


# --- usage errors: exit 2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind_id", USAGE_KINDS)
def test_usage_kind(kind_id, tmp_path):
    kind = USAGE_KINDS[kind_id]
    image = make_image(tmp_path / "in", "tiny-8x8")
    result = invoke([str(image) if arg == "<image>" else arg for arg in kind.args])
    assert result.exit_code == 2
    assert "Usage: " in result.stderr
    assert any(pattern(kind.message).fullmatch(line) for line in result.stderr.splitlines()), result.stderr


def test_the_documented_table_is_the_tested_one():
    """docs/bad-input.md is generated from these tables (`python tests/corpus.py --write`)."""
    from corpus import DOC, DOC_HEAD, markdown_tables

    assert DOC.read_text(encoding="utf-8") == DOC_HEAD + markdown_tables() + "\n", \
        "docs/bad-input.md is stale: run `python tests/corpus.py --write`"
