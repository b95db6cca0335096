"""The authors' DiffIML checkpoints (https://github.com/scu-zjz/DiffIML, an IMDL-BenCo model) in our names.

The official network is `DiffIML` in `IMDLBenCo/model_zoo/diffiml/diffiml.py`, with NVlabs' MiT in
`segformer.py` beside it. Its parts map onto the `paper` preset as follows (official -> ours):

    extractor.backbone.*            NVlabs MiT-b3        -> encoder.backbone.*  timm pvt_v2_b3, mlp_ratios 4
    extractor.linear_c{1..4}        Conv2d(C_i, 128, 1)  -> encoder.stage_projections.{0..3}
    extractor.linear_fuse.{0,1}     Conv2d(512, 128, 3, bias=False), BatchNorm2d -> encoder.fuse.{0,1}
    unet.unet.*                     diffusers UNet2DModel -> denoiser.unet.*  (the same names)
    unet.concat                     Conv2d(256, 128, 3, bias=False) -> denoiser.condition_fuse
    vae.encoder.{i} / vae.decoder.{i}  LightVAE nn.Sequential -> vae.encoder / vae.decoder, layer by layer

Two tensors change on the way, both exactly: the official head concatenates the stages as (c4, c3, c2, c1)
and ours as (c1, c2, c3, c4), so `linear_fuse.0.weight`'s input-channel blocks are reversed; and where an
official conv has no bias but ours has one (`unet.concat`, the LightVAE encoder's convs), ours gets zeros,
which computes the same function. Nothing else is reshaped, dropped or initialised: every official tensor
must be used and every one of ours filled, or a `DiffimlError` names the first tensor that has no place.

The official LightVAE *decoder* is laid out unlike ours: it normalises after its 1x1 projection and ends with
ConvTranspose2d(32, 32) -> BatchNorm -> ReLU -> Conv2d(32, 1, 3), where ours ends with ConvTranspose2d(32, 1).
The converted config builds it as it is (`MaskVAEConfig.decoder_layout = "official"`); its transposed
convolutions have no bias, so ours get zeros there too.

LayerNorm epsilon: NVlabs' MiT, like timm's pvt_v2, uses 1e-6 in the blocks and stage norms and PyTorch's
1e-5 in the patch embeddings and key/value reductions, so the converted config keeps timm's (None), not the
preset's 1e-5 for transformers' port. Files are read only with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import re
from collections.abc import Callable
from itertools import zip_longest
from pathlib import Path

import torch
from torch import nn

from diffiml_cli.checkpoint import load_state_strict
from diffiml_cli.config import ModelConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.build import build_localizer
from diffiml_cli.models.localizer import Localizer
from diffiml_cli.presets import get_preset

# Our module prefix -> the official one. Converting all four is what `convert_official` does.
PARTS: dict[str, str] = {
    "encoder": "extractor",
    "denoiser": "unet",
    "vae.encoder": "vae.encoder",
    "vae.decoder": "vae.decoder",
}

# The official LightVAE(latent_dim=4, base_channels=32, norm_layer_type="BatchNorm", ReLU), as its two
# nn.Sequential are written: the indices that hold tensors and their layer types (activations in between).
OFFICIAL_LIGHT_VAE: dict[str, tuple[tuple[int, type[nn.Module]], ...]] = {
    "encoder": ((0, nn.Conv2d), (1, nn.BatchNorm2d), (3, nn.Conv2d), (4, nn.BatchNorm2d),
                (6, nn.Conv2d), (7, nn.BatchNorm2d), (9, nn.Conv2d)),
    "decoder": ((0, nn.Conv2d), (1, nn.BatchNorm2d), (3, nn.ConvTranspose2d), (4, nn.BatchNorm2d),
                (6, nn.ConvTranspose2d), (7, nn.BatchNorm2d), (9, nn.ConvTranspose2d), (10, nn.BatchNorm2d),
                (12, nn.Conv2d)),
}
_LAYER_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)
# BatchNorm statistics that official training moves although the LightVAE is "frozen": DiffIML calls only
# `requires_grad_(False)` on it, and its encoder runs in train mode while the targets are encoded.
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
_WRAPPERS = ("model", "state_dict")  # IMDL-BenCo's misc.save_model and LightVAE's trainer write {"model": ...}


@dataclasses.dataclass(frozen=True)
class _Take:
    """Where one of our tensors comes from: an official name (below the part's official prefix)."""

    name: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    zero_if_absent: bool = False  # a bias the official layer was built without: zeros compute the same


class _Tensors:
    """The official tensors of one file argument, by name; remembers which were used."""

    def __init__(self, state: dict[str, torch.Tensor], argument: str) -> None:
        self.state, self.argument, self.used = state, argument, set()

    def take(self, name: str) -> torch.Tensor:
        self.used.add(name)
        return self.state[name]

    def unused(self, prefixes: tuple[str, ...]) -> list[str]:
        return [name for name in self.state if name not in self.used and name.startswith(prefixes)]


def official_config() -> ModelConfig:
    """The `paper` preset with timm's per-norm LayerNorm epsilons, which are NVlabs' MiT's (module doc), and the
    official LightVAE decoder layout."""
    paper = get_preset("paper")
    return dataclasses.replace(paper, encoder=dataclasses.replace(paper.encoder, layer_norm_eps=None),
                               vae=dataclasses.replace(paper.vae, decoder_layout="official"))


@functools.cache
def _reference_model() -> Localizer:
    """The `official_config()` localizer on the meta device: names, shapes and layer types, no storage."""
    with torch.device("meta"):  # skips the random init of 49M parameters
        return build_localizer(official_config())


def read_official_pth(path: str | Path, argument: str = "localizer_pth") -> dict[str, torch.Tensor]:
    """The flat state dict in an official `.pth`, read with `torch.load(weights_only=True)`.

    Unwraps `{"model": ...}` and `{"state_dict": ...}` (the optimizer state and epoch beside them are plain
    containers and are ignored) and a DDP `module.` prefix. IMDL-BenCo's `misc.save_model` also pickles its
    `argparse.Namespace` of training arguments, which weights_only is allowed to rebuild: it is a plain
    attribute bag that runs no code. Any other object makes torch refuse the file. `argument` names the
    file in messages. Raises DiffimlError.
    """
    path = Path(path)
    if not path.is_file():
        raise DiffimlError(f"`{argument}` {path}: no such file")
    allowed = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; on 2.4 a Namespace is refused
    try:
        with allowed([argparse.Namespace]) if allowed else contextlib.nullcontext():
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here; all mean "not a safe tensor file"
        raise DiffimlError(f"`{argument}` {path}: refused by torch.load(weights_only=True) ({type(error).__name__}): "
                           "it holds objects other than tensors and plain containers") from None
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}}
        if isinstance(data, dict) and not _is_state(data):
            data = next((data[key] for key in _WRAPPERS if isinstance(data.get(key), dict)), data)
    if not _is_state(data):
        raise DiffimlError(f"`{argument}` {path}: no state dict of tensors in the file or in its "
                           f"{' or '.join(repr(key) for key in _WRAPPERS)} entry")
    if all(name.startswith("module.") for name in data):  # saved from the DDP wrapper, not model.module
        data = {name.removeprefix("module."): tensor for name, tensor in data.items()}
    return data


def _is_state(data: object) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()))


def _mit_name(timm_name: str) -> str:
    """A timm `pvt_v2` features_only name -> NVlabs' MiT name (the inverse of timm's `pvt_v2.checkpoint_filter_fn`):
    patch_embed -> patch_embed1, stages_{i}.downsample -> patch_embed{i+1}, stages_{i}.blocks.{j} -> block{i+1}.{j},
    stages_{i}.norm -> norm{i+1}, mlp.dwconv -> mlp.dwconv.dwconv (NVlabs wraps the conv in a DWConv module)."""
    name = re.sub(r"^patch_embed\.", "patch_embed1.", timm_name)
    name = re.sub(r"^stages_(\d+)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", name)
    name = re.sub(r"^stages_(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}.", name)
    name = re.sub(r"^stages_(\d+)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", name)
    return name.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")


def _reverse_stage_blocks(weight: torch.Tensor) -> torch.Tensor:
    """linear_fuse.0.weight (out, 4E, k, k) reads (c4, c3, c2, c1); ours reads (c1, c2, c3, c4)."""
    return torch.cat(weight.chunk(4, dim=1)[::-1], dim=1)


def _encoder_plan(names: list[str]) -> dict[str, _Take]:
    """Our `encoder.*` names (without the prefix) -> their official `extractor.*` sources."""
    plan = {}
    for name in names:
        projection = re.fullmatch(r"stage_projections\.(\d+)\.(weight|bias)", name)
        if name.startswith("backbone."):
            plan[name] = _Take("backbone." + _mit_name(name.removeprefix("backbone.")))
        elif projection:
            plan[name] = _Take(f"linear_c{int(projection[1]) + 1}.{projection[2]}")
        elif name == "fuse.0.weight":
            plan[name] = _Take("linear_fuse.0.weight", _reverse_stage_blocks)
        elif name.startswith("fuse.1."):
            plan[name] = _Take("linear_fuse.1." + name.removeprefix("fuse.1."))
        else:
            raise DiffimlError(f"encoder.{name} has no counterpart in the official condition encoder")
    return plan


def _denoiser_plan(names: list[str]) -> dict[str, _Take]:
    """Our `denoiser.*` names -> official `unet.*`: the UNet2DModel keeps its names; the fuse conv is `concat`."""
    plan = {}
    for name in names:
        if name.startswith("unet."):
            plan[name] = _Take(name)
        elif name.startswith("condition_fuse."):
            parameter = name.removeprefix("condition_fuse.")
            plan[name] = _Take(f"concat.{parameter}", zero_if_absent=parameter == "bias")  # official: bias=False
        else:
            raise DiffimlError(f"denoiser.{name} has no counterpart in the official UNet")
    return plan


def _light_vae_plan(side: str, ours: nn.Module, source: _Tensors, prefix: str) -> dict[str, _Take]:
    """Pair our `vae.<side>` layers with OFFICIAL_LIGHT_VAE[side] in order; the types must agree one for one."""
    layers = [(name, module) for name, module in ours.named_modules() if isinstance(module, _LAYER_TYPES)]
    plan = {}
    for (index, kind), (name, module) in zip_longest(OFFICIAL_LIGHT_VAE[side], layers, fillvalue=(None, None)):
        if index is None:
            raise DiffimlError(f"vae.{side}.{name} ({type(module).__name__}) has no counterpart in the official "
                               f"LightVAE {side}")
        if module is None or type(module) is not kind:
            ours_there = f"a {type(module).__name__} ({side}.{name})" if module is not None else "nothing"
            raise DiffimlError(
                f"`{source.argument}`: {prefix}{side}.{index}.weight (the official {side}'s {kind.__name__} at "
                f"index {index}) has no place in our LightVAE {side}, which has {ours_there} there"

            )
        for parameter in module.state_dict():
            plan[f"{name}.{parameter}"] = _Take(f"{index}.{parameter}", zero_if_absent=parameter == "bias")
    return plan


def _apply(plan: dict[str, _Take], expected: dict[str, torch.Tensor], source: _Tensors,
           ours: str, official: str) -> dict[str, torch.Tensor]:
    """Fill our `ours.*` tensors from `source`'s `official.*` ones by `plan`; shapes must match exactly."""
    mapped = {}
    for name, take in plan.items():
        target, official_name = expected[f"{ours}.{name}"], f"{official}.{take.name}"
        if official_name not in source.state:
            if take.zero_if_absent:
                mapped[f"{ours}.{name}"] = torch.zeros(target.shape, dtype=target.dtype)
                continue
            raise DiffimlError(f"`{source.argument}` has no tensor {official_name} (for our {ours}.{name}); "
                               "is it an official DiffIML checkpoint with backbone segformer_b3 and ch 128?")
        tensor = source.take(official_name)
        tensor = take.transform(tensor) if take.transform else tensor
        if tensor.shape != target.shape:
            raise DiffimlError(f"`{source.argument}`: {official_name} has shape {tuple(tensor.shape)}, our "
                               f"{ours}.{name} needs {tuple(target.shape)}")
        mapped[f"{ours}.{name}"] = tensor
    return mapped


def _vae_source(localizer: _Tensors, vae_state: dict[str, torch.Tensor] | None) -> tuple[_Tensors, str]:
    """The tensors the LightVAE comes from and their prefix: the localizer's own `vae.*` (what it was trained
    and evaluated with) when it has them, which `vae_state` must then agree with; else `vae_state`."""
    has_vae = any(name.startswith("vae.") for name in localizer.state)
    if vae_state is None:
        if not has_vae:
            raise DiffimlError("`localizer_pth` holds no LightVAE tensors (vae.*): pass the official "
                               "light_vae_weights.pth as `vae_pth`")
        return localizer, "vae."
    vae = _Tensors(vae_state, "vae_pth")
    if not has_vae:
        return vae, ""
    for name, tensor in vae_state.items():
        inside = localizer.state.get(f"vae.{name}")
        if inside is None or inside.shape != tensor.shape:
            raise DiffimlError(f"`vae_pth`: {name} has no counterpart vae.{name} in `localizer_pth`")
        if not name.endswith(_RUNNING_STATS) and not torch.equal(inside, tensor):
            raise DiffimlError(f"`vae_pth` is not the LightVAE inside `localizer_pth`: {name} differs")
        vae.take(name)
    return localizer, "vae."


def map_official_state(localizer_state: dict[str, torch.Tensor], vae_state: dict[str, torch.Tensor] | None = None,
                       *, parts: tuple[str, ...] = tuple(PARTS)) -> dict[str, torch.Tensor]:
    """Official DiffIML tensors -> ours, for the `official_config()` localizer (see the module doc).

    localizer_state: a state dict of the official `DiffIML` module; vae_state: of the official `LightVAE`, needed
    when the localizer holds no `vae.*`. parts: which of PARTS to convert; every official tensor under their
    prefixes must be used, and every one of our tensors under them filled (with all parts: every tensor of both
    files). Returns our names -> tensors, on CPU. Raises DiffimlError naming the first tensor that does not fit.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise DiffimlError(f"unknown `parts` {unknown}; choose from {', '.join(PARTS)}")
    converts_vae = any(part.startswith("vae.") for part in parts)
    if vae_state is not None and not converts_vae:
        raise DiffimlError("a `vae_pth` state was given but `parts` converts no LightVAE part: it would go unused")
    model = _reference_model()
    expected = model.state_dict()
    localizer = _Tensors(localizer_state, "localizer_pth")
    vae, vae_prefix = _vae_source(localizer, vae_state) if converts_vae else (None, "")
    mapped, read_from = {}, {}  # read_from: source -> the official prefixes read from it
    for part in parts:
        names = [name.removeprefix(f"{part}.") for name in expected if name.startswith(f"{part}.")]
        if part in ("encoder", "denoiser"):
            plan = (_encoder_plan if part == "encoder" else _denoiser_plan)(names)
            source, official = localizer, PARTS[part]
        else:
            side = part.removeprefix("vae.")
            plan = _light_vae_plan(side, getattr(model.vae, side), vae, vae_prefix)
            source, official = vae, f"{vae_prefix}{side}"
        mapped.update(_apply(plan, expected, source, part, official))
        read_from.setdefault(source, []).append(f"{official}.")
    everything = set(parts) == set(PARTS)
    for source, prefixes in read_from.items():
        _check_all_used(source, ("",) if everything else tuple(prefixes))
    return mapped


def _check_all_used(source: _Tensors, prefixes: tuple[str, ...]) -> None:
    """Every official tensor under `prefixes` was used ("" : every tensor of the file)."""
    unused = source.unused(prefixes)
    if unused:
        first = source.state[unused[0]]
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise DiffimlError(f"`{source.argument}`: {unused[0]} {tuple(first.shape)}{more} has no place in the "
                           "paper preset; not an official DiffIML checkpoint with backbone segformer_b3?")


def convert_official(localizer_pth: str | Path, vae_pth: str | Path | None = None
                     ) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Read the official `diffiml_best.pth` (and `light_vae_weights.pth`, when the localizer holds no LightVAE)
    and return (our state dict, its ModelConfig), ready for `build_localizer` + `load_state_strict`."""
    localizer_state = read_official_pth(localizer_pth, "localizer_pth")
    vae_state = read_official_pth(vae_pth, "vae_pth") if vae_pth is not None else None
    return map_official_state(localizer_state, vae_state), official_config()


def load_official(localizer_pth: str | Path, vae_pth: str | Path | None = None) -> tuple[Localizer, ModelConfig]:
    """Our localizer (eval mode) holding the official weights; see `convert_official`."""
    state, config = convert_official(localizer_pth, vae_pth)
    localizer = build_localizer(config)
    load_state_strict(localizer, state, localizer_pth)
    return localizer.eval(), config
