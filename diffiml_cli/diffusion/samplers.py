"""The samplers diffiml runs, by name: a diffusers scheduler and the spacing of its timestep grid.

A sampler is named `ALGORITHM-SPACING`, e.g. "ddim-leading" (the reference's, and what every checkpoint older
than this setting samples with), "ddim-trailing" or "dpmsolver++-trailing"; an algorithm alone takes its default
spacing ("ddim" is "ddim-leading"). The spacing decides where a few-step grid starts: "leading" calls the
denoiser at t = 500, 0 for 2 steps out of 1000, so its first call gets pure noise labelled t = 500; "trailing"
and "linspace" start at the last training timestep, t = 999 (Lin et al. 2024, "Common Diffusion Noise Schedules
and Sample Steps are Flawed").

This is the one file to touch to add a sampler: `ALGORITHMS` names its diffusers class, its default spacing, and
the class's own config values that it needs; `diffusion.sampling.make_sampler_scheduler` builds it with
`from_config`, and the sampling loop passes it nothing else. No torch import here: configs and the CLI read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from diffiml_cli.errors import DiffimlError

SPACINGS = ("leading", "trailing", "linspace")  # diffusers' `timestep_spacing` values


@dataclass(frozen=True)
class Algorithm:
    """A diffusers scheduler class (by name), its default grid spacing, and the config values it is built with.

    overrides(clip_sample, clip_sample_range) -> that class's config fields; every scheduler predicts x0
    (`prediction_type="sample"`, set by the builder), and clips it to the configured latent range its own way.
    """

    scheduler: str
    default_spacing: str
    overrides: Callable[[bool, float], dict[str, Any]]


ALGORITHMS = {
    # Song et al. 2021, deterministic (eta = 0, `DDIMScheduler.step`'s default). DDIM clips x0 to
    # [-clip_sample_range, clip_sample_range] itself (the clip_sample fields come from `DiffusionConfig`).
    "ddim": Algorithm("DDIMScheduler", "leading", lambda clip, clip_range: {}),
    # Lu et al. 2022, DPM-Solver++(2M), data prediction. It clips x0 by dynamic thresholding at
    # `sample_max_value`: for a range of 1.0 (SD-scaled latents, every checkpoint so far) that is the same clip.
    "dpmsolver++": Algorithm("DPMSolverMultistepScheduler", "trailing",
                             lambda clip, clip_range: {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                       "thresholding": clip, "sample_max_value": clip_range}),
}


@dataclass(frozen=True)
class SamplerConfig:
    """A sampler: `algorithm` (a key of ALGORITHMS) on the grid of `timestep_spacing` (one of SPACINGS)."""

    algorithm: str = "ddim"
    timestep_spacing: str = "leading"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise DiffimlError(f"unknown sampler {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.timestep_spacing not in SPACINGS:
            raise DiffimlError(f"unknown timestep spacing {self.timestep_spacing!r}; "
                               f"choose one of {', '.join(SPACINGS)}")

    @property
    def name(self) -> str:
        """The canonical name, "ALGORITHM-SPACING"."""
        return f"{self.algorithm}-{self.timestep_spacing}"

    @classmethod
    def parse(cls, name: str) -> SamplerConfig:
        """"ddim", "ddim-trailing", "dpmsolver++", ... -> SamplerConfig; an unknown name is a DiffimlError."""
        text = str(name).strip().lower()
        algorithm, _, spacing = text.rpartition("-") if text.endswith(SPACINGS) else (text, "", "")
        if algorithm not in ALGORITHMS:
            raise DiffimlError(f"unknown sampler {name!r}; use ALGORITHM[-SPACING] with ALGORITHM one of "
                               f"{', '.join(ALGORITHMS)} and SPACING one of {', '.join(SPACINGS)}, e.g. {example()}")
        return cls(algorithm, spacing or ALGORITHMS[algorithm].default_spacing)


def sampler_name(name: str) -> str:
    """The canonical name of a sampler name or alias: "ddim" -> "ddim-leading"; unknown -> DiffimlError."""
    return SamplerConfig.parse(name).name


def example() -> str:
    """Sampler names as the help text lists them."""
    return ", ".join(SamplerConfig(algorithm, spacing).name for algorithm in ALGORITHMS for spacing in SPACINGS[:2])
