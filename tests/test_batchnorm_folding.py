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


@torch.inference_mode()
def test_the_shipped_checkpoint_loses_every_norm_and_keeps_its_outputs():
    model, _ = load_model(default_checkpoint())
    folded = copy.deepcopy(model)
    norms = _norms(model)
    assert norms > 40  # EfficientNet-Lite0's, the fuse block's and the LightVAE's
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
