"""`diffiml train --config`: a TOML file of options, or a run's own train_config.json, with flags overriding it."""

from __future__ import annotations

import dataclasses

from typer.testing import CliRunner

from diffiml_cli import training_setup
from diffiml_cli.cli.app import app
from diffiml_cli.errors import DiffimlError

runner = CliRunner()


def _record_runs(monkeypatch, *, call_through: bool) -> list[tuple]:
    """Patch start_training to record (model recipe, data recipe, options); run it, or stop there."""
    runs, real = [], training_setup.start_training

    def spy(model, data, options, **kwargs):
        runs.append((model, data, options))
        if not call_through:
            raise DiffimlError("stopped before training")
        return real(model, data, options, **kwargs)

    monkeypatch.setattr(training_setup, "start_training", spy)
    return runs


def test_a_toml_file_sets_the_options_and_flags_override_it(tmp_path, monkeypatch):
    runs = _record_runs(monkeypatch, call_through=False)
    config = tmp_path / "run.toml"
    config.write_text('steps = 5\nbatch-size = 3\ndata = ["a.json", "b"]\nsynthetic_kinds = "splice"\n'
                      '[optimisation]\nlr = 0.01\nweight_decay = 0.5\n[model]\npreset = "fast"\nedge = false\n')
    result = runner.invoke(app, ["train", "--config", str(config), "--lr", "0.5"])
    assert result.exit_code == 1 and "stopped before training" in result.output
    model, data, options = runs[0]
    assert (options.steps, options.batch_size, options.weight_decay) == (5, 3, 0.5)
    assert options.learning_rate == 0.5  # the flag, not the file's 0.01
    assert data.data == ("a.json", "b") and data.synthetic_kinds == ("splice",)
    assert model.preset == "fast" and model.edge is False


def test_an_unknown_key_or_a_broken_file_is_a_usage_error(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text("steps = 5\nbatchsize = 3\n")
    result = runner.invoke(app, ["train", "--config", str(typo)])
    assert result.exit_code == 2 and "batchsize" in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = \n")
    result = runner.invoke(app, ["train", "--config", str(broken)])
    assert result.exit_code == 2 and "cannot read the training config" in result.output


def test_a_run_s_train_config_json_repeats_the_run(tmp_path, photo_folder, tiny_checkpoint, monkeypatch):
    runs = _record_runs(monkeypatch, call_through=True)
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", "--synthetic-from", str(photo_folder), "--preset", "test", "--vae",
                                str(tiny_checkpoint), "--steps", "1", "--batch-size", "2", "--out", str(out),
                                "--synthetic-kinds", "splice,inpaint", "--authentic-share", "0.3", "--lr", "0.002",
                                "--ema", "0.5", "--seed", "3", "--warmup-steps", "0", "--save-every", "7"])
    assert first.exit_code == 0, first.output
    monkeypatch.setattr(training_setup, "start_training", lambda *arguments, **kwargs: runs.append(arguments) or
                        (_ for _ in ()).throw(DiffimlError("stopped before training")))
    again = runner.invoke(app, ["train", "--config", str(out / "train_config.json"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 1, again.output
    (model, data, options), (model_again, data_again, options_again) = runs
    assert model_again == model and data_again == data
    assert dataclasses.replace(options_again, out_dir=options.out_dir) == options


def test_every_train_option_sits_in_a_help_panel():
    from typer.main import get_command

    command = get_command(app).get_command(None, "train")
    unplaced = [param.name for param in command.params if param.name != "config" and not param.rich_help_panel]
    assert unplaced == []
    assert {param.rich_help_panel for param in command.params} >= {"Data", "Model", "Optimisation", "Detector",
                                                                   "Validation", "Output"}


def test_the_guide_s_example_file_names_only_train_options(tmp_path):
    import re
    from pathlib import Path

    from typer.main import get_command

    from diffiml_cli.train_config import read_train_config

    guide = (Path(__file__).resolve().parents[1] / "docs" / "train.md").read_text()
    example = tmp_path / "run.toml"
    example.write_text(re.search(r"```toml\n(.*?)```", guide, re.S).group(1))
    options = read_train_config(example)
    names = {param.name for param in get_command(app).get_command(None, "train").params}
    assert options and set(options) <= names
