"""What a localizer costs: parameters, FLOPs per image, and the measured speed of the real inference path.

Everything is measured on the code that `diffiml localize` runs: FLOPs are counted by running the real
modules under `flops.count_flops` (CPU fused attention included), and timings call the `Predictor` itself
(through `LocalizationPipeline.predict_many`, as `localize` runs it, so preparing the input and resizing
the maps back are timed too). FLOPs follow torch's counter: a multiply-add is 2 FLOPs and only matmul-like operators count;
GMACs are GFLOPs / 2, the unit many papers (the DiffIML paper's Table 4 among them) call "FLOPs".

Per image, with V = 2 views under flip TTA (else 1), N ensemble members and T sampling steps, `Predictor.predict`
runs the condition encoder V times, the condition's share of the denoiser's fuse conv V times, the rest of
the denoiser T * N * V times (one batch, counted per member), and the mask VAE decoder V * (1 + N) times (the
ensemble-mean latent, plus each member for the uncertainty map).
A discriminative checkpoint runs the encoder and its segmentation head V times, and nothing else.
The copy-move cue (`models/copy_move_cue.py`), when a checkpoint has it, runs OpenCV SIFT inside the
encoder; that is not a torch operator, so its work is in the timings but not in the FLOPs. A detector that reads
camera traces (`models/camera_trace.py`) runs its Noiseprint front end once per image: counted in "detector".

Result schema (`run_benchmark`, JSON-ready; GFLOPs/GMACs are per image, times in milliseconds):

    {
      "schema_version": 4,
      "model": {"source": str, "random_init": bool, "image_size": int, "config": {...ModelConfig...}},
      "device": {"type": "cpu" | "cuda", "name": str, "precisions": [str], "compile": bool, "cpu_threads": int,
                 "torch": str, "native_bf16": bool},
      "sampling": {"settings": [{"sampler": str, "steps": int}, ...], "tta": bool, "seed": int},
      "parameters": {"total": int, "encoder": int, "head": int, "denoiser": int, "vae": int},
      "settings": [                 # one per (precision, sampler and steps, ensemble, batch_size), in that order
        {
          "precision": "fp32" | "bf16" | "fp16", "sampler": str, "steps": int, "ensemble": int, "batch_size": int,
          "speedup_vs_fp32": float | null,         # fp32's median ms / the row's of the same sampling, when measured
          "flops": {                               # `count_pipeline_flops`
            "image_size": int, "steps": int, "ensemble": int, "tta": bool, "views": int,
            "calls_per_image": {"encoder": int, "head": int, "condition_term": int, "denoiser": int,
                                "vae_decode": int, "detector": int},
            "flops": {PART: int}, "gflops": {PART: float}, "gmacs": {PART: float},
          },          # PART: total, encoder, head, denoiser, denoiser_per_step, condition_term, vae_decode, detector
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

`denoiser_per_step` is one denoiser call for one member and one view as `predict` runs it (`Denoiser.denoise`);
`condition_term` is the condition's share of its fuse conv (`Denoiser.condition_term`), which `predict` computes
once per view; the paper's "per step" cost is their sum. `denoiser` is T * N * V steps plus V terms.
`total` = encoder + head + denoiser + vae_decode + detector; `head` (the discriminative baseline's) is 0 for a
diffusion model, and `denoiser` and `vae_decode` are 0 for a discriminative one.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffiml_cli.config import ModelConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.flops import count_flops
from diffiml_cli.inference import Predictor, SamplingOptions, cpu_has_native_bf16
from diffiml_cli.models.batchnorm_folding import fold_batchnorm
from diffiml_cli.models.build import AnyLocalizer
from diffiml_cli.models.detector import cell_channels
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer
from diffiml_cli.pipeline import LocalizationPipeline
from diffiml_cli.timing import summarize, time_call_ms
from diffiml_cli.vae_comparison import compare_vae

SCHEMA_VERSION = 4  # 3: the condition_term part; denoiser_per_step without it. 4: rows per sampler and steps
FLOP_PARTS = ("total", "encoder", "head", "denoiser", "denoiser_per_step", "condition_term", "vae_decode", "detector")

NATIVE_BENCHMARK_SIZE = 512  # a native model's image_size is only its training window


def benchmark_model(checkpoint: str | None, preset: str | None, *, image_size: int | None = None,
                    allow_pickle: bool = False) -> tuple[AnyLocalizer, ModelConfig, str]:
    """(model, its config at the benchmarked square `image_size`, a description of the source): a random-init
    model of `preset`, or the checkpoint (default: the shipped one). A native model defaults to 512 px."""
    from diffiml_cli.checkpoint import default_checkpoint
    from diffiml_cli.models.build import build_localizer, load_model
    from diffiml_cli.presets import get_preset

    if checkpoint and preset:
        raise DiffimlError("pass `checkpoint` or `preset`, not both")
    if preset:
        torch.manual_seed(0)
        config = get_preset(preset)
        localizer, source = build_localizer(config), f"preset:{preset}"
    else:
        source_path = checkpoint or default_checkpoint()
        localizer, config = load_model(source_path, allow_pickle=allow_pickle)
        source = str(source_path)
    if image_size is None and config.resolution == "native":
        image_size = NATIVE_BENCHMARK_SIZE
    if image_size is not None:
        config = dataclasses.replace(config, image_size=image_size)  # validates the size for this model
    return localizer, config, source


def count_parameters(localizer: AnyLocalizer) -> dict[str, int]:
    """Parameter counts of the whole localizer and of each part (buffers excluded; 0 for absent parts)."""

    def numel(part: str) -> int:
        module = getattr(localizer, part, None)
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    return {"total": sum(p.numel() for p in localizer.parameters())} | {
        part: numel(part) for part in ("encoder", "head", "denoiser", "vae", "detector")
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
        outputs["condition"] = localizer.condition(image)

    localizer.eval()
    encoder = count_flops(run_encoder).flops
    condition = outputs["condition"]
    head = denoiser_step = term = vae_decode = 0
    if isinstance(localizer, DiscriminativeLocalizer):
        head = count_flops(lambda: localizer(image)).flops - encoder  # the head plus its upsampling
        calls = {"encoder": views, "head": views, "condition_term": 0, "denoiser": 0, "vae_decode": 0}
    else:
        latent_size = image_size // localizer.vae.downsample_factor
        x_t = torch.randn(1, localizer.denoiser.config.latent_channels, latent_size, latent_size, device=device)
        t = torch.tensor([999], device=device)
        term = count_flops(lambda: outputs.update(term=localizer.denoiser.condition_term(condition))).flops
        denoiser_step = count_flops(lambda: localizer.denoiser.denoise(x_t, t, outputs["term"])).flops
        vae_decode = count_flops(lambda: localizer.decode_mask(x_t)).flops
        calls = {"encoder": views, "head": 0, "condition_term": views, "denoiser": steps * ensemble * views,
                 "vae_decode": views * (1 + ensemble)}
    detector = 0
    if localizer.detector is not None:  # once per image, on the merged views
        cells = torch.rand(1, cell_channels(localizer.detector.config), *condition.shape[-2:], device=device)
        detector = count_flops(lambda: localizer.detector.score(localizer.detector(condition, cells), cells)).flops
        if localizer.detector.config.trace_features:  # its camera-trace front end runs once per image too
            detector += count_flops(lambda: localizer.trace(image)).flops
    calls["detector"] = int(localizer.detector is not None)
    flops = {
        "encoder": encoder * calls["encoder"],
        "head": head * calls["head"],
        "denoiser": denoiser_step * calls["denoiser"] + term * calls["condition_term"],
        "denoiser_per_step": denoiser_step,
        "condition_term": term,
        "vae_decode": vae_decode * calls["vae_decode"],
        "detector": detector,
    }
    flops["total"] = flops["encoder"] + flops["head"] + flops["denoiser"] + flops["vae_decode"] + detector
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


def time_predict(
    pipeline: LocalizationPipeline,
    options: SamplingOptions,
    *,
    image_size: int,
    batch_size: int,
    warmup: int,
    iters: int,
) -> dict[str, Any]:
    """Time `pipeline.predict_many` on `batch_size` random (image_size, image_size, 3) uint8 images, as one model
    batch, after `warmup` untimed calls: preparing the input, the host-device copies, the model, cropping and
    resizing the maps back are all inside every timed call."""
    if iters < 1:
        raise DiffimlError(f"`iters` must be at least 1, got {iters}")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(batch_size)]
    pipeline.batch_size = batch_size
    for _ in range(warmup):
        pipeline.predict_many(images, options)
    device = pipeline.predictor.device
    batch_ms = [time_call_ms(lambda: pipeline.predict_many(images, options), device) for _ in range(iters)]
    return {
        "warmup": warmup,
        "iters": iters,
        "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
        "batch_ms": batch_ms,
        "ms_per_image": summarize([ms / batch_size for ms in batch_ms]),
        "images_per_second": summarize([1000.0 * batch_size / ms for ms in batch_ms]),
    }


def describe_device(device: torch.device, precisions: Sequence[str], compile: bool = False) -> dict[str, Any]:
    """The device a benchmark ran on, its precisions, and the CPU thread count and native bf16 support."""
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
        "precisions": list(precisions),
        "compile": compile,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_bf16": cpu_has_native_bf16() if device.type == "cpu" else None,
    }


def run_benchmark(
    localizer: AnyLocalizer,
    config: ModelConfig,
    *,
    source: str,
    random_init: bool,
    device: torch.device,
    precisions: Sequence[str] = ("fp32",),
    compile: bool = False,
    steps: int = SamplingOptions.steps,
    samplings: Sequence[tuple[str | None, int]] | None = None,
    ensembles: Sequence[int] = (1, 5),
    batch_sizes: Sequence[int] = (1, 8),
    tta: bool = False,
    warmup: int = 2,
    iters: int = 5,
    with_vae_comparison: bool = False,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Parameters, FLOPs and `LocalizationPipeline.predict_many` timings for every (precision, sampling, ensemble,
    batch size), with each precision's speed-up over fp32 measured side by side in this run.

    samplings: the (sampler, steps) settings timed side by side, e.g. [("ddim-leading", 8), ("ddim-trailing", 2)];
    a None sampler is the checkpoint's. Default: the checkpoint's sampler at `steps`.

    `config.image_size` is the size benchmarked (it may differ from the size the weights were trained at; the
    networks are fully convolutional). With `compile`, the denoiser is compiled during the first warmup call of
    each new input shape, so keep `warmup` >= 1. `localizer`'s BatchNorms are folded in place, as `load_localizer`
    folds them; its parameters are counted before. Returns the structure in the module docstring.
    """
    progress = on_progress or (lambda message: None)
    if warmup < 0:
        raise DiffimlError(f"`warmup` must be at least 0, got {warmup}")
    if iters < 1:
        raise DiffimlError(f"`iters` must be at least 1, got {iters}")
    image_size = config.image_size
    # Build the sampling options first: bad samplers, steps or ensemble sizes fail before any slow work.
    timed = list(dict.fromkeys(SamplingOptions(sampler=sampler or config.diffusion.sampler_name, steps=count, tta=tta,
                                               seed=seed) for sampler, count in samplings or [(None, steps)]))
    options = [dataclasses.replace(sampling, ensemble=N) for sampling in timed for N in ensembles]
    vae_comparison = None
    if with_vae_comparison:
        progress(f"VAE comparison at {image_size}px")
        vae_comparison = compare_vae(image_size, device, iters, warmup=warmup, vae_config=config.vae,
                                     fp16="fp16" in precisions)
    if config.resolution == "native":  # the benchmarked square must run in one pass, neither shrunk nor tiled
        config = dataclasses.replace(config, native_max_side=max(config.native_max_side, image_size))
    parameters = count_parameters(localizer)  # the checkpoint's, before the folding below changes them
    fold_batchnorm(localizer.eval())  # in place, as `load_localizer` runs it
    flops = {(count, N): count_pipeline_flops(localizer.to(device), image_size, count, N, tta)
             for count, N in dict.fromkeys((option.steps, option.ensemble) for option in options)}
    settings, resolved = [], []  # resolved: each precision as the Predictor resolved it (auto -> bf16, ...)
    for precision in precisions:
        predictor = Predictor(localizer, config.diffusion, device=device, precision=precision, compile=compile)
        resolved.append(predictor.precision)
        settings += _time_precision(LocalizationPipeline(predictor, config, tile=0), options, batch_sizes, flops,
                                    warmup=warmup, iters=iters, progress=progress)
    _speedups(settings)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"source": source, "random_init": random_init, "image_size": image_size,
                  "config": dataclasses.asdict(config)},
        "device": describe_device(device, resolved, compile),
        "sampling": {"settings": [{"sampler": sampling.sampler, "steps": sampling.steps} for sampling in timed],
                     "tta": tta, "seed": seed},
        "parameters": parameters,
        "settings": settings,
        "vae_comparison": vae_comparison,
    }


def _time_precision(pipeline: LocalizationPipeline, options: Sequence[SamplingOptions], batch_sizes: Sequence[int],
                    flops: dict[tuple[int, int], Any], *, warmup: int, iters: int, progress: Callable[[str], None]
                    ) -> list[dict]:
    """One settings row per (sampling options, batch size) for `pipeline`'s precision, at `config.image_size`;
    flops: `count_pipeline_flops` by (steps, ensemble)."""
    rows = []
    precision, image_size = pipeline.predictor.precision, pipeline.config.image_size
    for sampling in options:
        N = sampling.ensemble
        for batch_size in batch_sizes:
            progress(f"timing {precision}, {sampling.sampler} {sampling.steps} steps, N={N}, batch {batch_size}: "
                     f"{warmup} warmup + {iters} timed calls")
            timing = time_predict(pipeline, sampling, image_size=image_size, batch_size=batch_size, warmup=warmup,
                                  iters=iters)
            rows.append({"precision": precision, "sampler": sampling.sampler, "steps": sampling.steps, "ensemble": N,
                         "batch_size": batch_size, "flops": flops[sampling.steps, N], "timing": timing,
                         "speedup_vs_fp32": None})
    return rows


def _speedups(settings: list[dict]) -> None:
    """Fill each row's speed-up over the fp32 row of the same (sampler, steps, N, batch), when there is one."""
    def key(row: dict) -> tuple:
        return row["sampler"], row["steps"], row["ensemble"], row["batch_size"]

    fp32 = {key(r): r["timing"]["ms_per_image"]["median"] for r in settings if r["precision"] == "fp32"}
    for row in settings:
        baseline = fp32.get(key(row))
        if baseline is not None:
            row["speedup_vs_fp32"] = baseline / row["timing"]["ms_per_image"]["median"]
