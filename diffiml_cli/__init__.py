"""diffiml: image manipulation localization by latent diffusion (DiffIML, ICMR 2026).

    import diffiml_cli
    localizer = diffiml_cli.load_localizer()          # the shipped checkpoint; or a folder, or org/name@revision
    result = localizer.predict("photo.jpg")           # or a PIL image, or an (H, W, 3) uint8 array
    result.probability, result.mask, result.uncertainty, result.detection_score, result.verdict
"""

from diffiml_cli.version import __version__

__all__ = [
    "DiffimlError",
    "LocalizationPipeline",
    "LocalizationResult",
    "SamplingOptions",
    "__version__",
    "load_localizer",
]


def __getattr__(name: str):
    """The public names, imported on first use so that `import diffiml_cli` (and the CLI's start) stays light."""
    if name in ("LocalizationPipeline", "LocalizationResult", "load_localizer"):
        from diffiml_cli import pipeline

        return getattr(pipeline, name)
    if name == "SamplingOptions":
        from diffiml_cli.inference import SamplingOptions

        return SamplingOptions
    if name == "DiffimlError":
        from diffiml_cli.errors import DiffimlError

        return DiffimlError
    raise AttributeError(f"module 'diffiml_cli' has no attribute {name!r}")
