"""What a localizer costs: parameters, FLOPs per image, and the measured speed of the real inference path.

Everything is measured on the code that `diffiml localize` runs: FLOPs are counted by running the real
modules under `flops.count_flops` (CPU fused attention included), and timings call `Predictor.predict`
itself. FLOPs follow torch's counter: a multiply-add is 2 FLOPs and only matmul-like operators count;
GMACs are GFLOPs / 2, the unit many papers (the DiffIML paper's Table 4 among them) call "FLOPs".

Per image, with V = 2 views under flip TTA (else 1), N ensemble members and T DDIM steps, `Predictor.predict`
runs the condition encoder V times, the denoiser T * N * V times (one batch, counted per member), and the
mask VAE decoder V * (1 + N) times (the ensemble-mean latent, plus each member for the uncertainty map).
A discriminative checkpoint runs the encoder and its segmentation head V times, and nothing else.
The copy-move cue (`models/copy_move_cue.py`), when a checkpoint has it, runs OpenCV SIFT inside the
encoder; that is not a torch operator, so its work is in the timings but not in the FLOPs.

Result schema (`run_benchmark`, JSON-ready; GFLOPs/GMACs are per image, times in milliseconds):

    {
      "schema_version": 1,
      "model": {"source": str, "random_init": bool, "image_size": int, "config": {...ModelConfig...}},
      "device": {"type": "cpu" | "cuda", "name": str, "fp16": bool, "compile": bool, "cpu_threads": int,
                 "torch": str},
      "sampling": {"steps": int, "tta": bool, "seed": int},
      "parameters": {"total": int, "encoder": int, "head": int, "denoiser": int, "vae": int},
      "settings": [                                # one per (ensemble, batch_size), ensemble-major
        {
          "ensemble": int, "batch_size": int,
          "flops": {                               # `count_pipeline_flops`
            "image_size": int, "steps": int, "ensemble": int, "tta": bool, "views": int,
            "calls_per_image": {"encoder": int, "head": int, "denoiser": int, "vae_decode": int},
            "flops": {PART: int}, "gflops": {PART: float}, "gmacs": {PART: float},
          },                                       # PART: total, encoder, head, denoiser, denoiser_per_step, vae_decode
          "timing": {                              # `time_predict`
            "warmup": int, "iters": int, "timer": "cuda_events" | "perf_counter",
            "batch_ms": [float, ...],              # every timed call, in order
            "ms_per_image": STATS, "images_per_second": STATS,
          },
        }, ...
      ],
      "vae_comparison": null | {...},              # `compare_vae`, with --compare-vae
    }
    STATS = {"median": float, "q25": float, "q75": float, "min": float, "max": float}

`denoiser_per_step` is one denoiser call for one member and one view (the paper's "per step" cost);
`denoiser` is all T * N * V of them. `total` = encoder + head + denoiser + vae_decode; `head` (the
discriminative baseline's) is 0 for a diffusion model, and `denoiser` and `vae_decode` are 0 for a discriminative one.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffiml_cli.config import MaskVAEConfig, ModelConfig, config_to_dict
from diffiml_cli.errors import DiffimlError
from diffiml_cli.flops import count_flops
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import AnyLocalizer
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer
from diffiml_cli.models.mask_vae import MaskVAE

SCHEMA_VERSION = 1
FLOP_PARTS = ("total", "encoder", "head", "denoiser", "denoiser_per_step", "vae_decode")

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


def count_parameters(localizer: AnyLocalizer) -> dict[str, int]:
    """Parameter counts of the whole localizer and of each part (buffers excluded; 0 for absent parts)."""

    def numel(part: str) -> int:
        module = getattr(localizer, part, None)
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    return {"total": sum(p.numel() for p in localizer.parameters())} | {
        part: numel(part) for part in ("encoder", "head", "denoiser", "vae")
    }


def count_pipeline_flops(localizer: AnyLocalizer, image_size: int, steps: int, ensemble: int, tta: bool) -> dict[str, Any]:
    """FLOPs per image of `Predictor.predict`, in total and per part (see the module docstring).

    Each part is counted once at batch 1 by running the real module, then multiplied by how often
    `predict` calls it per image; every counted operator is linear in the batch, so this is exact
    (tests/test_benchmark.py checks it against a count of a whole `predict`).
    """
    views = 2 if tta else 1
    device = next(localizer.parameters()).device
    image = torch.rand(1, 3, image_size, image_size, device=device)
    outputs: dict[str, torch.Tensor] = {}

    def run_encoder() -> None:
        outputs["condition"] = localizer.encoder(image)

    localizer.eval()
    encoder = count_flops(run_encoder).flops
    condition = outputs["condition"]
    head = denoiser_step = vae_decode = 0
    if isinstance(localizer, DiscriminativeLocalizer):
        head = count_flops(lambda: localizer(image)).flops - encoder  # the head plus its upsampling
        calls = {"encoder": views, "head": views, "denoiser": 0, "vae_decode": 0}
    else:
        latent_size = image_size // localizer.vae.downsample_factor
        x_t = torch.randn(1, localizer.denoiser.config.latent_channels, latent_size, latent_size, device=device)
        t = torch.tensor([999], device=device)
        denoiser_step = count_flops(lambda: localizer.denoiser(x_t, t, condition)).flops
        vae_decode = count_flops(lambda: localizer.decode_mask(x_t)).flops
        calls = {"encoder": views, "head": 0, "denoiser": steps * ensemble * views, "vae_decode": views * (1 + ensemble)}
    flops = {
        "encoder": encoder * calls["encoder"],
        "head": head * calls["head"],
        "denoiser": denoiser_step * calls["denoiser"],
        "denoiser_per_step": denoiser_step,
        "vae_decode": vae_decode * calls["vae_decode"],
    }
    flops["total"] = flops["encoder"] + flops["head"] + flops["denoiser"] + flops["vae_decode"]
    flops = {part: flops[part] for part in FLOP_PARTS}
    return {
        "image_size": image_size,
        "steps": steps,
        "ensemble": ensemble,
        "tta": tta,
        "views": views,
        "calls_per_image": calls,
        "flops": flops,
        "gflops": {part: n / 1e9 for part, n in flops.items()},
        "gmacs": {part: n / 2e9 for part, n in flops.items()},
    }


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and range of a list of measurements."""
    array = np.asarray(values, dtype=np.float64)
    q25, median, q75 = np.percentile(array, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "min": float(array.min()), "max": float(array.max())}


def _time_call_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one `fn()` in ms: CUDA events around it on a GPU, `perf_counter` on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1000.0


def time_predict(
    predictor: Predictor,
    options: SamplingOptions,
    *,
    image_size: int,
    batch_size: int,
    warmup: int,
    iters: int,
) -> dict[str, Any]:
    """Time `predictor.predict` on a batch of random images, after `warmup` untimed calls.

    The images start on the CPU, as they do in `localize`, so the host-to-device copy and the copy of
    the results back are part of every timed call.
    """
    if iters < 1:
        raise DiffimlError(f"--iters must be at least 1, got {iters}")
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    for _ in range(warmup):
        predictor.predict(images, options)
    batch_ms = [_time_call_ms(lambda: predictor.predict(images, options), predictor.device) for _ in range(iters)]
    return {
        "warmup": warmup,
        "iters": iters,
        "timer": "cuda_events" if predictor.device.type == "cuda" else "perf_counter",
        "batch_ms": batch_ms,
        "ms_per_image": summarize([ms / batch_size for ms in batch_ms]),
        "images_per_second": summarize([1000.0 * batch_size / ms for ms in batch_ms]),
    }


def _import_autoencoder_kl() -> type:
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise DiffimlError("--compare-vae needs diffusers: pip install diffusers") from error
    return AutoencoderKL


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
    AutoencoderKL = _import_autoencoder_kl()
    if iters < 1:
        raise DiffimlError(f"--iters must be at least 1, got {iters}")
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
    parts = {}
    with torch.inference_mode(), autocast:
        for name, model, fn, memory_format in (
            ("mask_vae", mask_vae, run_mask_vae, "channels_last"),
            ("sd_vae", sd_vae, run_sd_vae, "contiguous"),
        ):
            flops = count_flops(fn).flops
            for _ in range(warmup - 1):
                fn()
            calls_ms = [_time_call_ms(fn, device) for _ in range(iters)]
            parts[name] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "gflops": flops / 1e9,
                "memory_format": memory_format,
                "ms": summarize(calls_ms),
                "calls_ms": calls_ms,
            }
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


def describe_device(device: torch.device, fp16: bool, compile: bool = False) -> dict[str, Any]:
    """The device a benchmark ran on and how the predictor ran there, with the CPU thread count."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return {
        "type": device.type,
        "name": name,
        "fp16": fp16,
        "compile": compile,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_benchmark(
    localizer: AnyLocalizer,
    config: ModelConfig,
    *,
    source: str,
    random_init: bool,
    device: torch.device,
    fp16: bool = False,
    compile: bool = False,
    steps: int = 8,
    ensembles: Sequence[int] = (1, 5),
    batch_sizes: Sequence[int] = (1, 8),
    tta: bool = False,
    warmup: int = 2,
    iters: int = 5,
    with_vae_comparison: bool = False,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Parameters, FLOPs and `Predictor.predict` timings for every (ensemble, batch size) pair.

    `config.image_size` is the size benchmarked (it may differ from the size the weights were trained
    at; the networks are fully convolutional). With `compile`, the denoiser is compiled during the first
    warmup call of each new input shape, so keep `warmup` >= 1. Returns the structure in the module docstring.
    """
    progress = on_progress or (lambda message: None)
    if warmup < 0:
        raise DiffimlError(f"--warmup must be at least 0, got {warmup}")
    if iters < 1:
        raise DiffimlError(f"--iters must be at least 1, got {iters}")
    image_size = config.image_size
    # Build the sampling options first: a bad --steps or --ensemble fails before any slow work.
    options = {N: SamplingOptions(steps=steps, ensemble=N, tta=tta, seed=seed) for N in ensembles}
    vae_comparison = None
    if with_vae_comparison:
        progress(f"VAE comparison at {image_size}px")
        vae_comparison = compare_vae(image_size, device, iters, warmup=warmup, vae_config=config.vae, fp16=fp16)

    predictor = Predictor(localizer, config.diffusion, device=device, precision="fp16" if fp16 else "fp32", compile=compile)
    settings = []
    for N in ensembles:
        progress(f"counting FLOPs, N={N}")
        flops = count_pipeline_flops(predictor.localizer, image_size, steps, N, tta)
        for batch_size in batch_sizes:
            progress(f"timing N={N}, batch {batch_size}: {warmup} warmup + {iters} timed calls")
            timing = time_predict(
                predictor, options[N], image_size=image_size, batch_size=batch_size, warmup=warmup, iters=iters
            )
            settings.append({"ensemble": N, "batch_size": batch_size, "flops": flops, "timing": timing})

    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "source": source,
            "random_init": random_init,
            "image_size": image_size,
            "config": config_to_dict(config),
        },
        "device": describe_device(device, fp16, compile),
        "sampling": {"steps": steps, "tta": tta, "seed": seed},
        "parameters": count_parameters(localizer),
        "settings": settings,
        "vae_comparison": vae_comparison,
    }
