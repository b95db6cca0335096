"""The LightVAE mask autoencoder's training: distillation from the SD VAE (`distill`), its mask targets and
reconstruction report (`targets`), the SD VAE teacher (`teacher`), the refit of a checkerboard-free decoder
against a trained localizer's frozen encoder (`decoder_refit`), and the settings of both (`settings`, light).

The names below are imported on first use, so that `settings` loads without torch.
"""

__all__ = ["DistillResult", "DistillSettings", "StepStats", "distill_vae", "reconstruction_l1"]


def __getattr__(name: str):
    if name in __all__:
        from diffiml_cli.distillation import distill

        return getattr(distill, name)
    raise AttributeError(f"module 'diffiml_cli.distillation' has no attribute {name!r}")
