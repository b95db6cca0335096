"""What a training run is made of, assembled from plain settings: the model (a preset, or a checkpoint to continue,
with its VAE, copy-move cue, detector and backbone weights), the data, and the step count. `diffiml train` and
Python callers both start a run with `start_training`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from diffiml_cli.config import DetectorConfig, ModelConfig
from diffiml_cli.data import AugmentConfig
from diffiml_cli.data.training_sets import build_training_data, build_validation_data
from diffiml_cli.defaults import SamplingOptions
from diffiml_cli.diffusion.samplers import SamplerConfig
from diffiml_cli.distributed import world_size
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.backbone_weights import load_backbone_weights
from diffiml_cli.models.build import (AnyLocalizer, build_localizer, default_vae, load_mask_vae, load_model,
                                      with_camera_trace, with_copy_move_cue, with_detector,
                                      with_trace_branch)
from diffiml_cli.presets import get_preset
from diffiml_cli.training import TRAIN_STATE_NAME, TrainOptions, Trainer
from diffiml_cli.training_options import DataRecipe, ModelRecipe  # noqa: F401 - re-exported


def read_stems(path: str | Path) -> list[str]:
    """The photo stems listed in a text file, one per line ('#' starts a comment)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DiffimlError(f"{path}: cannot read the list of photo stems ({error})") from None
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _fresh_model(recipe: ModelRecipe) -> tuple[AnyLocalizer, ModelConfig]:
    config = get_preset(recipe.preset)
    kind = recipe.kind or "diffusion"
    config = dataclasses.replace(config, kind=kind, image_size=recipe.image_size or config.image_size,
                                 resolution=recipe.resolution or config.resolution)
    if not recipe.edge:
        if kind != "diffusion":
            raise DiffimlError("`edge=False` is an ablation of the diffusion model; a discriminative one has no edge latent")
        denoiser = dataclasses.replace(config.denoiser, latent_channels=config.vae.latent_channels)
        config = dataclasses.replace(config, denoiser=denoiser)
    if kind != "diffusion":
        return build_localizer(config), config
    mask_vae = load_mask_vae(recipe.vae) if recipe.vae else default_vae()
    config = dataclasses.replace(config, vae=mask_vae.config)  # the scale factor travels with the VAE
    localizer = build_localizer(config)
    localizer.vae.load_state_dict(mask_vae.state_dict())
    return localizer, config


def build_model(recipe: ModelRecipe) -> tuple[AnyLocalizer, ModelConfig]:
    """The network `recipe` describes, with its config; see ModelRecipe."""
    if recipe.init:
        localizer, config = load_model(recipe.init)
        if recipe.kind is not None and recipe.kind != config.kind:
            raise DiffimlError(f"`init` {recipe.init} is a {config.kind} model; it cannot continue as {recipe.kind}")
        # Training changes the localizer or the detector, so an inherited calibration would no longer hold:
        # the trained model has none until `diffiml calibrate` measures it again.
        config = dataclasses.replace(config, image_size=recipe.image_size or config.image_size,
                                     resolution=recipe.resolution or config.resolution, calibration=None)
    else:
        localizer, config = _fresh_model(recipe)
    if recipe.copy_move_cue is not None:
        localizer, config = with_copy_move_cue(localizer, config, recipe.copy_move_cue)
    if recipe.noiseprint:
        localizer, config = with_camera_trace(localizer, config, recipe.noiseprint)
    if recipe.trace_branch is not None:
        localizer, config = with_trace_branch(localizer, config, recipe.trace_branch)
    if recipe.detector:
        if recipe.detector_trace and config.noiseprint is None:
            raise DiffimlError("--detector-trace needs a camera-trace front end: pass --noiseprint DIR (a `convert "
                               "--noiseprint` folder or a LightNP student), or --init a model that has one")
        detector = config.detector or DetectorConfig()
        wanted = (recipe.detector_grid, recipe.detector_trace)
        if wanted != (detector.grid_features, detector.trace_features):  # other inputs: a fresh detector
            detector = DetectorConfig(grid_features=recipe.detector_grid, trace_features=recipe.detector_trace)
        localizer, config = with_detector(localizer, config, detector)
    if recipe.backbone_weights:
        load_backbone_weights(localizer.encoder, recipe.backbone_weights)
    return localizer, config


def build_data(recipe: DataRecipe, config: ModelConfig, seed: int):
    """(training dataset, validation dataset or None) for a model of `config`."""
    crop = config.resolution == "native"
    train = build_training_data(recipe.data, recipe.synthetic_from, image_size=config.image_size, seed=seed,
                                augment=AugmentConfig(), crop=crop, synthetic_kinds=recipe.synthetic_kinds,
                                other_camera_donors=recipe.other_camera_donors, match_grain=recipe.match_grain,
                                authentic_share=recipe.authentic_share,
                                exclude=recipe.exclude_photos, hard_negatives=recipe.hard_negatives,
                                hard_negative_share=recipe.hard_negative_share, synthetic_length=recipe.synthetic_length)
    val = None
    if recipe.val:
        val = build_validation_data(recipe.val, image_size=config.image_size, seed=seed, crop=crop,
                                    authentic_share=recipe.authentic_share)
    return train, val


def total_steps(steps: int | None, epochs: int | None, length: int, batch_size: int) -> int:
    """Exactly one of `steps` and `epochs` (passes over `length` items, shared by the torchrun processes)."""
    if (steps is None) == (epochs is None):
        raise DiffimlError("give exactly one of `steps` and `epochs`")
    return max(1, steps if steps is not None else epochs * (length // world_size() // batch_size))


def start_training(model: ModelRecipe, data: DataRecipe, options: TrainOptions, *, device: torch.device,
                   resume: bool = False, epochs: int | None = None,
                   on_start: Callable[[Trainer], None] = lambda trainer: None,
                   on_step: Callable[[int, dict], None] = lambda step, record: None) -> Trainer:
    """Build the model and data, then train until `options.steps` (or `epochs`), resuming from
    `<out_dir>/state.pt` when `resume`. Returns the finished Trainer (its process group left)."""
    torch.manual_seed(options.seed)
    localizer, config = build_model(model)
    train_data, val_data = build_data(data, config, options.seed)
    steps = total_steps(None if epochs else options.steps, epochs, len(train_data), options.batch_size)
    record = {**data.sources, "data": list(data.data), "synthetic_from": list(data.synthetic_from),
              "synthetic_kinds": list(data.synthetic_kinds) if data.synthetic_kinds else "all",
              "other_camera_donors": data.other_camera_donors, "match_grain": data.match_grain, "val": data.val,
              "init": model.init,
              "backbone_weights": model.backbone_weights, "vae": model.vae, "authentic_share": data.authentic_share,
              "hard_negative_share": data.hard_negative_share,
              "recipe": dataclasses.asdict(model)}  # so that `train --config <run>/train_config.json` repeats the run
    if model.detector and options.train_part == "sampler":
        raise DiffimlError("train the detector or tune the denoiser for a sampler, not both in one run")
    options = dataclasses.replace(options, steps=steps, data_sources=record,
                                  train_part="detector" if model.detector else options.train_part)
    if options.train_part == "sampler":
        config = tuned_for(config, options.tune_sampling)
        options = dataclasses.replace(options, val_sampling=dataclasses.replace(
            options.tune_sampling, ensemble=SamplingOptions().ensemble))
    trainer = Trainer(localizer, config, options, train_data, val_data=val_data, device=device)
    try:
        if resume:
            trainer.resume(options.out_dir / TRAIN_STATE_NAME)
        elif (options.out_dir / TRAIN_STATE_NAME).exists():
            raise DiffimlError(f"{options.out_dir} already holds a run; pass `resume` to continue it, or choose "
                               "another `out_dir`")
        on_start(trainer)
        trainer.fit(on_step)
    finally:
        trainer.close()
    return trainer


def tuned_for(config: ModelConfig, sampling: SamplingOptions) -> ModelConfig:
    """`config` whose own sampler is `sampling`'s (the grid a denoiser is tuned for is the one it samples on
    unless a run asks for another)."""
    if sampling.sampler is None:
        raise DiffimlError("tuning for a sampler needs its name, e.g. ddim-trailing")
    setting = SamplerConfig.parse(sampling.sampler)
    diffusion = dataclasses.replace(config.diffusion, sampler=setting.algorithm,
                                    timestep_spacing=setting.timestep_spacing)
    return dataclasses.replace(config, diffusion=diffusion)


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    """'splice, copy_move' -> ('splice', 'copy_move'); None keeps the generator's default (all kinds)."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise DiffimlError("`synthetic_kinds` names no edit; give e.g. splice,copy_move")
    return names


def stems_of(paths: Sequence[str | Path]) -> tuple[str, ...]:
    """Every stem listed in the files `paths`."""
    return tuple(stem for path in paths for stem in read_stems(path))
