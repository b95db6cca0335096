"""Give a localizer checkpoint the detector of another one, without recalibrating: writes a new checkpoint.

The detector reads the condition and the probability maps, so it moves between checkpoints that share the
encoder and denoiser (for example before and after `distill-vae --refit-decoder`). Run `diffiml calibrate` on
the result: the calibration of the source is dropped, since the maps it was measured on are not the same.
    python docs/transplant_detector.py runs/old-weights runs/calibrated runs/old-with-detector
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from diffiml_cli.checkpoint import save_checkpoint
from diffiml_cli.models.build import load_model, with_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="the checkpoint that receives the detector")
    parser.add_argument("source", help="a checkpoint with a detector")
    parser.add_argument("out")
    args = parser.parse_args()
    source, source_config = load_model(args.source)
    target, target_config = load_model(args.target)
    if source_config.encoder != target_config.encoder or source_config.denoiser != target_config.denoiser:
        raise SystemExit("the two checkpoints must share the encoder and denoiser architecture")
    for name, tensor in source.encoder.state_dict().items():
        if not torch.equal(tensor, target.encoder.state_dict()[name]):
            raise SystemExit(f"the two checkpoints' condition encoders differ ({name}): the detector would not fit")
    target, config = with_detector(target, target_config, source_config.detector)
    target.detector.load_state_dict(source.detector.state_dict())
    save_checkpoint(args.out, target, replace(config, calibration=None), half=True)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
