"""The README's Python example runs, and its probability map is the `_prob.png` that `localize` writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from docs_scripts import load_docs_script

from diffiml_cli.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    section = README.read_text().split("## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_gives_the_map_localize_writes(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    load_docs_script("make_example").main(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    probability, mask = namespace["probability"], namespace["mask"]
    height, width = np.asarray(Image.open(tmp_path / "docs" / "example.png")).shape[:2]
    assert probability.shape == mask.shape == (height, width) and probability.dtype == np.float32
    result = CliRunner().invoke(app, ["localize", "docs/example.png", "--out", "out"])
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "out" / "example_prob.png"))
    assert np.array_equal(np.round(probability * 255).astype(np.uint8), written)
    assert np.array_equal(mask, np.asarray(Image.open(tmp_path / "out" / "example_mask.png")) > 0)


def test_a_python_caller_s_results_record_how_they_were_made(tiny_checkpoint, tmp_path):
    """A run started from Python (no CLI) still records its checkpoint and settings in results.json."""
    import json

    from diffiml_cli.batch import LocalizeOptions, localize_files
    from diffiml_cli.pipeline import load_localizer

    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "a.png")
    pipeline = load_localizer(tiny_checkpoint, device="cpu", threshold=0.4)
    localize_files([tmp_path / "a.png"], pipeline, LocalizeOptions(out_dir=tmp_path / "out"))
    run = json.loads((tmp_path / "out" / "results.json").read_text())["run"]
    assert run["checkpoint"] == str(tiny_checkpoint) and run["threshold"] == 0.4
    assert run["sampling"]["steps"] == pipeline.sampling.steps and run["device"] == "cpu"
    assert run["diffiml_version"]


def test_predict_refuses_sizes_the_model_cannot_take(tiny_checkpoint):
    """`Predictor.predict` checks that H and W are multiples of the model's input multiple."""
    import torch

    from diffiml_cli.errors import DiffimlError

    pipeline = load_localizer_for(tiny_checkpoint)
    with pytest.raises(DiffimlError, match="multiples of 32"):
        pipeline.predictor.predict(torch.zeros(1, 3, 50, 64), pipeline.sampling)


def load_localizer_for(checkpoint):
    from diffiml_cli.pipeline import load_localizer

    return load_localizer(checkpoint, device="cpu", resolution="native")
