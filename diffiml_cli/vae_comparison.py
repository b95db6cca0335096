"""LightVAE against the Stable Diffusion VAE it replaces: parameters, FLOPs and time of one mask encode + decode
(`diffiml benchmark --compare-vae`)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from diffusers import AutoencoderKL

from diffiml_cli.config import MaskVAEConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.flops import count_flops
from diffiml_cli.models.mask_vae import MaskVAE
from diffiml_cli.timing import summarize, time_call_ms

# The Stable Diffusion VAE (stabilityai/sd-vae-ft-mse) architecture: the teacher LightVAE replaces.
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}


def compare_vae(
    image_size: int,
    device: torch.device,
    iters: int,
    *,
    warmup: int = 1,
    vae_config: MaskVAEConfig | None = None,
    fp16: bool = False,
) -> dict[str, Any]:
    """Time mask encode + decode with LightVAE (MaskVAE) against the Stable Diffusion VAE architecture.

    Both are random-init (speed does not depend on weights), in eval mode, under `inference_mode`,
    and fp16 autocast when `fp16`. The input is one (1, 1, S, S) mask in {-1, 1}; the SD VAE gets it
    repeated to 3 channels and decodes the mode of its latent distribution. MaskVAE runs channels-last,
    as `Predictor` runs it; the SD VAE runs in diffusers' default NCHW layout, which on the CPU is the
    faster of the two for it (channels-last was ~1.5x slower on torch 2.14). FLOPs of each are counted
    on its first warmup call, so at least one untimed call always runs.

    Returns {"image_size", "device", "fp16", "warmup", "iters", "mask_vae": PART, "sd_vae": PART,
    "speedup": SD median ms / MaskVAE median ms, "speedup_min": the same for the fastest calls,
    "flops_ratio": SD FLOPs / MaskVAE FLOPs}, with
    PART = {"parameters": int, "gflops": float, "memory_format": str, "ms": STATS, "calls_ms": [float]}.
    On a busy CPU the millisecond-scale MaskVAE suffers more from sharing cores than the SD VAE (its
    many short kernels each wait at a thread barrier), so `speedup_min` is the less load-biased ratio.
    """
    if iters < 1:
        raise DiffimlError(f"`iters` must be at least 1, got {iters}")
    if fp16 and device.type != "cuda":
        raise DiffimlError("`fp16` needs a CUDA device; on the CPU inference runs in fp32")
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 1, image_size, image_size, generator=generator) > 0.5).float() * 2.0 - 1.0

    mask_vae = MaskVAE(vae_config or MaskVAEConfig()).eval().to(device, memory_format=torch.channels_last)
    mask_input = mask.to(device).contiguous(memory_format=torch.channels_last)
    sd_vae = AutoencoderKL(**SD_VAE_CONFIG).eval().to(device)
    sd_input = mask.repeat(1, 3, 1, 1).to(device)

    def run_mask_vae() -> torch.Tensor:
        return mask_vae.decode(mask_vae.encode(mask_input))

    def run_sd_vae() -> torch.Tensor:
        return sd_vae.decode(sd_vae.encode(sd_input).latent_dist.mode()).sample

    autocast = torch.autocast("cuda", dtype=torch.float16) if fp16 else nullcontext()
    with torch.inference_mode(), autocast:
        parts = {"mask_vae": _time_part(mask_vae, run_mask_vae, "channels_last", device, warmup, iters),
                 "sd_vae": _time_part(sd_vae, run_sd_vae, "contiguous", device, warmup, iters)}
    return {
        "image_size": image_size,
        "device": str(device),
        "fp16": fp16,
        "warmup": max(warmup, 1),
        "iters": iters,
        "mask_vae": parts["mask_vae"],
        "sd_vae": parts["sd_vae"],
        "speedup": parts["sd_vae"]["ms"]["median"] / parts["mask_vae"]["ms"]["median"],
        "speedup_min": parts["sd_vae"]["ms"]["min"] / parts["mask_vae"]["ms"]["min"],
        "flops_ratio": parts["sd_vae"]["gflops"] / parts["mask_vae"]["gflops"],
    }


def _time_part(model: torch.nn.Module, fn, memory_format: str, device: torch.device, warmup: int, iters: int
               ) -> dict[str, Any]:
    """FLOPs of `fn` on its first (warmup) call, then `warmup - 1` more untimed calls and `iters` timed ones."""
    flops = count_flops(fn).flops
    for _ in range(warmup - 1):
        fn()
    calls_ms = [time_call_ms(fn, device) for _ in range(iters)]
    return {"parameters": sum(p.numel() for p in model.parameters()), "gflops": flops / 1e9,
            "memory_format": memory_format, "ms": summarize(calls_ms), "calls_ms": calls_ms}
