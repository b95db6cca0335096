"""Folding BatchNorm into convolutions for inference: every norm of the shipped checkpoint goes, outputs stay."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffiml_cli.checkpoint import default_checkpoint
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.batchnorm_folding import fold_batchnorm
from diffiml_cli.models.build import load_model


def _norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def _test_preset_model() -> nn.Module:
    """The `test` preset (timm's test_efficientnet: ConvBnAct and EdgeResidual blocks), its norms' statistics
    randomised so that folding them is not the identity."""
    from diffiml_cli.models.build import build_localizer
    from diffiml_cli.presets import get_preset

    torch.manual_seed(0)
    model = build_localizer(get_preset("test"))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(("name", "least"), [("shipped", 40), ("test preset", 5)])
@torch.inference_mode()
def test_a_model_loses_every_norm_and_keeps_its_outputs(name, least):
    model = load_model(default_checkpoint())[0] if name == "shipped" else _test_preset_model()
    folded = copy.deepcopy(model)
    norms = _norms(model)
    assert norms > least  # the backbone's, the fuse block's and the LightVAE's
    assert fold_batchnorm(folded) == norms and _norms(folded) == 0
    torch.manual_seed(0)
    image, latent = torch.rand(2, 3, 96, 128), torch.randn(3, 4, 12, 16)
    assert torch.allclose(folded.encoder(image), model.encoder(image), atol=1e-3, rtol=1e-4)
    assert torch.allclose(folded.decode_mask(latent), model.decode_mask(latent), atol=1e-4, rtol=1e-4)
    assert torch.allclose(folded.vae.encoder(image[:, :1]), model.vae.encoder(image[:, :1]), atol=1e-4, rtol=1e-4)
    assert fold_batchnorm(folded) == 0  # nothing left to fold


class _Unknown(nn.Module):
    """A convolution and a norm whose forward does not chain them: folding would change the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bn(x)


def test_only_pairs_whose_data_flow_is_known_are_folded():
    torch.manual_seed(0)
    after_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    unknown = _Unknown()
    for model in (after_relu, unknown):
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
        model.eval()
        assert fold_batchnorm(model) == 0
        assert _norms(model) == 1


def test_a_norm_in_training_mode_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(DiffimlError, match="eval mode"):
        fold_batchnorm(model)


def test_benchmark_times_the_folded_model_and_counts_the_checkpoints_parameters():
    from diffiml_cli.benchmarking import count_parameters, run_benchmark
    from diffiml_cli.models.build import build_localizer
    from diffiml_cli.presets import get_preset

    config = get_preset("test")
    torch.manual_seed(0)
    model = build_localizer(config)
    before, norms = count_parameters(model), _norms(model)
    assert norms > 0
    result = run_benchmark(model, config, source="test", random_init=True, device=torch.device("cpu"), steps=1,
                           ensembles=(1,), batch_sizes=(1,), warmup=0, iters=1)
    assert _norms(model) == 0  # what was timed is what load_localizer runs
    assert result["parameters"] == before != count_parameters(model)
