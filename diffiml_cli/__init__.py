"""diffiml: image manipulation localization by latent diffusion (DiffIML, ICMR 2026)."""

__version__ = "0.1.0"
