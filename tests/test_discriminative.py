"""The discriminative baseline (`train --model discriminative`) and the no-edge ablation: they train,
save in the one checkpoint format, and every inference command accepts them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffiml_cli.cli.app import app
from diffiml_cli.config import ModelConfig, config_from_dict
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import build_localizer, load_model, load_mask_vae
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer
from diffiml_cli.objectives import diffiml_loss, segmentation_loss
from diffiml_cli.presets import get_preset
from diffiml_cli.training import TrainOptions, Trainer

runner = CliRunner()


def _train_command(photo_folder, out, steps, *extra):
    return ["train", "--synthetic-from", str(photo_folder), "--preset", "test", "--steps", str(steps),
            "--batch-size", "2", "--out", str(out), *extra]


class _Squares(torch.utils.data.Dataset):
    """Four images whose bright square is the mask."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for index in range(4):
            image = 0.2 + 0.2 * torch.rand(3, 64, 64, generator=generator)
            mask = torch.zeros(1, 64, 64)
            y, x = 8 * index, 40 - 8 * index
            image[:, y:y + 20, x:x + 20] += 0.5
            mask[:, y:y + 20, x:x + 20] = 1
            self.items.append({"image": image, "mask": mask, "edge": torch.zeros_like(mask), "index": index})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def test_segmentation_loss_is_bce_plus_per_image_dice():
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :4] = 1
    confident = (mask * 2 - 1) * 20  # logits of +-20: essentially the mask itself
    loss, parts = segmentation_loss(confident, mask)
    assert parts["loss_bce"] < 1e-6 and parts["loss_dice"] < 1e-3 and loss.item() < 1e-3
    _, inverted = segmentation_loss(-confident, mask)
    assert inverted["loss_dice"] > 0.45 and inverted["loss_bce"] > 10  # image 0 gets Dice 1, image 1 ~0
    uncertain, _ = segmentation_loss(torch.zeros_like(mask), mask)
    assert loss.item() < uncertain.item() < segmentation_loss(-confident, mask)[0].item()


def test_discriminative_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), kind="discriminative")
    localizer = build_localizer(config)
    assert isinstance(localizer, DiscriminativeLocalizer) and not hasattr(localizer, "denoiser")
    options = TrainOptions(out_dir=tmp_path, steps=60, batch_size=4, learning_rate=3e-3, warmup_steps=2, val_every=10_000)
    trainer = Trainer(localizer, config, options, _Squares())
    batch = {key: torch.stack([item[key] for item in trainer.train_data.items]) for key in ("image", "mask", "edge")}
    records = [trainer.train_step(batch) for _ in range(60)]
    assert set(records[0]) >= {"loss", "loss_bce", "loss_dice"}
    assert np.mean([r["loss"] for r in records[-5:]]) < 0.5 * records[0]["loss"]


def test_discriminative_predictor_is_one_deterministic_pass():
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), kind="discriminative")
    localizer = build_localizer(config).eval()
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    images = torch.rand(2, 3, 64, 64)
    one = predictor.predict(images, SamplingOptions(ensemble=1, seed=0))
    other = predictor.predict(images, SamplingOptions(ensemble=5, seed=3))  # sampling options change nothing
    torch.testing.assert_close(one.probability, other.probability)
    with torch.no_grad():
        torch.testing.assert_close(one.probability, torch.sigmoid(localizer(images)))
    assert one.probability.shape == (2, 1, 64, 64) and torch.all(one.uncertainty == 0)
    flipped = predictor.predict(images, SamplingOptions(tta=True))
    with torch.no_grad():
        mirrored = torch.sigmoid(localizer(images.flip(-1))).flip(-1)
    torch.testing.assert_close(flipped.probability, torch.maximum(one.probability, mirrored))


def test_configs_without_a_kind_load_as_diffusion_and_bad_kinds_are_refused():
    data = dataclasses.asdict(get_preset("test"))
    del data["kind"]  # a checkpoint written before the field existed
    assert config_from_dict(ModelConfig, data).kind == "diffusion"
    with pytest.raises(DiffimlError, match="unknown model kind"):
        dataclasses.replace(get_preset("test"), kind="segmentation")
    with pytest.raises(DiffimlError, match="latent_channels"):
        preset = get_preset("test")
        dataclasses.replace(preset, denoiser=dataclasses.replace(preset.denoiser, latent_channels=6))


def test_train_discriminative_then_localize_evaluate_and_benchmark_accept_it(tmp_path, photo_folder):
    out = tmp_path / "disc"
    result = runner.invoke(app, _train_command(photo_folder, out, 3, "--model", "discriminative"))
    assert result.exit_code == 0, result.output
    localizer, config = load_model(out / "final")
    assert config.kind == "discriminative" and isinstance(localizer, DiscriminativeLocalizer)
    assert json.loads((out / "final" / "config.json").read_text())["config"]["kind"] == "discriminative"
    with pytest.raises(DiffimlError, match="has no mask VAE"):
        load_mask_vae(out / "final")

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(images / "a.png")
    result = runner.invoke(app, ["localize", str(images), "-c", str(out / "final"), "-o", str(tmp_path / "masks")])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "masks" / "a_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}

    gt = tmp_path / "data" / "Gt"
    gt.mkdir(parents=True)
    (tmp_path / "data" / "Tp").mkdir()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "data" / "Tp" / "x.png")
    truth = np.zeros((64, 64), np.uint8)
    truth[10:30, 10:40] = 255
    Image.fromarray(truth).save(gt / "x.png")
    result = runner.invoke(app, ["evaluate", "-c", str(out / "final"), "-d", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["datasets"]["data"]["metrics"]
    assert metrics["n_tampered"] == 1 and 0 <= metrics["pixel_f1"] <= 1

    result = runner.invoke(app, ["benchmark", "-c", str(out / "final"), "--device", "cpu", "--iters", "1",
                                 "--warmup", "0", "--batch-size", "1", "--ensemble", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    flops = report["settings"][0]["flops"]["flops"]
    assert flops["denoiser"] == 0 and flops["head"] > 0 and report["parameters"]["vae"] == 0


def test_no_edge_ablation_trains_a_mask_only_denoiser(tmp_path, photo_folder, tiny_checkpoint):
    out = tmp_path / "no-edge"
    result = runner.invoke(app, _train_command(photo_folder, out, 2, "--no-edge", "--vae", str(tiny_checkpoint)))
    assert result.exit_code == 0, result.output
    localizer, config = load_model(out / "final")
    assert config.denoiser.latent_channels == 4 and not localizer.uses_edges
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "loss_mask" in records[-1] and "loss_edge" not in records[-1]
    z0 = localizer.encode_targets(torch.ones(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))
    assert z0.shape == (1, 4, 8, 8)
    loss, parts = diffiml_loss(z0 + 1, z0, mask_weight=0.2)  # alpha does not scale a mask-only loss
    assert loss.item() == pytest.approx(1.0) and set(parts) == {"loss_mask"}

    prediction = Predictor(localizer, config.diffusion, device=torch.device("cpu")).predict(
        torch.rand(1, 3, 64, 64), SamplingOptions(steps=2, ensemble=2)
    )
    assert prediction.probability.shape == (1, 1, 64, 64)


def test_model_switches_that_contradict_each_other_are_refused(tmp_path, photo_folder, tiny_checkpoint):
    result = runner.invoke(app, _train_command(photo_folder, tmp_path / "a", 1, "--model", "discriminative", "--no-edge"))
    assert result.exit_code == 1 and "--no-edge is an ablation of the diffusion model" in result.output
    result = runner.invoke(app, _train_command(photo_folder, tmp_path / "b", 1, "--model", "discriminative",
                                               "--init", str(tiny_checkpoint)))
    assert result.exit_code == 1 and "is a diffusion model" in result.output
    result = runner.invoke(app, _train_command(photo_folder, tmp_path / "c", 1, "--model", "gan"))
    assert result.exit_code == 1 and "unknown model kind 'gan'" in result.output
