"""The defaults every command shows, in a module that imports nothing heavy.

`diffiml --help` builds each command's options from these, so they live here rather than in the modules
that use them (inference, pipeline, image_io), which import torch, OpenCV and the models; those modules
import their defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffiml_cli.diffusion.samplers import sampler_name
from diffiml_cli.config_values import check_sampling_options

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# bf16 on CPUs that compute it natively, fp16 on CUDA: chosen on held-out synthetic validation with the defaults
# below (weights/README.md, "Speed"); fp32 elsewhere.
DEFAULT_PRECISION = "auto"

# 2x Pillow's own MAX_IMAGE_PIXELS, i.e. the size at which Pillow itself refuses to decode
# (about 13400 x 13400). Above it an image is treated as a decompression bomb and refused before
# decoding; callers pass a larger `max_pixels` (the CLI's --max-pixels) to read bigger images.
DEFAULT_MAX_PIXELS = 178_956_970

DEFAULT_TILE_OVERLAP = 128  # px; about the receptive field's reach at the encoder's coarsest stage


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample: the sampler and its steps, ensemble size N, horizontal-flip TTA, and the noise seed.

    The defaults, 2 steps and N = 6, were chosen on held-out synthetic validation as the setting with the fewest
    denoiser calls within 0.01 pixel F1 of the paper's 8 steps and N = 5 and within 0.45 s per 512² image on two
    CPU threads (weights/README.md, "3. The defaults"); the paper's remain a flag away.

    sampler: a name of `diffusion/samplers.py` ("ddim", "ddim-trailing", "dpmsolver++", ...), kept in its canonical
    "ALGORITHM-SPACING" form; None samples with the checkpoint's own (`DiffusionConfig.sampler_name`: "ddim-leading"
    for every checkpoint so far), which `Predictor.resolve` names.
    """

    steps: int = 2
    ensemble: int = 6
    tta: bool = False
    seed: int = 0
    sampler: str | None = None

    def __post_init__(self) -> None:
        if self.sampler is not None:
            object.__setattr__(self, "sampler", sampler_name(self.sampler))  # "ddim" -> "ddim-leading"
        check_sampling_options(self)  # the types and ranges of steps, ensemble, tta and seed
