"""Self-describing checkpoints: `model.safetensors` (config in its metadata) plus `config.json`.

A checkpoint source is a local directory, a local `.safetensors` file, or a Hub id `org/name` or
`org/name@revision`, fetched with huggingface_hub and cached. Loading is strict and never unpickles
unless asked to (`allow_pickle`), and then only with `torch.load(weights_only=True)`.

We do not use huggingface_hub's `PyTorchModelHubMixin`: it rebuilds a model by calling `__init__` with
the saved JSON, whereas our composite is built from nested frozen dataclasses by `models/build.py`, and
its writes are not atomic. The Hub part is still huggingface_hub's own `hf_hub_download`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from diffiml_cli.config import MaskVAEConfig, ModelConfig, NoiseprintConfig, config_from_dict
from diffiml_cli.errors import DiffimlError
from diffiml_cli.files import atomic_write, atomic_write_bytes, remove_stale_temporaries

FORMAT_VERSION = "1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODEL_TYPES = {"localizer": ModelConfig, "mask_vae": MaskVAEConfig, "noiseprint": NoiseprintConfig}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def default_checkpoint_dir(name: str = "") -> Path:
    """A checkpoint shipped with diffiml: `weights/<name>` in the wheel, or at the top of a source checkout."""
    package_dir = Path(__file__).resolve().parent
    for weights_dir in (package_dir / "weights" / name, package_dir.parent / "weights" / name):
        if (weights_dir / WEIGHTS_NAME).is_file():
            return weights_dir
    raise DiffimlError(f"no shipped checkpoint at weights/{name}{'/' if name else ''}{WEIGHTS_NAME}; pass it explicitly")


def default_checkpoint() -> Path:
    """The default localizer shipped in `weights/`."""
    return default_checkpoint_dir("")


def save_checkpoint(directory: str | Path, model: nn.Module, config: Any, *, half: bool = False) -> Path:
    """Write `model`'s weights and `config` to `directory`, each file atomically; returns the directory.

    half=True stores floating-point tensors as fp16 (the shipped checkpoint does, to stay small).
    """
    state = {
        name: (tensor.half() if half and tensor.is_floating_point() else tensor).detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
    }
    return save_state(directory, state, config)


def save_state(directory: str | Path, state: dict[str, torch.Tensor], config: Any) -> Path:
    """Write a state dict as it is (dtypes kept) with `config` to `directory`, each file atomically."""
    model_type = next((name for name, kind in MODEL_TYPES.items() if isinstance(config, kind)), None)
    if model_type is None:
        raise DiffimlError(f"cannot save a checkpoint for config type {type(config).__name__}")
    directory = Path(directory)
    try:  # never write a checkpoint that loading would refuse (a NaN in the config would not even be JSON)
        config_from_dict(type(config), dataclasses.asdict(config))
    except DiffimlError as error:
        raise DiffimlError(f"{directory}: not saved, its config is invalid: {error}") from None
    header = {"format": "diffiml", "format_version": FORMAT_VERSION, "model_type": model_type}
    header["config"] = dataclasses.asdict(config)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory, (WEIGHTS_NAME, CONFIG_NAME))  # of a writer killed mid-write
    atomic_write(directory / WEIGHTS_NAME, lambda temporary: save_file(state, temporary,
                                                                       metadata={"diffiml": json.dumps(header)}))
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(header, indent=2) + "\n").encode())
    return directory


def resolve_checkpoint(source: str | Path) -> Path:
    """A local weights file for `source`: a directory, a weights file, or a Hub id `org/name[@rev]`."""
    path = Path(source).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise DiffimlError(f"{path}: no {WEIGHTS_NAME} in this checkpoint directory")
        return weights
    if path.is_file():
        return path
    if is_hub_id(str(source)):
        return hub_download(str(source), (WEIGHTS_NAME,), what="checkpoint", local_hint="pass a local directory as `checkpoint`")
    raise DiffimlError(f"checkpoint {source!s} not found: give a directory, a .safetensors file, or a Hub id org/name")


def is_hub_id(source: str) -> bool:
    """True for `org/name` or `org/name@revision` that is not a local path."""
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "/", "~"))


def hub_download(hub_id: str, filenames: tuple[str, ...], *, what: str, local_hint: str) -> Path:
    """Fetch the first of `filenames` that `org/name[@revision]` has into the huggingface_hub cache.

    what: how messages name the thing ("checkpoint", "MiT weights"); local_hint: what to pass instead offline.
    Every failure is one DiffimlError line that says what to do.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = hub_id.partition("@")
    offline = False
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None))
        except LocalEntryNotFoundError:  # not cached, and the Hub cannot be asked
            offline = True
        except EntryNotFoundError:  # the Hub says this repository lacks the file: try the next
            pass
        except RevisionNotFoundError:
            raise DiffimlError(f"{what} {hub_id}: revision {revision!r} does not exist on the Hub") from None
        except RepositoryNotFoundError:
            raise DiffimlError(f"{what} {hub_id}: no such Hub repository (or it is private: log in with `hf auth login`)") from None
        except (HfHubHTTPError, OSError) as error:
            raise DiffimlError(f"{what} {hub_id}: download failed ({type(error).__name__}: {error})") from None
    if offline:
        raise DiffimlError(
            f"{what} {hub_id} is not in the local Hub cache and the Hub cannot be reached (offline or "
            f"HF_HUB_OFFLINE=1): run `hf download {repo_id}` on a connected machine, or {local_hint}"
        )
    raise DiffimlError(f"{what} {hub_id}: the repository has no {' or '.join(filenames)}")


def model_card_summary(weights: Path) -> str:
    """The first sentence of the **Status** line of the model card (`README.md`) beside a checkpoint's weights
    file, or of its first paragraph; "" when there is none."""
    card = Path(weights).parent / "README.md"
    try:
        lines = card.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    paragraphs = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "|", "!"))]
    status = next((line for line in paragraphs if line.startswith("**Status")), paragraphs[0] if paragraphs else "")
    text = status.replace("**", "")
    return (text.split(". ")[0].rstrip(".") + ".") if text else ""


def load_checkpoint(source: str | Path, *, allow_pickle: bool = False) -> tuple[str, Any, dict[str, torch.Tensor]]:
    """Read a checkpoint: returns (model_type, config dataclass, state_dict on CPU)."""
    weights = resolve_checkpoint(source)
    if weights.suffix.lower() in _PICKLE_SUFFIXES:
        return _load_pickle_checkpoint(weights, allow_pickle=allow_pickle)
    try:
        state = load_file(weights, device="cpu")
        from safetensors import safe_open

        with safe_open(weights, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise DiffimlError(f"{weights}: not a readable safetensors file ({error})") from None
    if "diffiml" in metadata:
        try:
            header = json.loads(metadata["diffiml"])
        except json.JSONDecodeError as error:
            raise DiffimlError(f"{weights}: the diffiml metadata is not valid JSON ({error.msg})") from None
        except RecursionError:
            raise DiffimlError(f"{weights}: the diffiml metadata is not valid JSON (nested too deeply)") from None
    elif (weights.parent / CONFIG_NAME).is_file():
        header = _read_json(weights.parent / CONFIG_NAME)
    else:
        raise DiffimlError(f"{weights}: no diffiml config in its metadata or beside it in {CONFIG_NAME}")
    model_type, config = _parse_header(header, weights)
    check_finite(state, weights)
    return model_type, config, state


def check_finite(state: dict[str, torch.Tensor], where: str | Path) -> None:
    """A DiffimlError when a floating-point tensor of `state` holds a NaN or an infinity: a corrupted checkpoint
    (a flipped bit, a diverged run) gives NaN maps and scores, which would otherwise read as "nothing found".

    One cheap pass: 0 * x is 0 for every finite x and NaN for NaN and +-inf, so each tensor's sum of it tells.
    """
    floating = [(name, tensor) for name, tensor in state.items() if tensor.is_floating_point()]
    if not floating:
        return
    sums = torch.stack([tensor.mul(0).sum().float() for _, tensor in floating])
    if bool(torch.isfinite(sums).all()):
        return
    bad = [name for (name, _), total in zip(floating, sums.tolist()) if not math.isfinite(total)]
    raise DiffimlError(f"{where}: {len(bad)} weight tensor{'s hold' if len(bad) > 1 else ' holds'} NaN or infinite "
                       f"values (e.g. {bad[0]}): the checkpoint is corrupt; use another copy of it")


def _load_pickle_checkpoint(weights: Path, *, allow_pickle: bool) -> tuple[str, Any, dict[str, torch.Tensor]]:
    if not allow_pickle:
        raise DiffimlError(
            f"{weights}: pickle checkpoints can run code when loaded; convert it to safetensors, "
            "or pass `allow_pickle=True` to load it with torch.load(weights_only=True)"
        )
    config_path = weights.parent / CONFIG_NAME
    if not config_path.is_file():
        raise DiffimlError(f"{weights}: a pickle checkpoint needs its {CONFIG_NAME} beside it")
    state = read_weights_file(weights)
    model_type, config = _parse_header(_read_json(config_path), weights)
    check_finite(state, weights)
    return model_type, config, state


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a `.safetensors` file, or any other file via `torch.load(weights_only=True)`."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise DiffimlError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here; all mean "not a safe tensor file"
        raise DiffimlError(f"{path}: refused by torch.load(weights_only=True) ({type(error).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DiffimlError(f"{path}: expected a flat dict of tensors")
    return state


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiffimlError(f"{path}: not readable JSON ({error})") from None
    except RecursionError:
        raise DiffimlError(f"{path}: not readable JSON (nested too deeply)") from None


def _parse_header(header: Any, where: Path) -> tuple[str, Any]:
    if not isinstance(header, dict) or header.get("format") != "diffiml":
        raise DiffimlError(f"{where}: not a diffiml checkpoint (no 'format': 'diffiml' header)")
    if header.get("format_version") != FORMAT_VERSION:
        raise DiffimlError(f"{where}: checkpoint format {header.get('format_version')!r}, this diffiml reads {FORMAT_VERSION}")
    model_type = header.get("model_type")
    if model_type not in MODEL_TYPES:
        raise DiffimlError(f"{where}: unknown model_type {model_type!r}")
    try:
        config = config_from_dict(MODEL_TYPES[model_type], header.get("config", {}))
    except DiffimlError as error:
        raise DiffimlError(f"{where}: bad config: {error}") from None
    return model_type, config


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """`load_state_dict(strict=True)`, with mismatches reported as one line instead of a traceback."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise DiffimlError(f"{where}: config does not match the weights: {', '.join(problems)}")
    model.load_state_dict(state, strict=True)


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a resumable training state (weights, optimizer, scheduler, step, RNG states).

    The state holds only tensors, numbers, strings and containers of them, so `load_training_state`
    can read it back with `torch.load(weights_only=True)`: no arbitrary pickle is ever executed.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by `save_training_state`; a damaged file is a clear error."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DiffimlError(f"{path}: no training state to resume from") from None
    except Exception as error:  # torch raises several types for damaged or unsafe files
        raise DiffimlError(f"{path}: unreadable training state ({type(error).__name__}: {error})") from None
