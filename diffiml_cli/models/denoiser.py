"""The DiffIML denoiser: a diffusers UNet2DModel that predicts the clean latent x0 (paper Sec. 3.4).

The reference concatenates the image condition after `conv_in` and fuses it back to the first block's
width with a 3x3 conv. diffusers' UNet2DModel has no hook between `conv_in` and the down blocks, so
`forward` below re-states UNet2DModel's forward (time embedding, down, mid, up, out) around that one
insertion, reusing every block from diffusers unchanged.

That fuse conv is linear in its concatenated input, so it splits into a term of the sample and a term of the
condition. The condition's term does not change with the step or the ensemble member, so inference computes it
once per image (`condition_term`) and runs `denoise` at every step; `forward` is the two together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn

from diffiml_cli.config import DenoiserConfig
from diffiml_cli.errors import DiffimlError

_SUPPORTED_BLOCKS = {"DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"}


class Denoiser(nn.Module):
    """(x_t (B, 8, h, w), t (B,) int64 in [0, 999], condition (B, C, h, w)) -> x0_pred (B, 8, h, w).

    Latents are VAE latents times the VAE's scale factor: 4 mask channels then 4 edge channels.
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        unsupported = set(config.down_block_types + config.up_block_types) - _SUPPORTED_BLOCKS
        if unsupported:  # skip-connection blocks need a different forward than the one below
            raise DiffimlError(f"denoiser blocks {sorted(unsupported)} are not supported")
        self.config = config
        self.unet = UNet2DModel(
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            block_out_channels=config.block_out_channels,
            down_block_types=config.down_block_types,
            up_block_types=config.up_block_types,
            layers_per_block=config.layers_per_block,
            add_attention=config.mid_block_attention,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
        )
        width = config.block_out_channels[0]
        self.condition_fuse = nn.Conv2d(width + config.condition_channels, width, 3, padding=1)

    def condition_term(self, condition: torch.Tensor) -> torch.Tensor:
        """condition (B, C, h, w) -> (B, W, h, w), W the first block's width: the condition's share of
        `condition_fuse`, bias included. One per image and view; `repeat_interleave` it to the members."""
        fuse, width = self.condition_fuse, self.config.block_out_channels[0]
        return F.conv2d(condition, fuse.weight[:, width:], fuse.bias, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.denoise(x_t, t, self.condition_term(condition.to(x_t.dtype)))

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition_term: torch.Tensor) -> torch.Tensor:
        """`forward` with the condition's term precomputed: (x_t (B, 8, h, w), t (B,) or (1,), condition_term
        (B, W, h, w)) -> x0_pred (B, 8, h, w). Equal to one conv over the concatenation up to float rounding: the
        two halves are summed after their convs, not inside one."""
        unet, fuse, width = self.unet, self.condition_fuse, self.config.block_out_channels[0]
        t = t.reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=x_t.dtype))

        sample = unet.conv_in(x_t)
        sample = F.conv2d(sample, fuse.weight[:, :width], None, padding=1) + condition_term

        skips = (sample,)
        for down_block in unet.down_blocks:
            sample, block_skips = down_block(hidden_states=sample, temb=emb)
            skips += block_skips
        if unet.mid_block is not None:
            sample = unet.mid_block(sample, emb)
        for up_block in unet.up_blocks:
            n = len(up_block.resnets)
            sample = up_block(sample, skips[-n:], emb)
            skips = skips[:-n]

        return unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
