"""Native-resolution models: training windows cut without resampling, inference at each image's own size."""

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
from diffiml_cli.data.augment import crop_at_native_resolution
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import Prediction, Predictor, SamplingOptions
from diffiml_cli.inference import ModelInput
from diffiml_cli.pipeline import prepare_input
from diffiml_cli.models.build import load_model
from diffiml_cli.presets import get_preset

NATIVE = dataclasses.replace(get_preset("test"), resolution="native", native_max_side=128)


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_native_input_keeps_every_pixel_and_pads_to_the_model_multiple():
    image = _photo(45, 70)
    model_input = prepare_input(image, NATIVE)
    assert NATIVE.input_multiple == 32
    assert model_input.tensor.shape == (3, 64, 96) and model_input.valid == (45, 70)
    restored = (model_input.tensor[:, :45, :70] * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(restored, image)  # no resampling inside the valid region
    # the padding mirrors the image (reflection without repeating the edge row), it is not black
    np.testing.assert_array_equal(model_input.tensor[:, 45, :70], model_input.tensor[:, 43, :70])


def test_native_input_shrinks_only_past_the_max_side_and_keeps_the_aspect_ratio():
    model_input = prepare_input(_photo(100, 300), NATIVE)  # long side 300 > 128
    assert model_input.valid == (43, 128) and model_input.tensor.shape == (3, 64, 128)
    tiny = prepare_input(_photo(3, 5), NATIVE)  # padding larger than the image: edge replication
    assert tiny.tensor.shape == (3, 32, 32) and tiny.valid == (3, 5)


def test_resize_input_is_the_model_square():
    model_input = prepare_input(_photo(45, 70), get_preset("test"))
    assert model_input.tensor.shape == (3, 64, 64) and model_input.valid == (64, 64)


class _PaddingIsHot:
    """A stand-in predictor whose probability is 1 outside the image (in the padding) and the red channel inside."""

    def __init__(self):
        self.batch_shapes = []

    def predict_maps(self, images: torch.Tensor, options: SamplingOptions) -> Prediction:
        self.batch_shapes.append(tuple(images.shape))
        probability = images[:, :1].clone()
        return Prediction(probability, torch.zeros_like(probability), probability.amax(dim=(1, 2, 3)))

    predict_inputs = Predictor.predict_inputs


def test_predict_inputs_batches_equal_shapes_and_scores_only_the_image():
    def model_input(height, width):
        tensor = torch.ones(3, 64, 64)  # "padding" everywhere ...
        tensor[0, :height, :width] = 0.25  # ... except the image, whose red channel is 0.25
        return ModelInput(tensor, (height, width))

    inputs = [model_input(40, 50), ModelInput(torch.zeros(3, 32, 96), (32, 90)), model_input(64, 64), model_input(10, 20)]
    predictor = _PaddingIsHot()
    predictions = predictor.predict_inputs(inputs, SamplingOptions(steps=1, ensemble=1))
    assert sorted(predictor.batch_shapes) == [(1, 3, 32, 96), (3, 3, 64, 64)]  # one batch per shape, order kept
    assert [tuple(p.probability.shape) for p in predictions] == [(1, 1, 40, 50), (1, 1, 32, 90), (1, 1, 64, 64), (1, 1, 10, 20)]
    assert [float(p.image_score[0]) for p in predictions] == [0.25, 0.0, 0.25, 0.25]  # the hot padding is cropped away


def test_grouping_does_not_change_an_image_s_mask(tiny_checkpoint, one_thread):
    localizer, config = load_model(tiny_checkpoint)
    config = dataclasses.replace(config, resolution="native")
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    options = SamplingOptions(steps=2, ensemble=2, seed=3)
    inputs = [prepare_input(_photo(h, w, seed), config) for seed, (h, w) in enumerate([(40, 60), (64, 50), (33, 61)])]
    together = predictor.predict_inputs(inputs, options)
    for model_input, joint in zip(inputs, together):
        alone = predictor.predict_inputs([model_input], options)[0]
        torch.testing.assert_close(joint.probability, alone.probability, atol=1e-5, rtol=0)


def test_native_crop_is_a_verbatim_window_that_usually_holds_the_edit():
    rows, cols = np.mgrid[:90, :150]
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)  # each pixel names its place
    mask = np.zeros((90, 150), bool)
    mask[80:85, 140:145] = True  # a small edit in a corner
    rng = np.random.default_rng(0)
    for _ in range(40):
        window, window_mask = crop_at_native_resolution(image, mask, 64, rng, on_manipulation=1.0)
        top, left = int(window[0, 0, 0]), int(window[0, 0, 1])
        np.testing.assert_array_equal(window, image[top:top + 64, left:left + 64])
        np.testing.assert_array_equal(window_mask, mask[top:top + 64, left:left + 64])
        assert window_mask.any()
    uniform = sum(crop_at_native_resolution(image, mask, 64, rng, on_manipulation=0.0)[1].any() for _ in range(200))
    assert uniform < 40  # a uniform window holds this corner edit about 4% of the time


def test_native_crop_enlarges_an_image_smaller_than_the_window():
    window, window_mask = crop_at_native_resolution(_photo(40, 100), np.ones((40, 100), bool), 64, np.random.default_rng(0))
    assert window.shape == (64, 64, 3) and window_mask.shape == (64, 64) and window_mask.all()


def test_configs_without_the_field_are_resize_models_and_bad_names_are_refused():
    document = dataclasses.asdict(get_preset("test"))
    del document["resolution"], document["native_max_side"]
    assert config_from_dict(ModelConfig, document).resolution == "resize"
    with pytest.raises(DiffimlError, match="unknown resolution 'crop'"):
        dataclasses.replace(get_preset("test"), resolution="crop")
    assert get_preset("tiny").resolution == "native" and get_preset("paper").resolution == "resize"


def test_localize_at_native_resolution_writes_full_size_outputs_and_records_it(tiny_checkpoint, tmp_path):
    Image.fromarray(_photo(70, 130)).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["localize", str(tmp_path / "wide.png"), "--checkpoint", str(tiny_checkpoint),
                                      "--steps", "1", "--ensemble", "1", "--resolution", "native", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out / "wide_prob.png").size == (130, 70)
    assert json.loads((out / "results.json").read_text())["run"]["resolution"] == "native"
    refused = CliRunner().invoke(app, ["localize", str(tmp_path / "wide.png"), "--checkpoint", str(tiny_checkpoint),
                                       "--resolution", "squeeze", "--out", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "unknown resolution 'squeeze'" in refused.output


def test_train_with_native_resolution_records_it_in_the_checkpoint(photo_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--synthetic-from", str(photo_folder), "--init", str(tiny_checkpoint),
                                      "--resolution", "native", "--steps", "1", "--batch-size", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_model(out / "final")[1].resolution == "native"


def test_benchmark_times_a_native_model_at_512_unless_told(monkeypatch, tmp_path, tiny_checkpoint):
    from diffiml_cli.checkpoint import save_checkpoint

    localizer, config = load_model(tiny_checkpoint)
    native = save_checkpoint(tmp_path / "native", localizer, dataclasses.replace(config, resolution="native"))
    sizes = []
    monkeypatch.setattr("diffiml_cli.benchmarking.run_benchmark",
                        lambda localizer, config, **kwargs: sizes.append(config.image_size) or {})
    for extra in ([], ["--image-size", "128"]):
        result = CliRunner().invoke(app, ["benchmark", "--checkpoint", str(native), "--json", *extra])
        assert result.exit_code == 0, result.output
    CliRunner().invoke(app, ["benchmark", "--checkpoint", str(tiny_checkpoint), "--json"])
    assert sizes == [512, 128, 64]  # a resize model keeps its own size


def test_a_native_synthetic_dataset_yields_unresampled_windows_of_its_edits(photo_folder):
    from diffiml_cli.data import SyntheticDataset, SyntheticManipulations

    manipulations = SyntheticManipulations(photo_folder, seed=0)
    # 32 px windows fit every edit (post-processing shrinks a 96 x 128 photo to 48 x 64 at most), so none is enlarged
    dataset = SyntheticDataset(manipulations, image_size=32, length=4, crop=True)
    for index in range(4):
        item = dataset[index]
        image, mask, _ = manipulations.make(index)  # epoch 0, no augmentation: item i is sample i
        window = (item["image"] * 255).round().byte().permute(1, 2, 0).numpy()
        # find where the window sits in the edit, then check its mask there
        height, width = mask.shape
        places = [(top, left) for top in range(height - 31) for left in range(width - 31)
                  if np.array_equal(image[top:top + 32, left:left + 32], window)]
        assert places, "the item is not a verbatim window of the generated edit"
        top, left = places[0]
        np.testing.assert_array_equal(item["mask"][0].numpy() > 0.5, mask[top:top + 32, left:left + 32])
    assert dataset[1]["image"].equal(dataset[1]["image"])  # deterministic in (seed, epoch, index)
