"""`diffiml localize` end to end on the tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from diffiml_cli.cli.app import app

runner = CliRunner()


def _localize(*args):
    return runner.invoke(app, ["localize", *map(str, args), "--steps", "2", "--ensemble", "2"])


def test_folder_with_a_corrupt_file_writes_the_others_and_exits_1(tiny_checkpoint, image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    out = tmp_path / "out"
    result = _localize(image_folder, "--checkpoint", tiny_checkpoint, "--out", out)
    assert result.exit_code == 1
    assert "broken.jpg" in result.output
    for stem, source in (("a", "a.png"), ("b", "b.jpg"), ("c", "c.png")):
        width, height = Image.open(image_folder / source).size
        for kind in ("mask", "prob", "overlay", "uncertainty"):
            written = Image.open(out / f"{stem}_{kind}.png")
            assert written.size == (width, height)
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert set(np.unique(mask)) <= {0, 255}
    report = json.loads((out / "results.json").read_text())
    by_name = {entry["image"].rsplit("/", 1)[-1]: entry for entry in report["images"]}
    assert by_name["broken.jpg"]["status"] == "failed"
    assert [f["image"].rsplit("/", 1)[-1] for f in report["failures"]] == ["broken.jpg"]
    entry = by_name["b.jpg"]
    assert entry["status"] == "ok" and (entry["width"], entry["height"]) == (50, 70)
    assert 0 <= entry["image_score"] <= 1 and 0 <= entry["manipulated_fraction"] <= 1
    assert set(entry["timings"]) == {"load_s", "predict_s", "write_s"}


def test_existing_outputs_are_skipped_unless_overwrite(tiny_checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    assert _localize(image_folder / "a.png", "--checkpoint", tiny_checkpoint, "--out", out).exit_code == 0
    mask = out / "a_mask.png"
    mask.write_bytes(b"sentinel")
    again = _localize(image_folder / "a.png", "--checkpoint", tiny_checkpoint, "--out", out)
    assert again.exit_code == 0 and "1 skipped" in again.output
    assert mask.read_bytes() == b"sentinel"
    forced = _localize(image_folder / "a.png", "--checkpoint", tiny_checkpoint, "--out", out, "--overwrite")
    assert forced.exit_code == 0 and mask.read_bytes() != b"sentinel"


def test_output_folder_equal_to_input_folder_never_clobbers_inputs(tiny_checkpoint, image_folder):
    before = {p.name: p.read_bytes() for p in image_folder.iterdir()}
    # An input named like another input's output must not be overwritten.
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image_folder / "a_mask.png")
    before["a_mask.png"] = (image_folder / "a_mask.png").read_bytes()
    result = _localize(image_folder, "--checkpoint", tiny_checkpoint, "--out", image_folder, "--batch-size", "2")
    assert result.exit_code == 1 and "refusing to overwrite input" in result.output
    for name, data in before.items():
        assert (image_folder / name).read_bytes() == data


def test_same_seed_same_mask_through_the_cli(tiny_checkpoint, image_folder, tmp_path):
    for run in ("one", "two"):
        assert _localize(image_folder / "c.png", "-c", tiny_checkpoint, "--out", tmp_path / run, "--seed", "5").exit_code == 0
    assert (tmp_path / "one/c_prob.png").read_bytes() == (tmp_path / "two/c_prob.png").read_bytes()


def test_missing_input_and_missing_checkpoint_are_one_line_errors(tmp_path):
    missing_input = runner.invoke(app, ["localize", str(tmp_path / "nope.jpg")])
    assert missing_input.exit_code == 1 and "nope.jpg" in missing_input.output
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    offline = runner.invoke(app, ["localize", str(tmp_path / "ok.png"), "--checkpoint", "nobody/nothing"])
    assert offline.exit_code == 1
    assert "nobody/nothing" in offline.output and "Traceback" not in offline.output
    assert offline.output.count("error:") == 1


def test_each_image_gets_a_line_with_its_verdict_score_and_marked_share(tiny_checkpoint, image_folder, tmp_path):
    """One line per image as it finishes, with the numbers results.json holds; the summary counts the verdicts."""
    hostile = image_folder / "evil\x1b[31m[bold]x.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(hostile)
    out = tmp_path / "out"
    result = _localize(image_folder, "--checkpoint", tiny_checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())["images"]
    lines = result.output.splitlines()
    for entry in records:
        name = entry["image"].rsplit("/", 1)[-1]
        shown = name.replace("\x1b", "\\x1b")
        line = next(line for line in lines if line.endswith(shown))
        verdict = entry["verdict"] or "no verdict"
        score = entry["detection_score"] if entry["detection_score"] is not None else entry["image_score"]
        assert line.startswith(verdict) and f"{score:.3f}" in line
        assert f"marked {entry['manipulated_fraction']:6.1%}" in line
    assert "\x1b" not in result.output  # the name's escape byte is shown, not sent
    verdicts = [entry["verdict"] or "without a verdict" for entry in records]
    summary = next(line for line in lines if line.startswith("verdicts: "))
    for verdict in set(verdicts):
        assert f"{verdicts.count(verdict)} {verdict}" in summary


def test_a_big_folder_prints_a_screenful_of_lines_and_points_to_results_json(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("LINES", "10")  # rich's height for a console that is not a terminal
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(9):
        Image.fromarray(np.full((32, 32, 3), index * 20, np.uint8)).save(folder / f"{index}.png")
    from diffiml_cli.cli import common

    monkeypatch.setattr(common, "stderr", type(common.stderr)(stderr=True))  # built after LINES is set
    monkeypatch.setattr("diffiml_cli.cli.localize.stderr", common.stderr)
    result = _localize(folder, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    image_lines = [line for line in result.output.splitlines() if line.endswith(".png")]
    assert len(image_lines) == 6 and "the other images' lines are in results.json" in result.output
    assert "9 localized" in result.output
