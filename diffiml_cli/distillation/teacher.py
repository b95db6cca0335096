"""The frozen Stable Diffusion VAE that LightVAE is distilled from (paper Sec. 3.2).

`load_teacher` reads a diffusers `AutoencoderKL` from the Hub or a local folder and turns every way that can
fail into one DiffimlError line; `teacher_latent` gives the target latent z_T of a mask: the scaled posterior
mean of the mask repeated to RGB.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from diffiml_cli.errors import DiffimlError

SD_SCALE_FACTOR = 0.18215  # Stable Diffusion's latent scale; AutoencoderKL's config default
_TEACHER_HINT = "pass `teacher=none` to train without a teacher, or `teacher=/path/to/a/local/vae`"


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def _caused_by(error: BaseException, names: tuple[str, ...]) -> bool:
    """Whether `error` or an exception it was raised from has one of these class names."""
    seen = 0
    while error is not None and seen < 10:
        if any(cls.__name__ in names for cls in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' and huggingface_hub's advice (accelerate, symlinks) while loading."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def load_teacher(source: str, subfolder: str | None = None) -> nn.Module:
    """The frozen SD VAE teacher: a diffusers `AutoencoderKL` from a Hub id `org/name[@rev]` or a local folder.

    Returned in eval() with gradients off. Raises a one-line DiffimlError when it cannot be loaded
    (offline without a cached copy, no such repository, not an AutoencoderKL folder).
    """
    from huggingface_hub import constants as hub_constants

    try:
        from diffusers import AutoencoderKL
    except ImportError as error:  # diffusers is a dependency; a broken install should still read clearly
        raise DiffimlError(f"teacher {source} cannot be loaded (diffusers is not importable: {error})") from None

    local = _is_local(source)
    repo, _, revision = (source, "", "") if local else source.partition("@")
    if local:
        folder = Path(source).expanduser() / (subfolder or "")
        if not (folder / "config.json").is_file():
            raise DiffimlError(f"teacher {source} cannot be loaded (no diffusers config.json in {folder}): {_TEACHER_HINT}")
        repo = str(Path(source).expanduser())
    try:
        with _quiet_diffusers():
            teacher = AutoencoderKL.from_pretrained(repo, subfolder=subfolder, revision=revision or None,
                                                    low_cpu_mem_usage=False)
    except Exception as error:  # diffusers and huggingface_hub raise OSError, ValueError, HTTP errors, ...
        if local:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        elif _caused_by(error, ("RepositoryNotFoundError", "GatedRepoError")):
            reason = "no such Hub repository, or it is private or gated: log in with `hf auth login`"
        elif _caused_by(error, ("RevisionNotFoundError",)):
            reason = f"revision {revision!r} does not exist on the Hub"
        elif hub_constants.HF_HUB_OFFLINE or _caused_by(error, ("LocalEntryNotFoundError",)):
            reason = "not in the local Hub cache and the Hub is unreachable"
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{type(error).__name__}: {first_line}"[:300]
        where = f"{source} (subfolder {subfolder})" if subfolder else source
        raise DiffimlError(f"teacher {where} cannot be loaded ({reason}): {_TEACHER_HINT}") from None
    if not hasattr(teacher, "encode") or int(teacher.config.latent_channels) != 4:
        raise DiffimlError(f"teacher {source} is not a 4-channel-latent AutoencoderKL: {_TEACHER_HINT}")
    return teacher.eval().requires_grad_(False)


def teacher_scale_factor(teacher: nn.Module) -> float:
    """The teacher's own latent scale (0.18215 for the SD 1.x/2.x VAEs)."""
    return float(getattr(teacher.config, "scaling_factor", None) or SD_SCALE_FACTOR)


def teacher_latent(teacher: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """z_T: y (B, 1, H, W) in {-1, 1} -> the teacher's scaled posterior mean (B, 4, H/8, W/8).

    The mask is repeated to three channels, as an RGB image in [-1, 1] (paper Sec. 3.2).
    """
    with torch.inference_mode():
        z_t = teacher.encode(y.repeat(1, 3, 1, 1)).latent_dist.mean * teacher_scale_factor(teacher)
    return z_t.clone()  # a normal tensor: inference tensors cannot be saved for the student's backward
