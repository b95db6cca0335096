"""Noiseprint++, TruFor's camera-trace front end, and LightNP, its distilled student.

Noiseprint++ (F. Guillaro, D. Cozzolino, A. Sud, N. Dufour, L. Verdoliva, "TruFor: Leveraging all-round clues for
trustworthy image forgery detection and localization", CVPR 2023; weights and code by GRIP-UNINA under their
non-profit licence: the LICENSE.txt that `convert --noiseprint` copies beside the weights) is a DnCNN: a 3x3
convolution 3 -> 64 with bias and a ReLU, 15 blocks of 3x3 convolution 64 -> 64 without bias, BatchNorm and ReLU,
and a 3x3 convolution 64 -> 1 with bias, as one nn.Sequential whose state_dict keys are "0.weight", "0.bias",
"2.weight", "3.weight", ... "47.bias". It maps an RGB image in [0, 1] to a noise-like map of the same size that
carries the camera model's and the editing history's trace, so that regions of another origin stand out. It costs
~1.1 MFLOP per pixel.

LightNP (`unshuffle` 2) runs the same kind of body on a pixel-unshuffled image (3 -> 12 channels at half
resolution) and pixel-shuffles its 4 output channels back to one full-resolution map: no information is lost
before the network, and each 3x3 convolution costs a quarter as much. It is trained by `distillation/
noiseprint_distill.py` to reproduce the teacher's map.

Both are frozen here (eval mode, no gradients): `train` never changes them. Large images run as overlapping tiles
at full resolution (`extract_map`), each tile widened by the network's receptive radius so that the stitched map
equals the whole-image map.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffiml_cli.config import NoiseprintConfig  # noqa: F401  (defined there so ModelConfig can hold one)
from diffiml_cli.errors import DiffimlError

_PICKLE_SUFFIXES = (".th", ".pt", ".pth")


def build_noiseprint(config: NoiseprintConfig) -> nn.Sequential:
    """The network as one nn.Sequential: (B, 3, H, W) float in [0, 1] -> (B, 1, H, W) float map (unbounded).

    H and W must be multiples of `config.unshuffle` (`extract_map` pads for you). With `unshuffle` 1 and the
    default config the state_dict keys are those of noiseprint++.th.
    """
    s, width = config.unshuffle, config.width
    layers: list[nn.Module] = [nn.PixelUnshuffle(s)] if s > 1 else []
    layers += [nn.Conv2d(3 * s * s, width, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(config.layers - 2):
        layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not config.batchnorm))
        if config.batchnorm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Conv2d(width, s * s, 3, padding=1))
    if s > 1:
        layers.append(nn.PixelShuffle(s))
    return nn.Sequential(*layers)


def freeze(network: nn.Module) -> nn.Module:
    """`network` in eval mode with every parameter's requires_grad False; returned for chaining."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.eval()


def read_teacher_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict of a Noiseprint++ file as TruFor ships it ({"network": state_dict, ...}, read with
    torch.load(weights_only=True)) or of a safetensors copy of that state_dict. Every failure is one line."""
    path = Path(path)
    if not path.is_file():
        raise DiffimlError(f"noiseprint weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise DiffimlError(f"noiseprint weights {path}: not a readable safetensors file "
                               f"({_first_line(error)})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, ...: torch raises many types
        raise DiffimlError(f"noiseprint weights {path}: not a readable torch file, truncated or of another kind "
                           f"({type(error).__name__})") from None
    state = data.get("network", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DiffimlError(f"noiseprint weights {path}: expected {{'network': state_dict}} of tensors")
    return state


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def noiseprint_from_state(config: NoiseprintConfig, state: dict[str, torch.Tensor], where: str | Path) -> nn.Sequential:
    """The frozen network of `config` with `state` loaded strictly (a mismatch is one DiffimlError line)."""
    from diffiml_cli.checkpoint import load_state_strict

    network = build_noiseprint(config)
    state = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    load_state_strict(network, state, where)
    return freeze(network)


def load_noiseprint(source: str | Path, *, allow_pickle: bool = False) -> tuple[nn.Sequential, NoiseprintConfig]:
    """(frozen network, config) from a diffiml noiseprint checkpoint (a folder or its .safetensors), a bare
    safetensors copy of the teacher's state_dict, or, with `allow_pickle`, noiseprint++.th itself."""
    path = Path(source).expanduser()
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        if not allow_pickle:
            raise DiffimlError(f"{path}: a torch file; convert it first (`diffiml convert {path} --noiseprint --out "
                               "DIR` and pass DIR) or pass --allow-pickle (read with torch.load(weights_only=True))")
        return noiseprint_from_state(NoiseprintConfig(), read_teacher_file(path), path), NoiseprintConfig()
    from diffiml_cli.checkpoint import load_checkpoint

    if path.suffix == ".safetensors" and path.is_file() and not _has_diffiml_header(path):
        return noiseprint_from_state(NoiseprintConfig(), read_teacher_file(path), path), NoiseprintConfig()
    model_type, config, state = load_checkpoint(path)
    if model_type != "noiseprint":
        raise DiffimlError(f"{source}: a {model_type} checkpoint, not a noiseprint one")
    return noiseprint_from_state(config, state, path), config


def _has_diffiml_header(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return "diffiml" in (handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise DiffimlError(f"noiseprint weights {path}: not a readable safetensors file "
                           f"({_first_line(error)})") from None


def convert_teacher(path: str | Path, out: str | Path) -> Path:
    """Write noiseprint++.th (read with torch.load(weights_only=True), strictly checked) as a diffiml noiseprint
    checkpoint folder: model.safetensors with the config in its metadata, and config.json; GRIP-UNINA's
    LICENSE.txt, when it lies beside the file, is copied with it (its terms ask to keep the notices). Returns `out`."""
    import shutil

    from diffiml_cli.checkpoint import save_checkpoint

    network = noiseprint_from_state(NoiseprintConfig(), read_teacher_file(path), path)
    out = save_checkpoint(out, network, NoiseprintConfig())
    licence = Path(path).parent / "LICENSE.txt"
    if licence.is_file():
        shutil.copyfile(licence, out / "LICENSE.txt")
    return out


def flops_per_pixel(config: NoiseprintConfig) -> float:
    """Multiply-adds x 2 per input pixel of the convolutions (torch's counter's convention)."""
    s, width = config.unshuffle, config.width
    macs = 9 * (3 * s * s * width + (config.layers - 2) * width * width + width * s * s) / (s * s)
    return 2.0 * macs


@torch.inference_mode()
def extract_map(network: nn.Module, config: NoiseprintConfig, image: np.ndarray, *, tile: int = 512,
                device: torch.device | str = "cpu") -> np.ndarray:
    """The noiseprint map of an (H, W, 3) uint8 RGB image at its own resolution: (H, W) float32.

    The image is never resampled. It runs as `tile` x `tile` cores, each read with `receptive_radius` pixels of
    context around it (clipped at the image's border, where the network zero-pads as on the whole image), so
    the stitched map equals the whole-image map up to float rounding; memory is bounded by one tile's
    activations (about 64 x (tile + 36)^2 floats for Noiseprint++) plus the (H, W) output.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DiffimlError(f"noiseprint: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    s = config.unshuffle
    tile = max(s, tile // s * s)
    margin = math.ceil(config.receptive_radius / s) * s
    height, width = image.shape[:2]
    padded_h, padded_w = -(-height // s) * s, -(-width // s) * s
    source = torch.from_numpy(image.copy()).permute(2, 0, 1)  # (3, H, W) uint8, converted tile by tile
    if (padded_h, padded_w) != (height, width):  # PixelUnshuffle needs multiples of s: replicate the last rows
        source = F.pad(source[None].float(), (0, padded_w - width, 0, padded_h - height), mode="replicate")[0].byte()
    out = np.empty((padded_h, padded_w), np.float32)
    network = network.to(device)
    for top in range(0, padded_h, tile):
        for left in range(0, padded_w, tile):
            bottom, right = min(top + tile, padded_h), min(left + tile, padded_w)
            y0, x0 = max(0, top - margin), max(0, left - margin)
            y1, x1 = min(padded_h, bottom + margin), min(padded_w, right + margin)
            window = source[:, y0:y1, x0:x1].to(device=device, dtype=torch.float32)[None] / 255.0
            result = network(window)[0, 0]
            out[top:bottom, left:right] = result[top - y0:bottom - y0, left - x0:right - x0].float().cpu().numpy()
    return out[:height, :width]


def stretch_to_gray(noise_map: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """(H, W) float map -> (H, W) uint8 gray: the `low`..`high` percentiles mapped to 0..255 and clipped, so a
    few extreme pixels do not flatten the rest. A constant map gives mid-gray."""
    lo, hi = np.percentile(noise_map, [low, high])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
        return np.full(noise_map.shape, 128, np.uint8)
    return np.round(np.clip((noise_map - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def student_config(layers: int = 11, width: int = 64, unshuffle: int = 2) -> NoiseprintConfig:
    """LightNP's config: by default 11 convolutions of width 64 on a 2x pixel-unshuffled image (~170 kFLOP/pixel,
    1/6.5 of Noiseprint++), seeing 23 pixels of context on each side."""
    return dataclasses.replace(NoiseprintConfig(), name="lightnp", layers=layers, width=width, unshuffle=unshuffle)
