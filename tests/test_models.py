"""Models: shapes, finiteness, gradients, the reference sizes, and the fast preset's FLOP budget."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffiml_cli.config import MaskVAEConfig, ModelConfig, config_from_dict
from diffiml_cli.errors import DiffimlError
from diffiml_cli.flops import count_flops
from diffiml_cli.models.build import build_localizer
from diffiml_cli.models.denoiser import Denoiser
from diffiml_cli.models.mask_vae import MaskVAE, decoded_to_probability
from diffiml_cli.presets import PRESETS, get_preset


@pytest.mark.parametrize("preset", ["test", "tiny", "fast", "paper"])
def test_localizer_shapes_finite_and_every_trainable_parameter_gets_a_gradient(preset):
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset(preset), image_size=64)
    localizer = build_localizer(config).train()
    image = torch.rand(2, 3, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    edge = (torch.rand(2, 1, 64, 64) > 0.8).float()

    condition = localizer.encoder(image)
    assert condition.shape == (2, config.encoder.out_channels, 8, 8)
    z0 = localizer.encode_targets(mask, edge)
    assert z0.shape == (2, 8, 8, 8)
    x0_pred = localizer.denoiser(torch.randn_like(z0), torch.tensor([999, 0]), condition)
    assert x0_pred.shape == z0.shape
    assert torch.isfinite(x0_pred).all()

    torch.nn.functional.mse_loss(x0_pred, z0).backward()
    trainable = {name: p for name, p in localizer.named_parameters() if p.requires_grad}
    assert trainable and all(not name.startswith("vae.") for name in trainable)
    missing = [name for name, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]


def test_paper_preset_matches_the_reference_sizes():
    localizer = build_localizer(get_preset("paper"))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert abs(count(localizer.encoder.backbone) - 44.07e6) < 0.01e6  # MiT-b3 == pvt_v2_b3, mlp_ratios 4
    unet = localizer.denoiser.unet
    assert len(unet.down_blocks) == 1 and unet.mid_block.attentions[0] is not None  # one level + mid attention


def test_mask_vae_is_the_reference_design_and_stays_in_eval():
    vae = MaskVAE(MaskVAEConfig())
    assert not vae.training  # from construction on, or the first encode would update BatchNorm
    assert 180_000 < sum(p.numel() for p in vae.parameters()) < 200_000
    mask = torch.ones(1, 1, 64, 64)
    assert vae.encode(mask).shape == (1, 4, 8, 8)
    assert vae.decode(vae.encode(mask)).shape == (1, 1, 64, 64)
    assert not vae.train().training  # BatchNorm statistics must not drift while the denoiser trains
    assert vae.unfreeze().training


def test_decoded_to_probability_keeps_the_reference_decision_at_half():
    decoded = torch.tensor([-3.0, -1.0, -0.01, 0.01, 1.0, 3.0])
    probability = decoded_to_probability(decoded)
    assert torch.equal(probability >= 0.5, torch.sigmoid(decoded) >= 0.5)
    assert probability.min() == 0 and probability.max() == 1


def test_fast_preset_denoiser_costs_at_most_3_gflops_per_step_at_512_with_attention_counted():
    config = get_preset("fast")
    denoiser = Denoiser(config.denoiser).eval()
    x_t, condition = torch.randn(1, 8, 64, 64), torch.randn(1, config.denoiser.condition_channels, 64, 64)
    count = count_flops(lambda: denoiser(x_t, torch.tensor([500]), condition))
    attention = sum(v for k, v in count.by_operator.items() if "attention" in k)
    assert attention > 0  # the mid-block attention is counted, not silently 0 on CPU
    assert count.flops <= 3e9


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    for config in PRESETS.values():
        assert config_from_dict(ModelConfig, dataclasses.asdict(config)) == config
    data = dataclasses.asdict(get_preset("test"))
    data["vae"]["nonsense"] = 1
    with pytest.raises(DiffimlError, match="nonsense"):
        config_from_dict(ModelConfig, data)


def test_image_size_must_fit_the_unet_depth():
    with pytest.raises(DiffimlError, match="multiple of 64"):
        dataclasses.replace(get_preset("fast"), image_size=96)
