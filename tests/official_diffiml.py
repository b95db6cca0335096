"""The official DiffIML network, restated in plain torch for tests: names, shapes and forward passes.

Written after `IMDLBenCo/model_zoo/diffiml/diffiml.py` (ConditionEncoder, Unet, LightVAE, DiffIML) and
`IMDLBenCo/model_zoo/diffiml/segformer.py` (NVlabs' MiT-b3) of https://github.com/scu-zjz/DiffIML, so that
`state_dict()` yields the official key names and shapes, and the forwards compute what the official ones do.
It shares no code with timm's pvt_v2 or with diffiml's modules, so agreeing with them is evidence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn

# MiT-b3 (segformer.py `mit_b3`): qkv_bias=True, mlp_ratio 4, block and stage norms LayerNorm(eps=1e-6).
DIMS, HEADS, DEPTHS, SR_RATIOS = (64, 128, 320, 512), (1, 2, 5, 8), (3, 4, 18, 3), (8, 4, 2, 1)


class Attention(nn.Module):
    """Efficient self-attention: keys and values from a grid shrunk sr_ratio times (one `kv` Linear, k rows first)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads, self.sr_ratio = heads, sr_ratio
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # PyTorch's eps 1e-5 here

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.heads, C // self.heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(C // self.heads)).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(B, N, C))


class DWConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)


class Mlp(nn.Module):
    """fc1 -> 3x3 depthwise conv on the token grid -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.dwconv, self.fc2 = nn.Linear(dim, hidden), DWConv(hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)
        B, N, C = x.shape
        x = self.dwconv.dwconv(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads, sr_ratio), Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)  # PyTorch's eps 1e-5 here

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class MixVisionTransformer(nn.Module):
    """(B, 3, H, W) ImageNet-normalised -> four maps (B, C_i, H / 2^(i+2), W / 2^(i+2)), C = 64, 128, 320, 512."""

    def __init__(self) -> None:
        super().__init__()
        for i, (dim, heads, depth, sr) in enumerate(zip(DIMS, HEADS, DEPTHS, SR_RATIOS), start=1):
            patch, stride, in_channels = (7, 4, 3) if i == 1 else (3, 2, DIMS[i - 2])
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(patch, stride, in_channels, dim))
            setattr(self, f"block{i}", nn.ModuleList(Block(dim, heads, sr) for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 5):
            x, H, W = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, H, W)
            x = getattr(self, f"norm{i}")(x).reshape(x.shape[0], H, W, -1).permute(0, 3, 1, 2)
            outs.append(x)
        return outs


class ConditionEncoder(nn.Module):
    """diffiml.py `ConditionEncoder('segformer_b3', out_ch=128)`; `out_shape` is the official fixed 64 by default."""

    def __init__(self, out_shape: int = 64) -> None:
        super().__init__()
        self.backbone, self.out_shape = MixVisionTransformer(), out_shape
        for i, channels in enumerate(DIMS, start=1):
            setattr(self, f"linear_c{i}", nn.Conv2d(channels, 128, 1))
        self.linear_fuse = nn.Sequential(nn.Conv2d(4 * 128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128),
                                         nn.ReLU(inplace=True))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        stages = self.backbone(image)
        size = (self.out_shape, self.out_shape)
        resized = [F.interpolate(getattr(self, f"linear_c{i}")(stages[i - 1]), size=size, mode="bilinear",
                                 align_corners=False) for i in (4, 3, 2, 1)]  # the official order: c4 first
        return self.linear_fuse(torch.cat(resized, dim=1))


class Unet(nn.Module):
    """diffiml.py `Unet(ch=128)`: UNet2DModel with the condition concatenated after conv_in and fused by `concat`."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = UNet2DModel(in_channels=8, out_channels=8, block_out_channels=[128],
                                down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), layers_per_block=2)
        self.concat = nn.Conv2d(128 + 128, 128, 3, padding=1, bias=False)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        emb = unet.time_embedding(unet.time_proj(timestep * torch.ones(sample.shape[0], dtype=timestep.dtype)))
        sample = self.concat(torch.cat([unet.conv_in(sample), feature], dim=1))
        residuals = (sample,)
        for block in unet.down_blocks:
            sample, more = block(hidden_states=sample, temb=emb)
            residuals += more
        sample = unet.mid_block(sample, emb)
        for block in unet.up_blocks:
            n = len(block.resnets)
            sample, residuals = block(sample, residuals[-n:], emb), residuals[:-n]
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))


def light_vae_encoder() -> nn.Sequential:
    """diffiml.py `LightVAE(base_channels=32, norm_layer_type="BatchNorm", ReLU).encoder`: 1 -> 4 channels, 1/8 size."""
    layers: list[nn.Module] = []
    for in_channels, out_channels in ((1, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(128, 4, 1))


def light_vae_decoder() -> nn.Sequential:
    """The same LightVAE's `.decoder`: BN after the 1x1 projection, three ConvTranspose2d, a final 3x3 conv."""
    layers: list[nn.Module] = [nn.Conv2d(4, 128, 1)]
    for in_channels, out_channels in ((128, 64), (64, 32), (32, 32)):
        layers += [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                   nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 3, padding=1))


class LightVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = light_vae_encoder(), light_vae_decoder()


class DiffIML(nn.Module):
    """The module whose `state_dict()` IMDL-BenCo saves as the checkpoint's "model" (the scheduler holds no tensors)."""

    def __init__(self, out_shape: int = 64) -> None:
        super().__init__()
        self.extractor, self.unet, self.vae = ConditionEncoder(out_shape), Unet(), LightVAE()


def random_official(out_shape: int, seed: int = 0) -> DiffIML:
    """An eval-mode DiffIML with every tensor random and of unit-scale effect, built without torch's slow init.

    Norm weights near 1 and biases, means and statistics away from their defaults, so a swapped or
    defaulted tensor changes the outputs; weights ~ N(0, 1 / fan_in) keep 28 residual blocks finite.
    """
    with torch.device("meta"):
        model = DiffIML(out_shape)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.fill_(7)  # num_batches_tracked
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif tensor.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                tensor.normal_(base, 0.1, generator=generator)
            else:
                tensor.normal_(0.0, tensor[0].numel() ** -0.5, generator=generator)  # 1 / sqrt(fan_in)
    return model
