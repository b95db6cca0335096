"""Algorithm 1: overfitting, exact resume, SIGKILL safety and torchrun data sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from diffiml_cli.checkpoint import load_training_state
from diffiml_cli.diffusion.sampling import add_noise_with_error_prior
from diffiml_cli.data.training_sets import build_training_data
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.build import build_localizer, load_model
from diffiml_cli.presets import get_preset
from diffiml_cli.objectives import diffiml_loss
from diffiml_cli.data.training_sets import with_authentic_per_batch
from squares import Squares
from diffiml_cli.training import TRAIN_STATE_NAME, TrainOptions, Trainer, epoch_indices, warmup_cosine


def _trainer(tmp_path, steps, **overrides) -> Trainer:
    torch.manual_seed(0)
    config = get_preset("test")
    options = TrainOptions(out_dir=tmp_path, steps=steps, batch_size=4, warmup_steps=2, log_every=1,
                           save_every=overrides.pop("save_every", 1000), val_every=10_000, **overrides)
    return Trainer(build_localizer(config), config, options, Squares())


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [warmup_cosine(s, warmup_steps=10, total_steps=110) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.5) and values[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))


def test_loss_weights_mask_and_edge_latents_by_alpha():
    z0 = torch.zeros(2, 8, 4, 4)
    pred = torch.cat([torch.ones(2, 4, 4, 4), 2 * torch.ones(2, 4, 4, 4)], dim=1)
    loss, parts = diffiml_loss(pred, z0, mask_weight=0.2)
    assert parts == {"loss_mask": 1.0, "loss_edge": 4.0}
    assert loss.item() == pytest.approx(0.2 * 1 + 0.8 * 4)


def _batch(trainer: Trainer) -> dict:
    batch = {k: torch.stack([trainer.train_data[i][k] for i in range(4)]) for k in ("image", "mask", "edge")}
    batch["index"] = torch.arange(4)
    return batch


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(tmp_path):
    trainer = _trainer(tmp_path, steps=3, learning_rate=1e-3, backbone_lr_scale=0.0)
    backbone, head = trainer.localizer.encoder.backbone, trainer.localizer.denoiser
    before = {k: v.clone() for k, v in backbone.state_dict().items()}  # includes BatchNorm running statistics
    head_before = [p.clone() for p in head.parameters()]
    batch = _batch(trainer)
    for _ in range(3):
        trainer.train_step(batch)
    assert any("running_mean" in k for k in before)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, head.parameters()))
    assert not backbone.training and trainer.localizer.denoiser.training


def test_backbone_lr_scale_gives_the_backbone_its_own_rate(tmp_path):
    trainer = _trainer(tmp_path, steps=10, learning_rate=1e-3, backbone_lr_scale=0.1)
    rest, backbone_group = trainer.optimizer.param_groups
    backbone_ids = {id(p) for p in trainer.localizer.encoder.backbone.parameters()}
    assert {id(p) for p in backbone_group["params"]} == backbone_ids
    assert not backbone_ids & {id(p) for p in rest["params"]}
    assert backbone_group["lr"] == pytest.approx(0.1 * rest["lr"])  # the warm-up scales both alike
    assert len(_trainer(tmp_path, steps=10).optimizer.param_groups) == 1  # the default: one group, as before


@pytest.mark.slow
def test_overfits_one_fixed_batch(tmp_path):
    trainer = _trainer(tmp_path, steps=300, learning_rate=3e-3)
    batch = _batch(trainer)

    def fixed_loss() -> float:  # the same timesteps and noise every time, spanning the schedule
        generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            z0 = trainer.localizer.encode_targets(batch["mask"], batch["edge"])
            t = torch.tensor([50, 300, 600, 950])
            x_t = add_noise_with_error_prior(z0, t, trainer.alphas_cumprod, prior_rate=0.1, generator=generator)
            return diffiml_loss(trainer.objective(batch["image"], x_t, t), z0, 0.2)[0].item()

    start = fixed_loss()
    for _ in range(300):
        trainer.train_step(batch)
    assert fixed_loss() < 0.1 * start


def test_resume_continues_the_same_trajectory(tmp_path):
    straight = _trainer(tmp_path / "straight", steps=6)
    straight.fit()

    class Stop(Exception):
        pass

    def stop_at_3(step, record):
        if step == 3:
            raise Stop

    interrupted = _trainer(tmp_path / "resumed", steps=6, save_every=3)
    with pytest.raises(Stop):
        interrupted.fit(stop_at_3)
    resumed = _trainer(tmp_path / "resumed", steps=6)
    resumed.resume(tmp_path / "resumed" / TRAIN_STATE_NAME)
    assert resumed.step == 3
    resumed.fit()
    for (name, a), b in zip(straight.localizer.state_dict().items(), resumed.localizer.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    lines = lambda run: (tmp_path / run / "data-indices-rank0.txt").read_text().split("\n")  # noqa: E731
    assert lines("straight") == lines("resumed")  # the same data order, step for step
    final, _ = load_model(tmp_path / "resumed" / "final")
    torch.testing.assert_close(next(final.parameters()), next(resumed.localizer.parameters()))


def test_resume_after_a_kill_logs_each_step_once(tmp_path):
    straight = _trainer(tmp_path / "straight", steps=6)
    straight.fit()

    class Killed(Exception):
        pass

    def die_at_5(step, record):  # the state was last saved at step 3: steps 4 and 5 are replayed
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        _trainer(tmp_path / "run", steps=6, save_every=3).fit(die_at_5)
    resumed = _trainer(tmp_path / "run", steps=6)
    resumed.resume(tmp_path / "run" / TRAIN_STATE_NAME)
    resumed.fit()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    lines = lambda run: (tmp_path / run / "data-indices-rank0.txt").read_text().splitlines()  # noqa: E731
    assert lines("run") == lines("straight") and len(lines("run")) == 6


def test_epoch_indices_are_disjoint_across_ranks_and_cover_the_epoch():
    shards = [epoch_indices(10, 3, seed=1, rank=r, world_size=3) for r in range(3)]
    together = np.concatenate(shards)
    assert len(together) == 9 and len(set(together.tolist())) == 9
    assert not np.array_equal(epoch_indices(10, 4, seed=1, rank=0, world_size=3), shards[0])


def _train_command(photo_folder, tiny_checkpoint, out, steps, *extra):
    return ["train", "--synthetic-from", str(photo_folder), "--preset", "test", "--vae", str(tiny_checkpoint),
            "--steps", str(steps), "--batch-size", "2", "--out", str(out), *extra]


@pytest.mark.slow
def test_sigkill_mid_run_leaves_an_intact_state_that_resumes(tmp_path, photo_folder, tiny_checkpoint):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "diffiml_cli", *_train_command(photo_folder, tiny_checkpoint, out, 400, "--save-every", "1")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / TRAIN_STATE_NAME).exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # well inside the loop, which writes the state after every step
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_training_state(out / TRAIN_STATE_NAME)  # intact under its final name, wherever the kill landed
    assert 0 < state["step"] < 400
    resumed = subprocess.run([sys.executable, "-m", "diffiml_cli",
                              *_train_command(photo_folder, tiny_checkpoint, out, state["step"] + 2, "--resume")],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert load_training_state(out / TRAIN_STATE_NAME)["step"] == state["step"] + 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # a half-written temp file is cleaned up


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo_see_disjoint_data(tmp_path, photo_folder, tiny_checkpoint):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    result = subprocess.run(
        [*torchrun, "-m", "diffiml_cli", *_train_command(photo_folder, tiny_checkpoint, out, 3, "--device", "cpu")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [[line.split() for line in (out / f"data-indices-rank{rank}.txt").read_text().splitlines()] for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 3
    for step in range(3):
        assert not set(seen[0][step]) & set(seen[1][step])
    assert (out / "final" / "model.safetensors").is_file() and (out / TRAIN_STATE_NAME).is_file()


def test_train_init_continues_from_a_localizer_checkpoint_and_records_its_data(tmp_path, photo_folder, tiny_checkpoint):
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    out = tmp_path / "init"
    command = _train_command(photo_folder, tiny_checkpoint, out, 1, "--init", str(tiny_checkpoint), "--lr", "0",
                             "--synthetic-kinds", "splice,copy_move", "--other-camera-donors", "--match-grain")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    sources = json.loads((out / "train_config.json").read_text())["train"]["data_sources"]
    assert sources["synthetic_from"] == [str(photo_folder)] and sources["init"] == str(tiny_checkpoint)
    assert sources["synthetic_kinds"] == ["splice", "copy_move"] and sources["other_camera_donors"] is True
    assert sources["match_grain"] is True
    start, _ = load_model(tiny_checkpoint)
    trained, _ = load_model(out / "final")
    for a, b in zip(start.state_dict().values(), trained.state_dict().values()):
        if a.is_floating_point() and a.dim() > 1:  # weights; BatchNorm statistics move even at lr 0
            torch.testing.assert_close(a, b)


def test_every_batch_gets_its_share_of_authentic_items():
    rng = np.random.default_rng(0)
    authentic = rng.random(400) < 0.3
    indices = epoch_indices(400, 0, seed=0, rank=0, world_size=1)
    ordered = with_authentic_per_batch(indices, authentic, batch_size=8, per_batch=2)
    assert sorted(ordered.tolist()) == sorted(indices.tolist())  # a reordering, nothing lost or repeated
    per_batch = authentic[ordered[: len(ordered) // 8 * 8]].reshape(-1, 8).sum(axis=1)
    full = int(authentic.sum()) // 2  # batches that can get two before the authentic items run out
    assert (per_batch[:full] >= 2).all()
    assert (authentic[indices[: len(indices) // 8 * 8]].reshape(-1, 8).sum(axis=1) < 2).any()  # by chance: not
    edited_order = [i for i in ordered if not authentic[i]]
    assert edited_order == [i for i in indices if not authentic[i]]
    with pytest.raises(DiffimlError, match="exceeds the batch size"):
        with_authentic_per_batch(indices, authentic, batch_size=4, per_batch=5)


def test_synthetic_kinds_restrict_the_training_edits(photo_folder):
    def kinds_drawn(dataset):
        return {dataset.manipulations.make(index)[2] for index in range(24)}

    every_kind = build_training_data([], [photo_folder], image_size=64, seed=0, augment=None)
    copy_moves = build_training_data([], [photo_folder], image_size=64, seed=0, augment=None,
                                     synthetic_kinds=["copy_move"])
    assert {"splice", "copy_move", "inpaint"} <= kinds_drawn(every_kind)
    drawn = kinds_drawn(copy_moves)
    assert "copy_move" in drawn and "splice" not in drawn
    assert drawn <= {"copy_move", "authentic", "inpaint"}  # inpaint only as the fallback when nothing fits
    assert not every_kind.manipulations.other_camera_donors
    camera = build_training_data([], [photo_folder], image_size=64, seed=0, augment=None, other_camera_donors=True)
    assert camera.manipulations.other_camera_donors and not camera.manipulations.match_grain
    grainy = build_training_data([], [photo_folder], image_size=64, seed=0, augment=None, match_grain=True)
    assert grainy.manipulations.match_grain


@pytest.mark.parametrize(("kinds", "message"), [("splice,blur", "unknown manipulation kind"),
                                                (" , ", "names no edit")])
def test_train_rejects_bad_synthetic_kinds_before_training(tmp_path, photo_folder, tiny_checkpoint, kinds, message):
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, _train_command(photo_folder, tiny_checkpoint, out, 1, "--synthetic-kinds", kinds))
    assert result.exit_code != 0 and message in result.output
    assert not out.exists()
