"""The `--checkpoint` and usage-error kinds of the corpus (see tests/corpus.py), with their recipes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

SENTINEL = "pwned.txt"  # what a malicious pickle would create beside itself


class _Malicious:
    """Unpickling this runs a shell command: exactly what --allow-pickle's weights_only=True must refuse."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.sentinel}'",)


def _header(tiny: Path) -> dict:
    from safetensors import safe_open

    with safe_open(tiny / "model.safetensors", framework="pt") as handle:
        return json.loads(handle.metadata()["diffiml"])


def _weights(tiny: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(tiny / "model.safetensors")


def _safetensors(folder: Path, tiny: Path, metadata: Callable[[dict], str] | None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(_weights(tiny), folder / "model.safetensors",
              metadata=None if metadata is None else {"diffiml": metadata(_header(tiny))})
    return folder


def _other_architecture(header: dict) -> str:
    header["config"]["denoiser"]["block_out_channels"] = [16, 48]
    return json.dumps(header)


def _pickle(folder: Path, tiny: Path, payload: str) -> Path:
    folder.mkdir()
    shutil.copy(tiny / "config.json", folder / "config.json")
    target = folder / "model.pth"
    if payload == "weights":
        torch.save(_weights(tiny), target)
    elif payload == "torch":
        torch.save({"weight": _Malicious(folder / SENTINEL)}, target)
    else:
        target.write_bytes(pickle.dumps(_Malicious(folder / SENTINEL), protocol=2))
    return target


def _truncated(folder: Path, tiny: Path) -> Path:
    folder.mkdir()
    data = (tiny / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder / "model.safetensors"


def _mask_vae(folder: Path, tiny: Path) -> Path:
    from diffiml_cli.checkpoint import save_checkpoint
    from diffiml_cli.models.build import load_mask_vae

    vae = load_mask_vae(tiny)
    return save_checkpoint(folder, vae, vae.config)


@dataclass(frozen=True)
class CheckpointKind:
    """A --checkpoint for `diffiml localize` on a good image: how to make it, and what must happen."""

    what: str
    make: Callable[[Path, Path], Path | str]  # (folder to create, tiny checkpoint) -> the --checkpoint value
    message: str | None  # the one error line ("…" = any text; `<ckpt>` the --checkpoint value); None = works
    args: tuple[str, ...] = ()

    def expected(self) -> str:
        options = f" with `{' '.join(self.args)}`" if self.args else ""
        return (f"exit 1{options}, `{self.message}`" if self.message else f"exit 0{options}, outputs written") + (
            "; the payload never runs" if "malicious" in self.what else "")


CHECKPOINT_KINDS: dict[str, CheckpointKind] = {
    "ckpt-truncated-safetensors": CheckpointKind("model.safetensors cut in half", _truncated,
                                                 "error: <ckpt>: not a readable safetensors file (…)"),
    "ckpt-config-mismatch": CheckpointKind("metadata config of another architecture than the weights",
                                           lambda f, t: _safetensors(f, t, _other_architecture),
                                           "error: <ckpt>: config does not match the weights: …wrong shape (e.g. …)"),
    "ckpt-metadata-not-json": CheckpointKind("diffiml metadata that is not JSON",
                                             lambda f, t: _safetensors(f, t, lambda header: "{not json"),
                                             "error: <ckpt>/model.safetensors: the diffiml metadata is not valid JSON (…)"),
    "ckpt-not-diffiml": CheckpointKind("safetensors without diffiml config", lambda f, t: _safetensors(f, t, None),
                                       "error: <ckpt>/model.safetensors: no diffiml config in its metadata or beside it in config.json"),
    "ckpt-empty-folder": CheckpointKind("folder without model.safetensors", lambda f, t: f.mkdir() or f,
                                        "error: <ckpt>: no model.safetensors in this checkpoint directory"),
    "ckpt-mask-vae": CheckpointKind("a mask_vae checkpoint given as localizer", _mask_vae,
                                    "error: <ckpt>: this is a mask_vae checkpoint, not a localizer"),
    "ckpt-pickle-refused": CheckpointKind("state-dict .pth without --allow-pickle", lambda f, t: _pickle(f, t, "weights"),
                                          "error: <ckpt>: pickle checkpoints can run code when loaded; convert it to "
                                          "safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"),
    "ckpt-pickle-allowed": CheckpointKind("state-dict .pth + config.json", lambda f, t: _pickle(f, t, "weights"), None,
                                          ("--allow-pickle",)),
    "ckpt-pickle-malicious": CheckpointKind("malicious torch.save pickle (__reduce__ -> os.system)",
                                            lambda f, t: _pickle(f, t, "torch"),
                                            "error: <ckpt>: refused by torch.load(weights_only=True) (UnpicklingError)",
                                            ("--allow-pickle",)),
    "ckpt-pickle-malicious-raw": CheckpointKind("malicious plain pickle.dumps file",
                                                lambda f, t: _pickle(f, t, "raw"),
                                                "error: <ckpt>: refused by torch.load(weights_only=True) (…)",
                                                ("--allow-pickle",)),
    "ckpt-pickle-malicious-refused": CheckpointKind("malicious pickle without --allow-pickle",
                                                    lambda f, t: _pickle(f, t, "torch"),
                                                    "error: <ckpt>: pickle checkpoints can run code when loaded; …"),
    "ckpt-hub-offline": CheckpointKind("Hub id not in the cache, HF_HUB_OFFLINE=1", lambda f, t: "nobody/nothing",
                                       "error: checkpoint <ckpt> is not in the local Hub cache and the Hub cannot be "
                                       "reached (offline or HF_HUB_OFFLINE=1): …"),
    "ckpt-missing-path": CheckpointKind("a path that does not exist", lambda f, t: f / "missing",
                                        "error: checkpoint <ckpt> not found: give a directory, a .safetensors file, "
                                        "or a Hub id org/name"),
}



@dataclass(frozen=True)
class UsageKind:
    what: str
    args: tuple[str, ...]  # "<image>" stands for a good image
    message: str  # a line of the usage error ("…" = any text)

    def expected(self) -> str:
        return f"exit 2, usage and `{self.message}`"


USAGE_KINDS: dict[str, UsageKind] = {
    "usage-unknown-option": UsageKind("localize <image> --bogus", ("localize", "<image>", "--bogus"),
                                      "…No such option: --bogus…"),
    "usage-out-of-range": UsageKind("localize <image> --steps 0", ("localize", "<image>", "--steps", "0"),
                                    "…Invalid value for '--steps'…"),
    "usage-not-a-number": UsageKind("localize <image> --threshold high", ("localize", "<image>", "--threshold", "high"),
                                    "…Invalid value for '--threshold'…"),
    "usage-missing-argument": UsageKind("localize (no input)", ("localize",), "…Missing argument 'inputs'…"),
    "usage-missing-option": UsageKind("evaluate (no --data)", ("evaluate",), "…Missing option '--data'…"),
    "usage-unknown-command": UsageKind("diffiml localise", ("localise",), "…No such command 'localise'…"),
}

