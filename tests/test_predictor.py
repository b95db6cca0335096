"""The inference path: one predictor interface over the two map models, and the detector scoring each image once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffiml_cli.config import DetectorConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import Predictor, SamplingOptions, pad_to_multiple
from diffiml_cli.map_models import DiffusionMaps, SegmentationMaps
from diffiml_cli.models.build import build_localizer
from diffiml_cli.pipeline import LocalizationPipeline
from diffiml_cli.presets import get_preset

OPTIONS = SamplingOptions(steps=1, ensemble=2)


def _predictor(kind: str = "diffusion", detector: bool = True) -> tuple[Predictor, object]:
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("test"), kind=kind, resolution="native", native_max_side=256,
                                 detector=DetectorConfig(hidden_channels=8) if detector else None)
    return Predictor(build_localizer(config), config.diffusion, device=torch.device("cpu")), config


@pytest.mark.parametrize(("kind", "maps"), [("diffusion", DiffusionMaps), ("discriminative", SegmentationMaps)])
def test_one_interface_over_both_kinds_of_model(kind, maps):
    predictor, config = _predictor(kind)
    assert isinstance(predictor.maps, maps) and predictor.input_multiple == config.input_multiple == 32
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    prediction = predictor.predict(images, SamplingOptions(steps=1, ensemble=3, tta=True))
    assert prediction.probability.shape == prediction.uncertainty.shape == (2, 1, 64, 96)
    assert prediction.detection_score.shape == (2,) and prediction.cells.shape[-2:] == (8, 12)
    condition, cells = predictor.condition_and_cells(images, OPTIONS)
    assert condition.shape[-2:] == cells.shape[-2:] == (8, 12)
    if kind == "discriminative":
        assert prediction.uncertainty.abs().max() == 0  # one deterministic pass
        with pytest.raises(DiffimlError, match="does not sample"):
            predictor.sample_latents(condition, OPTIONS)
    else:
        latents = predictor.sample_latents(condition, OPTIONS)
        assert latents.shape == (2, 2, config.denoiser.latent_channels, 8, 12)


def test_the_detector_scores_each_image_once_on_the_image_alone(monkeypatch):
    predictor, config = _predictor()
    scored = []
    score = predictor.localizer.detector.score
    monkeypatch.setattr(predictor.localizer.detector, "score",
                        lambda evidence, cells: scored.append(tuple(evidence.shape)) or score(evidence, cells))
    pipeline = LocalizationPipeline(predictor, config, sampling=OPTIONS, batch_size=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(3)]
    results = pipeline.predict_many(images)
    assert scored == [(1, 1, 7, 9)] * 3  # one call per image, on its 7 x 9 cells, not the padded 8 x 12 batch as well
    alone = predictor.predict_inputs([pad_to_multiple(images[1], 32)], OPTIONS)[0]
    assert results[1].detection_score == pytest.approx(float(alone.detection_score[0]), abs=1e-6)

