"""`distill-vae`: the SD VAE teacher (from the offline fake Hub), Eq. 6, calibration, resume, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import add_to_fake_hub
from diffiml_cli.cli.app import app
from diffiml_cli.config import MaskVAEConfig
from diffiml_cli.distillation import DistillResult, DistillSettings, StepStats, distill_vae, reconstruction_l1
from diffiml_cli.distillation.targets import (
    CALIBRATION_STREAM,
    TRAIN_STREAM,
    ReconstructionReport,
    ReconstructionScores,
    TrainingTargets,
    held_out_targets,
    raw_latent_std,
    recalibrate_batch_norm,
)
from diffiml_cli.distillation.teacher import load_teacher, teacher_latent
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.build import load_mask_vae
from diffiml_cli.models.mask_vae import MaskVAE

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TEACHER = "test-org/tiny-vae"
# Small and fast, but everything a real run does: training, state saves, calibration or teacher, report.
FAST = dict(image_size=32, batch_size=4, eval_count=8, batch_norm_samples=8, lr=3e-3)




@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A random 4-level (3 downsamples: 1/8) AutoencoderKL, saved locally and as `test-org/tiny-vae`
    in the fake Hub, both at the top of the repository and under `vae/`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    )
    folder = tmp_path_factory.mktemp("tiny-vae")
    vae.save_pretrained(folder)
    files = {path.name: path for path in folder.iterdir() if path.is_file()}
    add_to_fake_hub(TINY_TEACHER, files | {f"vae/{name}": path for name, path in files.items()})
    return folder


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def test_teacher_loads_from_hub_id_subfolder_and_folder(tiny_teacher):
    reference = load_teacher(str(tiny_teacher))
    for teacher in (load_teacher(TINY_TEACHER), load_teacher(TINY_TEACHER, "vae")):
        assert not teacher.training
        assert not any(p.requires_grad for p in teacher.parameters())
        for name, value in reference.state_dict().items():
            assert torch.equal(teacher.state_dict()[name], value), name


def test_teacher_and_student_latents_are_b_4_h8_w8(tiny_teacher):
    y = TrainingTargets(64, seed=0, stream=TRAIN_STREAM).batch(0, 3)
    assert y.shape == (3, 1, 64, 64) and set(y.unique().tolist()) <= {-1.0, 1.0}
    z_t = teacher_latent(load_teacher(TINY_TEACHER), y)
    z_s = MaskVAE(MaskVAEConfig()).encode(y) * MaskVAEConfig().scale_factor
    assert z_t.shape == z_s.shape == (3, 4, 8, 8)
    assert not z_t.is_inference() and torch.isfinite(z_t).all()


def test_missing_teacher_offline_is_one_line_error(tmp_path):
    with pytest.raises(DiffimlError, match="not in the local Hub cache") as caught:
        load_teacher("test-org/not-there")
    assert "\n" not in str(caught.value) and "`teacher=none`" in str(caught.value)
    with pytest.raises(DiffimlError, match="no diffusers config.json"):
        load_teacher(str(tmp_path))


def test_cli_missing_teacher_exits_1_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["distill-vae", "--teacher", "test-org/not-there", "--steps", "1",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "0/1" not in result.output  # no progress bar left behind
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--teacher none" in lines[0] and "test-org/not-there" in lines[0]


def test_distillation_loss_decreases(tiny_teacher, tmp_path):
    stats: list[StepStats] = []
    settings = DistillSettings(teacher=TINY_TEACHER, steps=30, save_every=100, **FAST)
    result = distill_vae(settings, tmp_path, on_step=stats.append)
    assert [s.step for s in stats] == list(range(1, 31))
    assert all(s.latent_mse is not None and np.isfinite(s.latent_mse) for s in stats)
    first, last = np.mean([s.l1 for s in stats[:5]]), np.mean([s.l1 for s in stats[-5:]])
    assert last < 0.8 * first
    # Distilled latents keep the teacher's (Stable Diffusion's) scale.
    assert result.report.scale_factor == pytest.approx(0.18215)
    assert load_mask_vae(tmp_path).config.scale_factor == pytest.approx(0.18215)


def test_no_teacher_calibrates_latent_std_to_one(tmp_path):
    settings = DistillSettings(teacher=None, steps=15, save_every=100, **(FAST | {"eval_count": 64}))
    result = distill_vae(settings, tmp_path)
    vae = load_mask_vae(tmp_path)
    assert vae.config.scale_factor == pytest.approx(result.report.scale_factor) and vae.config.scale_factor != 0.18215
    # Calibrated on one held-out stream, checked on another (the report's procedural masks and edges).
    assert result.report.latent_std == pytest.approx(1.0, rel=0.1)
    targets = np.stack([TrainingTargets(32, seed=0, stream=CALIBRATION_STREAM).target(i) for i in range(64)])
    assert vae.config.scale_factor * raw_latent_std(vae, targets) == pytest.approx(1.0, rel=1e-5)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["vae"]["scale_factor"] == pytest.approx(vae.config.scale_factor)
    assert {row["kind"] for row in report["reconstruction"]["rows"]} == {"masks", "edges"}


class _Crash(Exception):
    pass


def test_resume_gives_the_same_weights_as_one_run(tiny_teacher, tmp_path):
    settings = DistillSettings(teacher=TINY_TEACHER, steps=8, save_every=3, **FAST)
    whole = distill_vae(settings, tmp_path / "whole")

    def crash_after_7(stats: StepStats) -> None:
        if stats.step == 7:  # the last state saved was at step 6; step 7 is redone after resuming
            raise _Crash

    with pytest.raises(_Crash):
        distill_vae(settings, tmp_path / "split", on_step=crash_after_7)
    with pytest.raises(DiffimlError, match="`resume`"):
        distill_vae(settings, tmp_path / "split")
    with pytest.raises(DiffimlError, match="different settings.*lr"):
        distill_vae(dataclasses.replace(settings, lr=1e-2), tmp_path / "split", resume=True)
    resumed = distill_vae(settings, tmp_path / "split", resume=True)
    assert resumed.resumed_from == 6
    one, two = load_mask_vae(tmp_path / "whole"), load_mask_vae(tmp_path / "split")
    for name, value in one.state_dict().items():
        assert torch.equal(two.state_dict()[name], value), name
    assert resumed.report == whole.report


def test_one_sided_l1_ignores_overshoot_only():
    y = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    decoded = torch.tensor([3.0, 0.5, -2.0, -4.0, -0.5, 2.0])
    assert reconstruction_l1(decoded, y).item() == pytest.approx((0 + 0.5 + 3 + 0 + 0.5 + 3) / 6)
    assert reconstruction_l1(decoded, y, one_sided=False).item() == pytest.approx((2 + 0.5 + 3 + 3 + 0.5 + 3) / 6)
    decoded.requires_grad_(True)
    reconstruction_l1(decoded, y).backward()
    assert decoded.grad.tolist() == pytest.approx([0, -1 / 6, -1 / 6, 0, 1 / 6, 1 / 6])


def test_batch_norm_recalibration_uses_exact_statistics():
    vae = MaskVAE(MaskVAEConfig())
    targets = TrainingTargets(32, seed=1, stream=TRAIN_STREAM)
    recalibrate_batch_norm(vae, targets, count=6, batch_size=3)
    assert not vae.training and vae.encoder[0][1].momentum == 0.1
    features = vae.encoder[0][0](targets.batch(0, 6)).detach()
    assert torch.allclose(vae.encoder[0][1].running_mean, features.mean((0, 2, 3)), atol=1e-5)


def test_bf16_autocast_trains(tmp_path):
    stats: list[StepStats] = []
    distill_vae(DistillSettings(teacher=None, steps=12, save_every=100, bf16=True, **FAST), tmp_path, on_step=stats.append)
    assert all(np.isfinite(s.l1) for s in stats) and np.mean([s.l1 for s in stats[-3:]]) < stats[0].l1
    assert load_mask_vae(tmp_path).encoder[0][0].weight.dtype == torch.float32


def test_training_targets_are_deterministic_and_mix_dataset_masks(tmp_path):
    root = tmp_path / "set"
    for sub in ("Tp", "Gt"):
        (root / sub).mkdir(parents=True)
    mask = np.zeros((60, 90), np.uint8)
    mask[10:40, 20:50] = 255
    Image.fromarray(np.zeros((60, 90, 3), np.uint8)).save(root / "Tp" / "a.png")
    Image.fromarray(mask).save(root / "Gt" / "a.png")
    from diffiml_cli.distillation.targets import load_data_masks

    data = load_data_masks([str(root)])
    targets = TrainingTargets(32, seed=3, stream=TRAIN_STREAM, data_masks=data, data_share=1.0, edge_share=0.0)
    first = targets.target(5)
    assert first.shape == (32, 32) and first.dtype == bool
    assert first.sum() == pytest.approx(32 * 32 * (30 * 30) / (60 * 90), rel=0.15)  # resized, not cropped
    assert np.array_equal(first, targets.target(5))
    procedural = TrainingTargets(32, seed=3, stream=TRAIN_STREAM)
    assert np.array_equal(procedural.batch(0, 4), procedural.batch(0, 4))
    held_out = held_out_targets(32, seed=3, count=4)
    assert held_out["masks"].shape == held_out["edges"].shape == (4, 32, 32)


def test_cli_passes_options_and_prints_report(monkeypatch, tmp_path):
    received = {}

    def fake_run(settings, out, *, resume, device, on_step):
        received.update(settings=settings, out=out, resume=resume, device=device)
        on_step(StepStats(step=1, steps=settings.steps, l1=0.5, latent_mse=None, lr=1e-3))
        row = ReconstructionScores("masks", 3, 0.99, 0.98, 0.9, 0.0, 1)
        report = ReconstructionReport(32, 1.7, 1.0, (row, dataclasses.replace(row, kind="edges")))
        return DistillResult(out_dir=out, report=report, steps=settings.steps, resumed_from=0, seconds=1.0)

    monkeypatch.setattr("diffiml_cli.distillation.distill.distill_vae", fake_run)
    result = CliRunner().invoke(app, [
        "distill-vae", "--teacher", "none", "--data", "a.json", "--data", "b", "--steps", "7", "--batch-size", "2",
        "--image-size", "64", "--lambda-lat", "0.5", "--lr", "0.01", "--recon-loss", "l1", "--out", str(tmp_path), "--resume",
        "--seed", "4", "--save-every", "3", "--device", "cpu", "--bf16",
    ])
    assert result.exit_code == 0, result.output
    assert received["settings"] == DistillSettings(
        teacher=None, data=("a.json", "b"), steps=7, batch_size=2, image_size=64, lambda_lat=0.5, lr=0.01, recon_loss="l1",
        seed=4, save_every=3, bf16=True,
    )
    assert received["resume"] is True and received["out"] == tmp_path and str(received["device"]) == "cpu"
    assert "0.9900" in result.output and "1.70000" in result.output
