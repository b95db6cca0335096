"""Build networks from configs: the one place that turns a ModelConfig into modules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from diffiml_cli.checkpoint import load_checkpoint, load_state_strict
from diffiml_cli.config import DetectorConfig, ModelConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.camera_trace import CameraTrace
from diffiml_cli.models.condition_encoder import ConditionEncoder
from diffiml_cli.models.denoiser import Denoiser
from diffiml_cli.models.detector import Detector
from diffiml_cli.models.localizer import Localizer
from diffiml_cli.models.mask_vae import MaskVAE
from diffiml_cli.models.segmentation_head import DiscriminativeLocalizer, SegmentationHead

AnyLocalizer = Localizer | DiscriminativeLocalizer


def build_localizer(config: ModelConfig) -> AnyLocalizer:
    """A randomly initialised localizer of `config.kind`; load weights with `load_model`."""
    detector = Detector(config.detector, config.encoder.out_channels) if config.detector is not None else None
    trace = CameraTrace(config.noiseprint) if config.noiseprint is not None else None
    stride = 2 ** len(config.vae.hidden_channels)  # the condition is at the mask latent's resolution
    if config.kind == "discriminative":
        return DiscriminativeLocalizer(
            encoder=ConditionEncoder(config.encoder, output_stride=stride),
            head=SegmentationHead(config.encoder.out_channels), detector=detector, trace=trace,
        )
    return Localizer(
        encoder=ConditionEncoder(config.encoder, output_stride=stride),
        denoiser=Denoiser(config.denoiser),
        vae=MaskVAE(config.vae),
        detector=detector,
        trace=trace,
    )


def load_model(source: str | Path, *, allow_pickle: bool = False) -> tuple[AnyLocalizer, ModelConfig]:
    """Build and strictly load a localizer checkpoint (see `checkpoint.resolve_checkpoint` for sources)."""
    model_type, config, state = load_checkpoint(source, allow_pickle=allow_pickle)
    if model_type != "localizer":
        raise DiffimlError(f"{source}: this is a {model_type} checkpoint, not a localizer")
    localizer = build_localizer(config)
    load_state_strict(localizer, state, source)
    return localizer.eval(), config


def with_copy_move_cue(localizer: AnyLocalizer, config: ModelConfig, enabled: bool) -> tuple[AnyLocalizer, ModelConfig]:
    """The same localizer with a fresh copy-move cue branch (`models/copy_move_cue.py`), or without one.

    Every other weight is kept; a new branch's output starts at zero, so the returned model predicts
    exactly what `localizer` did.
    """
    return _with_encoder_branch(localizer, config, "copy_move_cue", enabled)


def with_trace_branch(localizer: AnyLocalizer, config: ModelConfig, enabled: bool) -> tuple[AnyLocalizer, ModelConfig]:
    """The same localizer with a fresh camera-trace branch in its encoder (`camera_trace.TraceBranch`), or
    without one; the model needs its front end (`with_camera_trace`). A new branch's output starts at zero, so
    the returned model predicts exactly what `localizer` did."""
    if enabled and config.noiseprint is None:
        raise DiffimlError("a trace branch reads the camera-trace front end's maps: add one first (--noiseprint)")
    return _with_encoder_branch(localizer, config, "trace_branch", enabled)


def _with_encoder_branch(localizer: AnyLocalizer, config: ModelConfig, name: str, enabled: bool
                         ) -> tuple[AnyLocalizer, ModelConfig]:
    """`localizer` with its encoder's optional branch `name` fresh (enabled) or removed; other weights kept."""
    if getattr(config.encoder, name) == enabled:
        return localizer, config
    config = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, **{name: enabled}))
    extended = build_localizer(config)
    prefix = f"encoder.{name}."
    state = {key: value for key, value in localizer.state_dict().items() if not key.startswith(prefix)}
    fresh = {key: value for key, value in extended.state_dict().items() if key.startswith(prefix)}
    load_state_strict(extended, {**state, **fresh}, f"the encoder's {name}")
    return extended.train(localizer.training), config


def with_detector(localizer: AnyLocalizer, config: ModelConfig, detector: DetectorConfig | None
                  ) -> tuple[AnyLocalizer, ModelConfig]:
    """The same localizer with a fresh image-level detector of `detector`'s shape (or none); every other
    weight is kept, and a calibration made for another detector is dropped."""
    if config.detector == detector:
        return localizer, config
    config = dataclasses.replace(config, detector=detector, calibration=None)
    extended = build_localizer(config)
    state = {key: value for key, value in localizer.state_dict().items() if not key.startswith("detector.")}
    fresh = {key: value for key, value in extended.state_dict().items() if key.startswith("detector.")}
    load_state_strict(extended, {**state, **fresh}, "the detector")
    return extended.train(localizer.training), config


def with_camera_trace(localizer: AnyLocalizer, config: ModelConfig, source: str | Path | None, *,
                      allow_pickle: bool = False) -> tuple[AnyLocalizer, ModelConfig]:
    """The same localizer with the frozen camera-trace front end read from `source` (`models.noiseprint.
    load_noiseprint`: a `convert --noiseprint` folder, a LightNP student, or with `allow_pickle` noiseprint++.th),
    or without one (None). Every other weight is kept; the front end's weights join the checkpoint, so a model
    that uses them is self-contained. A detector that reads camera-trace channels is dropped with its calibration
    (it read another front end's maps); any other detector, and its calibration, is kept."""
    from diffiml_cli.models.noiseprint import load_noiseprint

    network, noiseprint = load_noiseprint(source, allow_pickle=allow_pickle) if source else (None, None)
    detector = config.detector
    if detector is not None and detector.trace_features:
        detector = None
    if noiseprint is None and config.encoder.trace_branch:
        raise DiffimlError("this model's encoder reads the camera-trace front end (trace_branch): it cannot go")
    config = dataclasses.replace(config, noiseprint=noiseprint, detector=detector,
                                 calibration=config.calibration if detector == config.detector else None)
    extended = build_localizer(config)
    state = {key: value for key, value in localizer.state_dict().items()
             if not key.startswith("trace.") and (detector is not None or not key.startswith("detector."))}
    if network is not None:
        state.update({f"trace.network.{key}": value for key, value in network.state_dict().items()})
    load_state_strict(extended, state, "the camera-trace front end")
    return extended.train(localizer.training), config


def load_mask_vae(source: str | Path, *, allow_pickle: bool = False) -> MaskVAE:
    """A MaskVAE from a `mask_vae` checkpoint (from `distill-vae`) or from a localizer's `vae.*` weights."""
    model_type, config, state = load_checkpoint(source, allow_pickle=allow_pickle)
    if model_type == "localizer":
        if config.kind != "diffusion":
            raise DiffimlError(f"{source}: a {config.kind} localizer has no mask VAE")
        config = config.vae
        state = {key.removeprefix("vae."): value for key, value in state.items() if key.startswith("vae.")}
    vae = MaskVAE(config)
    load_state_strict(vae, state, source)
    return vae.eval()


def default_vae() -> MaskVAE:
    """The shipped LightVAE (`weights/lightvae`), distilled by `diffiml distill-vae`."""
    from diffiml_cli.checkpoint import default_checkpoint_dir

    return load_mask_vae(default_checkpoint_dir("lightvae"))
