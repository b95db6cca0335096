"""SIGKILL at every kind of write of `train`, `distill-vae` and `localize`, then resume or re-run.

Each case kills the real CLI (in a forked process, see tests/faults.py) at one write: while the state is
serialised, halfway through its temporary file, just before or just after the rename, halfway through a
safetensors file, between a checkpoint's weights and its config, before the first state exists. After the
kill no partial file may exist under a final name; then `--resume` (or a plain re-run) must succeed and
end where an uninterrupted run ends, weight for weight, leaving no temporary behind.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from corpus import photo
from diffiml_cli.cli.app import app
from faults import KillSwitch, check_files, mtimes, run_until_killed, temporaries

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="forks and reads /proc/self/fd"),
    pytest.mark.usefixtures("one_thread"),  # the forked children run on one thread, so must the parent
    pytest.mark.slow,  # every test kills a whole command and runs it again
]

STEPS = 6




def invoke(argv: list) -> object:
    result = CliRunner().invoke(app, [str(arg) for arg in argv])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(*result.exc_info)))
    return result


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, msg=name)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for index in range(4):
        Image.fromarray(photo(40, 48, index)).save(folder / f"photo{index}.png")
    return folder


# --- train ---------------------------------------------------------------------------------------------

# kill point -> (switch, the step of the state.pt left behind; None = none written yet).
# Per step: validation and inference checkpoints (steps 3 and 6), then the state; final/ after step 6.
TRAIN_KILLS = {
    "state-serialising": (KillSwitch("torch", "save", 3), 2),
    "state-temp-half-written": (KillSwitch("os", "fdopen", 4, "half", r"/\.state\.pt\.[^/]*\.tmp$"), 3),
    "state-before-rename": (KillSwitch("os", "replace", 2, "before", r"/state\.pt$"), 1),
    "state-after-rename": (KillSwitch("os", "replace", 5, "after", r"/state\.pt$"), 5),
    "latest-weights-half-written": (KillSwitch("diffiml_cli.checkpoint", "save_file", 1, "half"), 2),
    "best-weights-half-written": (KillSwitch("diffiml_cli.checkpoint", "save_file", 2, "half"), 2),
    "final-between-weights-and-config": (KillSwitch("os", "replace", 1, "before", r"/final/config\.json$"), 6),
    "before-first-state": (KillSwitch("torch", "save", 1), None),
}


def train_argv(photos: Path, vae: Path, out: Path) -> list:
    return ["train", "--synthetic-from", photos, "--val", f"synthetic:{photos}:2", "--preset", "test", "--vae", vae,
            "--image-size", "32", "--steps", STEPS, "--batch-size", "2", "--save-every", "1", "--val-every", "3",
            "--out", out, "--device", "cpu"]


@pytest.fixture(scope="module")
def train_reference(photos, tiny_checkpoint, tmp_path_factory) -> Path:
    """An uninterrupted run: where every killed and resumed run must end."""
    out = tmp_path_factory.mktemp("train-reference") / "run"
    result = invoke(train_argv(photos, tiny_checkpoint, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", TRAIN_KILLS)
def test_train_killed_then_resumed(point, photos, tiny_checkpoint, train_reference, tmp_path):
    switch, saved_step = TRAIN_KILLS[point]
    out = tmp_path / "run"
    argv = train_argv(photos, tiny_checkpoint, out)
    run_until_killed(argv, switch, tmp_path / "killed.log")

    states = check_files(out)
    assert switch.when != "half" or temporaries(out), "the kill mid-write left no partial temporary"
    assert (states["state.pt"]["step"] if "state.pt" in states else None) == saved_step
    resumed = invoke([*argv, "--resume"])
    if saved_step is None:  # nothing to resume: a clear refusal, and a fresh start works
        assert resumed.exit_code == 1
        assert resumed.stderr.strip() == f"error: {out / 'state.pt'}: no training state to resume from"
        resumed = invoke(argv)
    assert resumed.exit_code == 0, resumed.output
    assert check_files(out, temporaries_allowed=False)["state.pt"]["step"] == STEPS
    for checkpoint in ("final", "latest", "best"):
        assert_same_weights(train_reference / checkpoint / "model.safetensors", out / checkpoint / "model.safetensors")
    assert json.loads((out / "final" / "config.json").read_text()) == json.loads(
        (train_reference / "final" / "config.json").read_text())


# --- distill-vae ---------------------------------------------------------------------------------------

DISTILL_KILLS = {
    "state-serialising": (KillSwitch("torch", "save", 2), 1),
    "state-temp-half-written": (KillSwitch("os", "fdopen", 3, "half", r"/\.training_state\.pt\.[^/]*\.tmp$"), 2),
    "state-before-rename": (KillSwitch("os", "replace", 4, "before", r"/training_state\.pt$"), 3),
    "state-after-rename": (KillSwitch("os", "replace", 5, "after", r"/training_state\.pt$"), 5),
    "weights-half-written": (KillSwitch("diffiml_cli.checkpoint", "save_file", 1, "half"), 6),
    "between-weights-and-config": (KillSwitch("os", "replace", 1, "before", r"/config\.json$"), 6),
    "before-report": (KillSwitch("os", "replace", 1, "before", r"/report\.json$"), 6),
    "before-first-state": (KillSwitch("torch", "save", 1), None),
}


def distill_argv(out: Path) -> list:
    return ["distill-vae", "--teacher", "none", "--steps", STEPS, "--batch-size", "2", "--image-size", "32",
            "--save-every", "1", "--out", out, "--device", "cpu"]


@pytest.fixture(scope="module")
def distill_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill-reference") / "vae"
    result = invoke(distill_argv(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", DISTILL_KILLS)
def test_distill_vae_killed_then_resumed(point, distill_reference, tmp_path):
    switch, saved_step = DISTILL_KILLS[point]
    out = tmp_path / "vae"
    argv = distill_argv(out)
    run_until_killed(argv, switch, tmp_path / "killed.log")

    states = check_files(out)
    assert switch.when != "half" or temporaries(out), "the kill mid-write left no partial temporary"
    assert (states["training_state.pt"]["step"] if "training_state.pt" in states else None) == saved_step
    resumed = invoke([*argv, "--resume"])
    if saved_step is None:
        assert resumed.exit_code == 1
        assert resumed.stderr.strip() == f"error: {out / 'training_state.pt'}: no training state to resume from"
        resumed = invoke(argv)
    assert resumed.exit_code == 0, resumed.output
    assert check_files(out, temporaries_allowed=False)["training_state.pt"]["step"] == STEPS
    assert_same_weights(distill_reference / "model.safetensors", out / "model.safetensors")
    report, expected = (json.loads((folder / "report.json").read_text()) for folder in (out, distill_reference))
    assert report["reconstruction"] == expected["reconstruction"]
    assert report["training"]["resumed_from"] == (saved_step or 0)


# --- localize ------------------------------------------------------------------------------------------

# Two writer threads finish images in any order, but at most two images are unfinished at any time (3 of
# their 4 PNGs at most): after 10 PNGs at least one image is complete, whatever the interleaving.
LOCALIZE_KILLS = {
    "after-10th-png": KillSwitch("os", "replace", 10, "after", r"\.png$"),
    "11th-png-half-written": KillSwitch("os", "fdopen", 11, "half", r"\.png\.[^/]*\.tmp$"),
}


@pytest.mark.parametrize("point", LOCALIZE_KILLS)
def test_localize_killed_mid_folder_then_rerun(point, tiny_checkpoint, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for index in range(6):
        Image.fromarray(photo(30, 40, index)).save(folder / f"img{index}.png")
    argv = ["localize", folder, "-c", tiny_checkpoint, "-o", out, "--steps", "1", "--ensemble", "1", "--device", "cpu"]
    switch = LOCALIZE_KILLS[point]
    run_until_killed(argv, switch, tmp_path / "killed.log")
    assert switch.when != "half" or temporaries(out), "the kill mid-write left no partial temporary"

    check_files(out)  # every PNG under its final name decodes
    kinds = ("mask", "prob", "overlay", "uncertainty")
    done = {f"img{i}.png" for i in range(6) if all((out / f"img{i}_{kind}.png").exists() for kind in kinds)}
    assert 0 < len(done) < 6
    before = mtimes(out)
    rerun = invoke(argv)
    assert rerun.exit_code == 0, rerun.output
    assert f"{6 - len(done)} localized, {len(done)} skipped" in rerun.stderr
    entries = {Path(e["image"]).name: e for e in json.loads((out / "results.json").read_text())["images"]}
    # An image finished before the kill keeps the record its batch appended ("ok"), or, when the kill fell
    # between its PNGs and its record, is skipped with its score read back from its _prob.png.
    assert {name for name, e in entries.items() if e["status"] == "ok" and name not in done} == {
        f"img{i}.png" for i in range(6)} - done
    assert all(entries[name]["status"] in ("ok", "skipped") for name in done)
    assert all(0 <= entries[f"img{i}.png"]["image_score"] <= 1 for i in range(6))
    after = mtimes(out)
    assert {name: after[name] for name in before if name.split("_")[0] + ".png" in done} == {
        name: stamp for name, stamp in before.items() if name.split("_")[0] + ".png" in done}
    check_files(out, temporaries_allowed=False)
    for index in range(6):
        with Image.open(out / f"img{index}_mask.png") as mask:
            assert mask.size == (40, 30) and set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
