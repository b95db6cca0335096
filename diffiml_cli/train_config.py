"""`diffiml train --config FILE`: a training run's options from a file, as {option's parameter name: value}.

Two kinds of file: a TOML file whose keys are the options (`batch_size = 8` or `batch-size = 8`, optionally grouped
in tables such as `[optimisation]`), and the `train_config.json` a run writes into its folder (its resolved
settings), so that a run can be repeated or varied. Flags given beside --config override the file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from diffiml_cli.errors import DiffimlError

# train_config.json's "train" (TrainOptions) key -> the option that sets it, where the names differ.
_TRAIN_OPTION = {"out_dir": "out", "learning_rate": "lr", "ema_decay": "ema"}
# TrainOptions fields no option sets.
_NOT_OPTIONS = ("grad_clip", "log_every", "val_sampling", "train_part", "detector_sampling", "tune_sampling",
                "data_sources")
# The data sources and model recipe a run records -> their options.
_SOURCE_OPTION = {"data": "data", "synthetic_from": "synthetic_from", "other_camera_donors": "other_camera_donors",
                  "match_grain": "match_grain",
                  "val": "val", "authentic_share": "authentic_share", "hard_negative_share": "hard_negative_share",
                  "exclude_photos": "exclude_photos", "hard_negatives": "hard_negatives"}
_RECIPE_OPTION = {"preset": "preset", "kind": "model", "edge": "edge", "image_size": "image_size",
                  "resolution": "resolution", "vae": "vae", "init": "init", "copy_move_cue": "copy_move_cue",
                  "detector": "train_detector", "detector_grid": "detector_grid", "backbone_weights": "backbone_weights",
                  "detector_trace": "detector_trace", "noiseprint": "noiseprint", "trace_branch": "trace_branch"}


def read_train_config(path: str | Path) -> dict[str, Any]:
    """The options a TOML file or a run's train_config.json sets; a DiffimlError when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text()
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise DiffimlError(f"{path}: cannot read the training config ({error})") from None
    if not isinstance(document, dict):
        raise DiffimlError(f"{path}: a training config is a table of options")
    if "train" in document and isinstance(document["train"], dict) and "out_dir" in document["train"]:
        return _from_resolved(document["train"])
    return {key.replace("-", "_"): value for key, value in _flattened(document).items()}


def _flattened(document: dict[str, Any]) -> dict[str, Any]:
    """Tables ([data], [optimisation], ...) only group options: their keys join the top level."""
    options: dict[str, Any] = {}
    for key, value in document.items():
        options.update(_flattened(value) if isinstance(value, dict) else {key: value})
    return options


def _from_resolved(train: dict[str, Any]) -> dict[str, Any]:
    """train_config.json's "train" section -> options; the sources and recipe it records come along."""
    options = {_TRAIN_OPTION.get(key, key): value for key, value in train.items() if key not in _NOT_OPTIONS}
    detector = train.get("detector_sampling") or {}
    options.update(detector_steps=detector.get("steps"), detector_ensemble=detector.get("ensemble"))
    if train.get("train_part") == "sampler":
        tune = train.get("tune_sampling") or {}
        options.update(tune_sampler=tune.get("sampler"), tune_steps=tune.get("steps"), tune_ensemble=tune.get("ensemble"))
    sources = train.get("data_sources") or {}
    options.update({option: sources[key] for key, option in _SOURCE_OPTION.items() if key in sources})
    kinds = sources.get("synthetic_kinds")
    options["synthetic_kinds"] = ",".join(kinds) if isinstance(kinds, list) else None  # "all": the default
    options.update({option: value for key, option in _RECIPE_OPTION.items()
                    if (value := (sources.get("recipe") or {}).get(key)) is not None})
    return {key: value for key, value in options.items() if value is not None}
