"""MiT (SegFormer) ImageNet weights, as published in transformers' names, mapped onto timm's `pvt_v2`.

SegFormer's Mix Transformer (Xie et al. 2021, "SegFormer: Simple and Efficient Design for Semantic
Segmentation with Transformers", https://github.com/NVlabs/SegFormer) is the same network as PVTv2 with
overlapping patch embeddings: MiT-b3 is timm's `pvt_v2_b3` built with `mlp_ratios=(4, 4, 4, 4)`.
Its ImageNet-1k weights are on the Hub as `nvidia/mit-b0` ... `nvidia/mit-b5`, saved from transformers'
`SegformerForImageClassification` (names under `segformer.encoder.`, plus a classifier we ignore).
Transformers (4.x and 5.x alike) writes these names on `save_pretrained`; its 5.x in-memory names
(`stages.{i}.blocks.{j}...`) are not read here.

LayerNorm epsilon: transformers' port builds every LayerNorm with PyTorch's default 1e-5, whereas timm
(like NVlabs' original code) uses 1e-6 in the block and stage-final norms; `ConditionEncoderConfig.
layer_norm_eps` sets it. Only torch is needed here: transformers is not imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from diffiml_cli.checkpoint import hub_download, is_hub_id, read_weights_file
from diffiml_cli.errors import DiffimlError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the Hub's, in order of preference

# Per block: transformers (Hub) module -> timm module; each has a `.weight` and a `.bias`.
# `attention.self.key` and `.value` are fused into timm's `attn.kv` (key rows first), see below.
_BLOCK_NAMES = (
    ("layer_norm_1", "norm1"),
    ("attention.self.query", "attn.q"),
    ("attention.output.dense", "attn.proj"),
    ("layer_norm_2", "norm2"),
    ("mlp.dense1", "mlp.fc1"),
    ("mlp.dwconv.dwconv", "mlp.dwconv"),
    ("mlp.dense2", "mlp.fc2"),
)
# The key/value spatial-reduction conv and its norm; absent in stages with sr_ratio 1.
_REDUCTION_NAMES = (("attention.self.sr", "attn.sr"), ("attention.self.layer_norm", "attn.norm"))
_PARAMS = ("weight", "bias")


def is_segformer_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether `state` is named like a transformers SegFormer/MiT checkpoint."""
    return any(key.startswith(("encoder.block.", "segformer.encoder.")) for key in state)


def pvt_v2_depths(timm_keys) -> tuple[int, ...]:
    """Blocks per stage of a timm `pvt_v2` features_only backbone, read from its state-dict keys."""
    depths: dict[int, int] = {}
    for key in timm_keys:
        match = re.match(r"stages_(\d+)\.blocks\.(\d+)\.", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            depths[stage] = max(depths.get(stage, 0), block + 1)
    return tuple(depths[stage] for stage in sorted(depths))


def segformer_to_timm_pvt_v2(state: dict[str, torch.Tensor], depths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Rename a SegFormer (MiT) encoder state dict to timm's `pvt_v2` features_only names.

    `state` holds `encoder.*` or `segformer.encoder.*` tensors (decode-head and classifier tensors are
    ignored); `depths` gives the blocks of each stage to produce. Stage i maps as
        encoder.patch_embeddings.{i}.{proj,layer_norm}  -> patch_embed (i = 0) or stages_{i}.downsample .{proj,norm}
        encoder.block.{i}.{j}.<_BLOCK_NAMES>            -> stages_{i}.blocks.{j}.<timm name>
        encoder.block.{i}.{j}.attention.self.{key,value} -> stages_{i}.blocks.{j}.attn.kv  (concatenated, key first)
        encoder.layer_norm.{i}                           -> stages_{i}.norm
    Every tensor these stages need must be present, and every encoder tensor of these stages must be
    used (a deeper checkpoint is an error); stages past `len(depths)` are ignored. Raises DiffimlError.
    """
    encoder = {}
    for key, tensor in state.items():
        key = key.removeprefix("segformer.")
        if key.startswith("encoder."):
            encoder[key.removeprefix("encoder.")] = tensor
    if not encoder:
        raise DiffimlError("MiT weights: no SegFormer encoder tensors (encoder.* or segformer.encoder.*)")
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in encoder:
            raise DiffimlError(f"MiT weights: no tensor encoder.{name}; not SegFormer weights with depths {depths}?")
        used.add(name)
        return encoder[name]

    renamed = {}
    for i, depth in enumerate(depths):
        patch_embed = "patch_embed" if i == 0 else f"stages_{i}.downsample"
        for p in _PARAMS:
            renamed[f"{patch_embed}.proj.{p}"] = take(f"patch_embeddings.{i}.proj.{p}")
            renamed[f"{patch_embed}.norm.{p}"] = take(f"patch_embeddings.{i}.layer_norm.{p}")
            renamed[f"stages_{i}.norm.{p}"] = take(f"layer_norm.{i}.{p}")
        for j in range(depth):
            source, target = f"block.{i}.{j}.", f"stages_{i}.blocks.{j}."
            names = _BLOCK_NAMES + (_REDUCTION_NAMES if f"{source}attention.self.sr.weight" in encoder else ())
            for p in _PARAMS:
                for source_name, target_name in names:
                    renamed[f"{target}{target_name}.{p}"] = take(f"{source}{source_name}.{p}")
                key, value = take(f"{source}attention.self.key.{p}"), take(f"{source}attention.self.value.{p}")
                if key.shape != value.shape:
                    raise DiffimlError(f"MiT weights: encoder.{source}attention.self key/value {p} shapes differ")
                renamed[f"{target}attn.kv.{p}"] = torch.cat([key, value])  # timm splits kv rows as (k, v)
    leftover = [name for name in encoder if name not in used and _stage_of(name) < len(depths)]
    if leftover:
        unused = f"encoder.{leftover[0]} and {len(leftover) - 1} more"
        raise DiffimlError(f"MiT weights: {unused} are unused; are the depths not {depths}?")
    return renamed


def _stage_of(name: str) -> int:
    """The stage index in `block.{i}...`, `patch_embeddings.{i}...` or `layer_norm.{i}...`; -1 if none."""
    match = re.match(r"[a-z_]+\.(\d+)\.", name)
    return int(match[1]) if match else -1


def load_mit_weights(source: str) -> dict[str, torch.Tensor]:
    """The state dict of MiT weights at `source`: a Hub id `org/name[@revision]` (e.g. `nvidia/mit-b3`),
    a local copy of such a repository (a directory holding one of WEIGHT_FILES), or a weights file."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return read_weights_file(path / name)
        raise DiffimlError(f"{path}: no {' or '.join(WEIGHT_FILES)} in this directory")
    if path.is_file():
        return read_weights_file(path)
    if is_hub_id(source):
        hint = f"pass a local copy (`hf download {source.partition('@')[0]} --local-dir mit`) to `backbone_weights`"
        return read_weights_file(hub_download(source, WEIGHT_FILES, what="MiT weights", local_hint=hint))
    raise DiffimlError(f"MiT weights {source}: not a file, a directory, or a Hub id org/name[@revision]")
