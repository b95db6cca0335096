"""The `--checkpoint` and usage-error kinds of the corpus (see tests/corpus.py), with their recipes."""

from __future__ import annotations

import json
import math
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


def _write(folder: Path, state: dict[str, torch.Tensor], header: dict) -> Path:
    """A checkpoint folder as `save_state` writes one, but of any header (json.dumps writes NaN as `NaN`)."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(state, folder / "model.safetensors", metadata={"diffiml": json.dumps(header)})
    (folder / "config.json").write_text(json.dumps(header, indent=2))
    return folder


def _poisoned(value: float) -> Callable[[Path, Path], Path]:
    """The tiny checkpoint with one element of one denoiser weight set to `value` (NaN, an infinity)."""
    def make(folder: Path, tiny: Path) -> Path:
        state = _weights(tiny)
        name = sorted(name for name in state if name.startswith("denoiser.") and state[name].is_floating_point())[0]
        state[name].view(-1)[0] = value
        return _write(folder, state, _header(tiny))

    return make


CALIBRATION = {"threshold": 0.5, "target_far": 0.05, "far": 0.05, "tpr": 0.5, "n_authentic": 20, "n_tampered": 20,
               "data": "corpus", "sampling": [["ensemble", 1], ["seed", 0], ["steps", 1], ["tta", False]],
               "precision": "fp32", "rates": [["fp32", 0.05, 0.5]], "gate": False}


def _calibrated(**changes: object) -> Callable[[Path, Path], Path]:
    """The tiny checkpoint with a (random) detector and a calibration whose fields `changes` overrides, as JSON
    values; "sampling.<name>" overrides one sampling setting."""
    def make(folder: Path, tiny: Path) -> Path:
        from diffiml_cli.config import DetectorConfig
        from diffiml_cli.models.detector import Detector

        header = _header(tiny)
        calibration = dict(CALIBRATION, sampling=[list(pair) for pair in CALIBRATION["sampling"]])
        for key, value in changes.items():
            if key.startswith("sampling_"):
                calibration["sampling"] = [[name, value if name == key[9:] else old] for name, old in calibration["sampling"]]
            else:
                calibration[key] = value
        header["config"].update(detector={"hidden_channels": 8, "top_fractions": [0.01, 0.1]}, calibration=calibration)
        torch.manual_seed(0)
        detector = Detector(DetectorConfig(hidden_channels=8), header["config"]["encoder"]["out_channels"])
        state = {**_weights(tiny), **{f"detector.{k}": v for k, v in detector.state_dict().items()}}
        return _write(folder, state, header)

    return make


def _bad_config(part: str, key: str, value: object) -> Callable[[Path, Path], Path]:
    """The tiny checkpoint whose config's `part` (a part's name, or "" for the top level) has `key` = `value`."""
    def make(folder: Path, tiny: Path) -> Path:
        header = _header(tiny)
        (header["config"][part] if part else header["config"])[key] = value
        return _write(folder, _weights(tiny), header)

    return make


def _mask_vae(folder: Path, tiny: Path) -> Path:
    from diffiml_cli.checkpoint import save_checkpoint
    from diffiml_cli.models.build import load_mask_vae

    vae = load_mask_vae(tiny)
    return save_checkpoint(folder, vae, vae.config)


_CORRUPT = "1 weight tensor holds NaN or infinite values (e.g. denoiser.…): the checkpoint is corrupt; use another copy of it"


def _bad(reason: str) -> str:
    """The one line of a checkpoint whose config has a value of the wrong type or out of its range."""
    return f"error: <ckpt>/model.safetensors: bad config: {reason}"


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
    # A corrupted checkpoint would otherwise give NaN maps and scores: every verdict "authentic", empty masks.
    "ckpt-nan-weight": CheckpointKind("one weight element NaN", _poisoned(math.nan),
                                      f"error: <ckpt>/model.safetensors: {_CORRUPT}"),
    "ckpt-inf-weight": CheckpointKind("one weight element +Infinity", _poisoned(math.inf),
                                      f"error: <ckpt>/model.safetensors: {_CORRUPT}"),
    "ckpt-minus-inf-weight": CheckpointKind("one weight element -Infinity", _poisoned(-math.inf),
                                            f"error: <ckpt>/model.safetensors: {_CORRUPT}"),
    "ckpt-calibrated": CheckpointKind("a detector and a sound calibration", _calibrated(), None),
    "ckpt-calibrated-no-tampered": CheckpointKind("calibrated on authentic images only (tpr null)",
                                                  _calibrated(tpr=None, n_tampered=0, rates=[["fp32", 0.05, None]]),
                                                  None),
    "ckpt-nan-threshold": CheckpointKind("calibration threshold NaN", _calibrated(threshold=math.nan),
                                         _bad("calibration.threshold is NaN; expected a number in [0, 1]")),
    "ckpt-string-threshold": CheckpointKind('calibration threshold "0.87" (a string)', _calibrated(threshold="0.87"),
                                            _bad('calibration.threshold is "0.87" (a string); expected a number in '
                                                 '[0, 1]')),
    "ckpt-threshold-above-one": CheckpointKind("calibration threshold 1.7", _calibrated(threshold=1.7),
                                               _bad("calibration.threshold is 1.7; expected a number in [0, 1]")),
    "ckpt-bool-threshold": CheckpointKind("calibration threshold true", _calibrated(threshold=True),
                                          _bad("calibration.threshold is true (a boolean); expected a number in "
                                               "[0, 1]")),
    "ckpt-null-threshold": CheckpointKind("calibration threshold null", _calibrated(threshold=None),
                                          _bad("calibration.threshold is null; expected a number in [0, 1]")),
    "ckpt-infinite-far": CheckpointKind("calibration far Infinity", _calibrated(far=math.inf),
                                        _bad("calibration.far is Infinity; expected a number in [0, 1]")),
    "ckpt-target-far-one": CheckpointKind("calibration target_far 1", _calibrated(target_far=1),
                                          _bad("calibration.target_far is 1; expected a number in [0, 1)")),
    "ckpt-negative-steps": CheckpointKind("calibrated at steps -2", _calibrated(sampling_steps=-2),
                                          _bad("calibration.sampling.steps is -2; expected an integer in [1, 1000]")),
    "ckpt-huge-seed": CheckpointKind("calibrated at seed 2**70", _calibrated(sampling_seed=2**70),
                                     _bad(f"calibration.sampling.seed is {2**70}; expected an integer in "
                                          f"[0, {2**64 - 1}]")),
    "ckpt-string-gate": CheckpointKind('calibration gate "yes"', _calibrated(gate="yes"),
                                       _bad('calibration.gate is "yes" (a string); expected true or false')),
    "ckpt-string-image-size": CheckpointKind('image_size "64" (a string)', _bad_config("", "image_size", "64"),
                                             _bad('image_size is "64" (a string); expected an integer >= 1')),
    "ckpt-zero-channels": CheckpointKind("denoiser layers_per_block 0", _bad_config("denoiser", "layers_per_block", 0),
                                         _bad("denoiser.layers_per_block is 0; expected an integer >= 1")),
    "ckpt-null-vae": CheckpointKind("vae null", _bad_config("", "vae", None), _bad("vae is null; expected an object")),
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
    "usage-seed-beyond-64-bits": UsageKind("localize <image> --seed 2**64", ("localize", "<image>", "--seed", str(2**64)),
                                           "…Invalid value for '--seed'…"),
    "usage-negative-seed": UsageKind("localize <image> --seed -1", ("localize", "<image>", "--seed", "-1"),
                                     "…Invalid value for '--seed'…"),
    "usage-missing-argument": UsageKind("localize (no input)", ("localize",), "…Missing argument 'inputs'…"),
    "usage-missing-option": UsageKind("evaluate (no --data)", ("evaluate",), "…Missing option '--data'…"),
    "usage-unknown-command": UsageKind("diffiml localise", ("localise",), "…No such command 'localise'…"),
}

