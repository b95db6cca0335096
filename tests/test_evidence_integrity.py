"""Evidence integrity, tried as the person whose photo is under investigation would: a result is never credited
to another image, diffiml's outputs are never analysed as evidence, nothing outside --out is written, one image
that breaks the model fails alone, and masks count whatever their form.

Each test states a rule of README *Exit codes and bad input*; each failed on the code before these rules.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from corpus import SCENARIOS, photo
from diffiml_cli.batch import LocalizeOptions, localize_files
from diffiml_cli.batch.provenance import read_mark
from diffiml_cli.cli.app import app
from diffiml_cli.pipeline import LocalizationPipeline, load_localizer

FAST = ["--steps", "1", "--ensemble", "1", "--device", "cpu"]
KINDS = ("mask", "prob", "overlay", "uncertainty")


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _localize(inputs, checkpoint: Path, out: Path, *extra):
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return _run("localize", *inputs, "-c", checkpoint, "-o", out, *FAST, *extra)


def _save(path: Path, seed: int = 0, size: tuple[int, int] = (24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(*size, seed)).save(path)
    return path


def _document(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _poison(monkeypatch, path: Path, error: BaseException) -> None:
    """Make the model raise `error` on any batch that holds the image of `path` (as a driver or OOM would)."""
    poisoned = np.asarray(Image.open(path))
    original = LocalizationPipeline.predict_many

    def predict_many(self, images, sampling=None):
        if any(image.shape == poisoned.shape and np.array_equal(image, poisoned) for image in images):
            raise error
        return original(self, images, sampling)

    monkeypatch.setattr(LocalizationPipeline, "predict_many", predict_many)


# --- one image that breaks the model fails alone --------------------------------------------------------


def test_an_exception_while_predicting_one_image_fails_that_image_and_the_batch_goes_on(tiny_checkpoint, tmp_path,
                                                                                        monkeypatch):
    assert "predict-raises" in SCENARIOS
    paths = [_save(tmp_path / "in" / f"p{i}.png", seed=i) for i in range(5)]
    _poison(monkeypatch, paths[2], RuntimeError("CUDA error: an illegal memory access was encountered"))
    pipeline = load_localizer(tiny_checkpoint, device="cpu", batch_size=2)
    out = tmp_path / "out"
    summary = localize_files(paths, pipeline, LocalizeOptions(out_dir=out, batch_size=2))
    statuses = {Path(r.image).name: r.status for r in summary.results}
    assert statuses == {"p0.png": "ok", "p1.png": "ok", "p2.png": "failed", "p3.png": "ok", "p4.png": "ok"}
    [failure] = _document(out)["failures"]
    assert failure == {"image": str(paths[2]), "error": f"{paths[2]}: cannot be localized (RuntimeError: CUDA "
                                                          "error: an illegal memory access was encountered)"}
    for name in ("p0", "p1", "p3", "p4"):  # the image sharing its batch too
        assert all((out / f"{name}_{kind}.png").is_file() for kind in KINDS)
    assert not list(out.glob("p2_*.png"))


def test_evaluate_skips_a_pair_whose_prediction_raises_and_scores_the_rest(tiny_checkpoint, tmp_path, monkeypatch):
    assert "evaluate-predict-raises" in SCENARIOS
    for index in range(3):
        _save(tmp_path / "set" / "Au" / f"a{index}.png", seed=index)
    _poison(monkeypatch, tmp_path / "set" / "Au" / "a1.png", MemoryError("cannot allocate 7 GiB"))
    result = _run("evaluate", "-d", f"set={tmp_path / 'set'}", "-c", tiny_checkpoint, "-o", tmp_path / "eval",
                  "--batch-size", "3", *FAST)
    assert result.exit_code == 1, result.output
    dataset = json.loads((tmp_path / "eval" / "metrics.json").read_text())["datasets"]["set"]
    assert dataset["metrics"]["n_authentic"] == 2
    [bad] = dataset["bad_pairs"]
    assert bad["reason"].endswith("a1.png: cannot be localized (MemoryError: cannot allocate 7 GiB)")


# --- a result is never credited to another image ------------------------------------------------------------


def test_a_photo_with_the_same_name_in_another_folder_is_not_credited_from_another_working_folder(
        tiny_checkpoint, tmp_path, monkeypatch):
    assert "same-name-other-folder" in SCENARIOS
    first, second = _save(tmp_path / "a" / "p.png", seed=1), _save(tmp_path / "b" / "p.png", seed=2)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "a")
    assert _localize(Path("p.png"), tiny_checkpoint, Path("../out")).exit_code == 0
    monkeypatch.chdir(tmp_path / "b")
    result = _localize(second, tiny_checkpoint, out)
    assert result.exit_code == 1, result.output
    assert f"of another image, {first}" in result.stderr
    entries = {entry["path"]: entry for entry in _document(out)["images"]}
    assert entries[str(first.resolve())]["status"] == "ok"
    assert entries[str(second.resolve())]["status"] == "failed" and entries[str(second.resolve())]["outputs"] == {}


def test_the_same_photo_run_from_two_working_folders_is_one_record(tiny_checkpoint, tmp_path, monkeypatch):
    assert "same-photo-two-folders" in SCENARIOS
    image = _save(tmp_path / "case" / "p.png")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "case")
    assert _localize(Path("p.png"), tiny_checkpoint, out).exit_code == 0
    score = _document(out)["images"][0]["image_score"]
    monkeypatch.chdir(tmp_path)
    again = _localize(Path("case/p.png"), tiny_checkpoint, out)
    assert again.exit_code == 0 and "0 localized, 1 skipped" in again.stderr
    [entry] = _document(out)["images"]
    assert entry["path"] == str(image.resolve()) and entry["image_score"] == score
    assert entry["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


def test_a_file_replaced_since_its_run_is_not_credited_its_old_results(tiny_checkpoint, tmp_path):
    assert "file-replaced" in SCENARIOS
    image, out = _save(tmp_path / "in" / "p.png", seed=1), tmp_path / "out"
    assert _localize(image, tiny_checkpoint, out).exit_code == 0
    mask = (out / "p_mask.png").read_bytes()
    _save(image, seed=9)  # another photo under the same path
    result = _localize(image, tiny_checkpoint, out)
    assert result.exit_code == 1
    assert "computed from other bytes" in result.stderr
    assert (out / "p_mask.png").read_bytes() == mask
    assert _localize(image, tiny_checkpoint, out, "--overwrite").exit_code == 0
    assert _document(out)["images"][0]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


def test_outputs_written_before_a_stop_took_their_record_are_computed_again_with_a_full_record(
        tiny_checkpoint, tmp_path):
    assert "outputs-without-record" in SCENARIOS
    image, out = _save(tmp_path / "in" / "p.png"), tmp_path / "out"
    assert _localize(image, tiny_checkpoint, out).exit_code == 0
    first = _document(out)["images"][0]
    (out / "results.jsonl").unlink()  # what a SIGKILL between the PNGs and their record leaves
    (out / "results.json").unlink()
    again = _localize(image, tiny_checkpoint, out)
    assert again.exit_code == 0 and "1 localized, 0 skipped" in again.stderr
    [entry] = _document(out)["images"]
    assert entry["status"] == "ok"
    assert {k: entry[k] for k in ("image_score", "width", "height", "sha256", "manipulated_fraction")} == \
        {k: first[k] for k in ("image_score", "width", "height", "sha256", "manipulated_fraction")}


def test_outputs_that_no_record_or_mark_vouches_for_are_refused(tiny_checkpoint, tmp_path):
    assert "unvouched-outputs" in SCENARIOS
    image, out = _save(tmp_path / "in" / "p.png"), tmp_path / "out"
    out.mkdir()
    for kind in KINDS:  # an older diffiml's outputs, or files put there by hand: whose they are is unknown
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(out / f"p_{kind}.png")
    result = _localize(image, tiny_checkpoint, out)
    assert result.exit_code == 1
    assert "that no record of this image vouches for" in result.stderr
    assert _document(out)["images"][0]["status"] == "failed"


def test_every_output_png_names_the_bytes_it_was_computed_from(tiny_checkpoint, tmp_path):
    image, out = _save(tmp_path / "in" / "p.png"), tmp_path / "out"
    assert _localize(image, tiny_checkpoint, out).exit_code == 0
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    for kind in KINDS:
        assert read_mark(out / f"p_{kind}.png") == {"source_sha256": digest, "kind": kind}


def test_the_report_finds_inputs_by_their_real_path_and_says_when_a_file_changed_since(tiny_checkpoint, tmp_path,
                                                                                        monkeypatch):
    image, out = _save(tmp_path / "case" / "p.png", seed=1), tmp_path / "out"
    monkeypatch.chdir(tmp_path / "case")
    assert _localize(Path("p.png"), tiny_checkpoint, out).exit_code == 0
    monkeypatch.chdir(tmp_path)  # the record's relative name no longer leads to the file from here
    _save(image, seed=5)
    assert _run("report", out).exit_code == 0
    page = (out / "report.html").read_text()
    assert "bytes changed since it was localized" in page
    assert hashlib.sha256(image.read_bytes()).hexdigest() in page  # its metadata was read: the file was found


# --- outputs are never taken for inputs ------------------------------------------------------------------------


def test_out_equal_to_the_input_folder_can_be_run_again(tiny_checkpoint, tmp_path):
    assert "out-equals-in-rerun" in SCENARIOS
    case = tmp_path / "case"
    image = _save(case / "p.png")
    original = image.read_bytes()
    assert _localize(case, tiny_checkpoint, case).exit_code == 0
    first = _document(case)["images"][0]
    again = _localize(case, tiny_checkpoint, case)
    assert again.exit_code == 0, again.output
    assert "0 localized, 1 skipped (outputs exist; --overwrite redoes them), 0 failed, 4 not analysed" in again.stderr
    document = _document(case)
    [entry] = document["images"]
    assert entry["image"] == str(case / "p.png") and entry["image_score"] == first["image_score"]
    assert sorted(Path(item["image"]).name for item in document["not_analysed"]) == \
        sorted(f"p_{kind}.png" for kind in KINDS)
    assert image.read_bytes() == original


# --- nothing is written outside --out -------------------------------------------------------------------------


def test_a_planted_results_jsonl_link_is_refused_and_its_target_untouched(tiny_checkpoint, tmp_path):
    assert "results-jsonl-link" in SCENARIOS
    image, out, victim = _save(tmp_path / "in" / "p.png"), tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("the lab's notes\n")
    out.mkdir()
    (out / "results.jsonl").symlink_to(victim)
    result = _localize(image, tiny_checkpoint, out)
    assert result.exit_code == 1
    assert _error_lines(result) == [f"error: {out / 'results.jsonl'}: is a symbolic link; refusing to write through "
                                    "it (it could lead outside the output folder)"]
    assert victim.read_text() == "the lab's notes\n" and not list(out.glob("*.png"))


def test_an_output_subfolder_that_links_outside_is_refused(tiny_checkpoint, tmp_path):
    assert "output-subfolder-link" in SCENARIOS
    inside, nested = _save(tmp_path / "in" / "q.png", seed=1), _save(tmp_path / "in" / "sub" / "p.png", seed=2)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir(), elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    result = _localize(tmp_path / "in", tiny_checkpoint, out)
    assert result.exit_code == 1
    assert f"{nested}: its outputs' folder {out / 'sub'} leads outside the output folder" in result.stderr
    assert list(elsewhere.iterdir()) == [] and (out / "q_mask.png").is_file()
    assert inside.is_file()


def test_the_report_refuses_a_thumbs_link_and_touches_nothing_there(tiny_checkpoint, tmp_path):
    assert "report-thumbs-link" in SCENARIOS
    image, out = _save(tmp_path / "in" / "p.png"), tmp_path / "out"
    assert _localize(image, tiny_checkpoint, out).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.jpg").write_bytes(b"evidence")
    index = {"version": 1, "salt": {}, "entries": {"precious.jpg": {"signature": [0, 0, 0], "value": {}}}}
    (elsewhere / "index.json").write_text(json.dumps(index))
    (out / "thumbs").symlink_to(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    result = _run("report", out)
    assert result.exit_code == 1
    assert _error_lines(result) == [f"error: {out / 'thumbs' / 'index.json'}: leads outside the output folder "
                                    f"{out} (a symbolic link); refusing to write there"]
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before


# --- listing: links, loops, long names ---------------------------------------------------------------------------


def test_folder_link_loops_neither_hang_nor_repeat_an_image(tiny_checkpoint, tmp_path):
    assert "folder-link-loops" in SCENARIOS
    folder = tmp_path / "in"
    _save(folder / "p.png")
    (folder / "loop").symlink_to(folder)
    (folder / "deeper").mkdir()
    (folder / "deeper" / "back").symlink_to(folder)
    result = _localize(folder, tiny_checkpoint, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "1 localized, 0 skipped" in result.stderr
    assert len(_document(tmp_path / "out")["images"]) == 1


def test_names_longer_than_a_file_name_may_be_are_one_line(tiny_checkpoint, tmp_path):
    assert "long-names" in SCENARIOS
    image = _save(tmp_path / "in" / "p.png")
    long_out = tmp_path / ("o" * 300)
    result = _localize(image, tiny_checkpoint, long_out)
    assert result.exit_code == 1 and len(_error_lines(result)) == 1 and "File name too long" in result.stderr
    long_input = tmp_path / ("i" * 300 + ".png")
    result = _localize(long_input, tiny_checkpoint, tmp_path / "out")
    assert result.exit_code == 1 and _error_lines(result) == [f"error: {long_input}: cannot be listed (File name "
                                                              "too long)"]


def test_a_manifest_nested_100000_deep_is_one_line(tiny_checkpoint, tmp_path):
    assert "deep-manifest" in SCENARIOS
    manifest = tmp_path / "deep.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    result = _run("evaluate", "-d", manifest, "-c", tiny_checkpoint, "-o", tmp_path / "eval", *FAST)
    assert result.exit_code == 1
    assert _error_lines(result) == [f"error: {manifest}: JSON nested too deeply to be a dataset list"]


# --- masks count whatever their form ---------------------------------------------------------------------------


@pytest.mark.parametrize("form, make", [
    ("0/255", lambda box: box * 255),
    ("label map", lambda box: box),  # 0/1
    ("colour", lambda box: np.stack([box * 255, box * 0, box * 0], axis=2)),  # red on black
])
def test_evaluate_counts_a_tampered_image_whatever_its_mask_form(tiny_checkpoint, tmp_path, form, make):
    assert "mask-forms" in SCENARIOS
    (tmp_path / "Tp").mkdir(), (tmp_path / "Gt").mkdir()
    Image.fromarray(photo(24, 32)).save(tmp_path / "Tp" / "a.png")
    box = np.zeros((24, 32), np.uint8)
    box[4:12, 6:20] = 1
    Image.fromarray(make(box).astype(np.uint8)).save(tmp_path / "Gt" / "a.png")
    result = _run("evaluate", "-d", f"set={tmp_path}", "-c", tiny_checkpoint, "-o", tmp_path / "eval", *FAST)
    assert result.exit_code == 0, result.output
    dataset = json.loads((tmp_path / "eval" / "metrics.json").read_text())["datasets"]["set"]
    assert dataset["metrics"]["n_tampered"] == 1 and dataset["metrics"]["n_authentic"] == 0
    assert dataset["mask_forms"] == {form: 1}
    assert f"masks of set: 1 {form}" in result.stderr


def test_training_reads_masks_by_the_same_rule(tmp_path):
    from diffiml_cli.data.readers import Pair, load_pair

    Image.fromarray(photo(24, 32)).save(tmp_path / "a.png")
    label = np.zeros((24, 32), np.uint8)
    label[2:5, 3:9] = 1
    Image.fromarray(label).save(tmp_path / "m.png")
    _, mask = load_pair(Pair(tmp_path / "a.png", tmp_path / "m.png"))
    assert mask.sum() == 18 and mask[2:5, 3:9].all()
