"""Named model presets: the only place where architecture hyperparameters are chosen.

- `paper`: the authors' reference configuration (MiT-b3 encoder, one-level UNet with mid attention,
  30.6 GFLOPs per denoiser step at 512^2). Faithful, and about 1,300 GFLOPs per image at 8 steps x N=5.
- `fast`: the same MiT-b3-class encoder with a three-level UNet whose only attention sits at 1/64 of
  the input, so the whole default pipeline (8 steps, N=5) stays under 200 GFLOPs at 512^2.
- `tiny`: EfficientNet-Lite0 (ImageNet weights available offline) with the fast denoiser, trained on
  256^2 windows at native resolution (they fit inside BSDS500's 321-pixel short side, so no photo is
  enlarged) and run at each image's own resolution; what the shipped CPU checkpoint uses.
`diffiml benchmark --preset NAME` prints the measured cost of each.
"""

from __future__ import annotations

from diffiml_cli.config import ConditionEncoderConfig, DenoiserConfig, ModelConfig
from diffiml_cli.errors import DiffimlError

# 2.48 GFLOPs per step at 512^2 (attention counted) against the reference's 33.0 with its fuse conv.
_FAST_DENOISER = DenoiserConfig(
    block_out_channels=(24, 48, 96, 192),
    down_block_types=("DownBlock2D",) * 4,
    up_block_types=("UpBlock2D",) * 4,
    layers_per_block=1,
    mid_block_attention=True,  # at 1/8 of the latent size: 8x8 tokens for a 512^2 image
    attention_head_dim=32,
    norm_num_groups=8,
)

# Transformers' SegFormer, whose names `nvidia/mit-b3` uses, runs every LayerNorm at eps 1e-5.
_MIT_B3 = ConditionEncoderConfig(layer_norm_eps=1e-5)

_EFFICIENTNET_LITE0 = ConditionEncoderConfig(
    backbone="tf_efficientnet_lite0",
    backbone_kwargs=(),
    pixel_mean=(0.5, 0.5, 0.5),  # the TF-Lite models were trained on inputs scaled to [-1, 1]
    pixel_std=(0.5, 0.5, 0.5),
)

PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(image_size=512, encoder=_MIT_B3),
    "fast": ModelConfig(image_size=512, encoder=_MIT_B3, denoiser=_FAST_DENOISER),
    # Trained on native-resolution windows and run at each image's own size (`ModelConfig.resolution`).
    "tiny": ModelConfig(image_size=256, encoder=_EFFICIENTNET_LITE0, denoiser=_FAST_DENOISER, resolution="native"),
    # For tests only: a random-init, few-thousand-parameter network that runs in milliseconds.
    "test": ModelConfig(
        image_size=64,
        encoder=ConditionEncoderConfig(
            backbone="test_efficientnet",  # timm's own 82k-parameter test network
            backbone_kwargs=(),
            embed_channels=16,
            out_channels=16,
        ),
        denoiser=DenoiserConfig(
            condition_channels=16,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The ModelConfig of a named preset; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise DiffimlError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
