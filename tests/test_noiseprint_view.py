"""`localize --noiseprint` writes <stem>_noiseprint.png at the image's size; the report shows it in the detail
panel. Random small weights (the map's content is not judged here: tests/test_noiseprint.py does that with the real
weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffiml_cli.checkpoint import save_checkpoint
from diffiml_cli.cli.app import app
from diffiml_cli.models.noiseprint import build_noiseprint, student_config
from diffiml_cli.noiseprint_view import noiseprint_png
from report_fixtures import page_data, parse_page

runner = CliRunner()


@pytest.fixture(scope="module")
def small_noiseprint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = student_config(layers=3, width=8)
    return save_checkpoint(tmp_path_factory.mktemp("np-small"), build_noiseprint(config), config)


def test_localize_writes_the_view_and_the_report_shows_it(tiny_checkpoint, small_noiseprint, image_folder, tmp_path,
                                                          one_thread):
    out = tmp_path / "out"
    result = runner.invoke(app, ["localize", str(image_folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--steps", "1", "--ensemble", "1", "--noiseprint", "--noiseprint-weights",
                                 str(small_noiseprint), "--report"])
    assert result.exit_code == 0, result.output
    assert "3 written" in result.output and "non-profit" in result.output
    for source in sorted(image_folder.iterdir()):
        view = out / f"{source.stem}_noiseprint.png"
        with Image.open(view) as png, Image.open(source) as original:
            assert png.mode == "L" and png.size == original.size
            assert np.asarray(png).std() > 0  # stretched, not one flat level
    page = parse_page(out / "report.html")
    figures = [attrs for tag, attrs in page.elements if tag == "figure" and attrs.get("data-panel") == "noiseprint"]
    assert len(figures) == 1
    urls = sorted(row["d"]["full"]["noiseprint"] for row in page_data(page)["rows"])
    assert urls == ["a_noiseprint.png", "b_noiseprint.png", "c_noiseprint.png"]

    before = (out / "a_noiseprint.png").stat().st_mtime_ns  # a rerun keeps the views unless --overwrite
    result = runner.invoke(app, ["localize", str(image_folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--noiseprint", "--noiseprint-weights", str(small_noiseprint)])
    assert result.exit_code == 0 and "0 written" in result.output
    assert (out / "a_noiseprint.png").stat().st_mtime_ns == before


def test_report_without_views_has_no_noiseprint_urls(tiny_checkpoint, image_folder, tmp_path, one_thread):
    out = tmp_path / "out"
    result = runner.invoke(app, ["localize", str(image_folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--steps", "1", "--ensemble", "1", "--report"])
    assert result.exit_code == 0, result.output
    assert all(row["d"]["full"]["noiseprint"] is None for row in page_data(parse_page(out / "report.html"))["rows"])


def test_view_name_is_beside_the_mask():
    assert noiseprint_png("out/sub/photo.v2_mask.png") == Path("out/sub/photo.v2_noiseprint.png")
    assert noiseprint_png("out/photo_prob.png") is None


def test_detail_panel_shows_the_view_in_chromium(tiny_checkpoint, small_noiseprint, image_folder, tmp_path,
                                                 one_thread):
    from test_report_browser import CHROMIUM, DevTools

    if CHROMIUM is None:
        pytest.skip("needs headless Chromium (Debian package `chromium`)")
    out = tmp_path / "out"
    result = runner.invoke(app, ["localize", str(image_folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--steps", "1", "--ensemble", "1", "--noiseprint", "--noiseprint-weights",
                                 str(small_noiseprint), "--report"])
    assert result.exit_code == 0, result.output
    (out / "c_noiseprint.png").unlink()  # one image without a view: its panel is hidden, not "not available"
    runner.invoke(app, ["report", str(out)])
    browser = DevTools(tmp_path / "profile")
    panel = "document.querySelector('figure[data-panel=\"noiseprint\"]')"
    try:
        browser.open((out / "report.html").as_uri())
        shown = {}
        for row in range(3):
            browser.click(f"#rows tr:nth-child({row + 1})")
            browser.wait_for("document.getElementById('detail').open")
            name = browser.evaluate("document.getElementById('detail-name').textContent")
            image = f"{panel}.querySelector('img')"
            if not browser.evaluate(f"{panel}.hidden"):
                browser.wait_for(f"{image}.complete && {image}.naturalWidth > 0")
            shown[Path(name).stem] = (not browser.evaluate(f"{panel}.hidden"),
                                      browser.evaluate(f"{image}.naturalWidth"))
            browser.click("#close")
    finally:
        browser.close()
    assert shown == {"a": (True, 64), "b": (True, 50), "c": (False, 0)}, shown


def test_noiseprint_without_weights_fails_before_any_image(tiny_checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["localize", str(image_folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--noiseprint"])
    assert result.exit_code == 1 and "--noiseprint-weights" in result.output
    assert not list(out.glob("*.png"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    result = runner.invoke(app, ["localize", str(image_folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--noiseprint", "--noiseprint-weights", str(bad)])
    assert result.exit_code == 1 and "bad.safetensors" in result.output and not list(out.glob("*.png"))


def test_a_torch_file_extractor_needs_allow_pickle(tiny_checkpoint, image_folder, tmp_path, one_thread):
    from diffiml_cli.models.noiseprint import NoiseprintConfig

    torch.manual_seed(0)
    teacher = tmp_path / "noiseprint++.th"
    torch.save({"network": build_noiseprint(NoiseprintConfig()).state_dict(), "global_step": 1}, teacher)
    out = tmp_path / "out"
    args = ["localize", str(image_folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint), "--steps", "1",
            "--ensemble", "1", "--noiseprint", "--noiseprint-weights", str(teacher)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--allow-pickle" in result.output and not list(out.glob("*.png"))
    result = runner.invoke(app, [*args, "--allow-pickle"])
    assert result.exit_code == 0, result.output
    assert "3 written" in result.output and (out / "a_noiseprint.png").is_file()
