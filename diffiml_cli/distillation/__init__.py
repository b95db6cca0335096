"""The LightVAE mask autoencoder's training: distillation from the SD VAE (`distill`), its mask targets and
reconstruction report (`targets`), the SD VAE teacher (`teacher`), and the refit of a checkerboard-free decoder
against a trained localizer's frozen encoder (`decoder_refit`)."""

from diffiml_cli.distillation.distill import DistillResult, DistillSettings, StepStats, distill_vae, reconstruction_l1

__all__ = ["DistillResult", "DistillSettings", "StepStats", "distill_vae", "reconstruction_l1"]
