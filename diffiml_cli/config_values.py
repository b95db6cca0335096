"""Types and ranges of config values, checked where a config is read from JSON (`config.config_from_dict`).

A checkpoint's config is a file anyone can edit, so every value is checked against its field's annotation (a float
must be finite, an int not a bool) and, where one is given here, its range: a threshold stored as "0.87", NaN or 1.7
must not load. Messages name the field by its dotted path: `calibration.threshold is "0.87" (a string); expected a
number in [0, 1]`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

from diffiml_cli.errors import DiffimlError

@dataclass(frozen=True)
class Range:
    """The numbers from `low` to `high`, each end included unless open; every number of a value must lie in it."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


_COUNT, _POSITIVE, _SHARE = Range(1), Range(0, open_low=True), Range(0, 1)
# (config class name, field) -> the range of every number in that field's value.
RANGES: dict[tuple[str, str], Range] = {
    **{("MaskVAEConfig", name): _COUNT for name in ("hidden_channels", "latent_channels", "decoder_channels")},
    ("MaskVAEConfig", "scale_factor"): _POSITIVE,
    **{("ConditionEncoderConfig", name): _COUNT for name in ("out_indices", "embed_channels", "out_channels")},
    ("ConditionEncoderConfig", "pixel_std"): _POSITIVE,
    ("ConditionEncoderConfig", "layer_norm_eps"): _POSITIVE,
    **{("DenoiserConfig", name): _COUNT for name in ("latent_channels", "condition_channels", "block_out_channels",
                                                     "layers_per_block", "attention_head_dim", "norm_num_groups")},
    ("DiffusionConfig", "num_train_timesteps"): _COUNT,
    ("DiffusionConfig", "beta_start"): Range(0, 1, open_low=True, open_high=True),
    ("DiffusionConfig", "beta_end"): Range(0, 1, open_low=True, open_high=True),
    ("DiffusionConfig", "clip_sample_range"): _POSITIVE,
    ("DetectorConfig", "hidden_channels"): _COUNT,
    ("DetectorConfig", "top_fractions"): Range(0, 1, open_low=True),
    ("CalibrationConfig", "threshold"): _SHARE,
    ("CalibrationConfig", "target_far"): Range(0, 1, open_high=True),  # `calibrate --target-far 0` is allowed
    ("CalibrationConfig", "far"): _SHARE,
    ("CalibrationConfig", "tpr"): _SHARE,
    ("CalibrationConfig", "n_authentic"): _COUNT,  # a threshold is chosen on authentic images: at least one
    ("CalibrationConfig", "n_tampered"): Range(0),
    ("CalibrationConfig", "rates"): _SHARE,
    ("ModelConfig", "image_size"): _COUNT,
    ("ModelConfig", "native_max_side"): _COUNT,
}
# The sampling settings a calibration records and `SamplingOptions` holds (`check_sampling_options`, below); a
# recorded setting not named here (from a newer diffiml) is kept unchecked.
SAMPLING_SETTINGS: dict[str, tuple[Any, Range | None]] = {
    "steps": (int, Range(1, 1000)), "ensemble": (int, _COUNT), "tta": (bool, None), "seed": (int, Range(0, 2**64 - 1)),
}


def check_value(name: str, value: Any, hint: Any, allowed: Range | None = None) -> None:
    """A DiffimlError unless `value` is of type `hint` (a field's annotation, JSON lists read as tuples) and its
    every number lies in `allowed`: "calibration.threshold is "0.87" (a string); expected a number in [0, 1]"."""
    if not (_conforms(value, hint) and all(number in allowed for number in _numbers(value) if allowed)):
        raise DiffimlError(f"{name} is {_shown_value(value)}; expected {_expected(hint, allowed)}")


def check_sampling(sampling: Any, name: str) -> None:
    """Each recorded sampling setting (name, value) of a calibration that SAMPLING_SETTINGS names, checked as a field."""
    for setting, value in sampling:
        if setting in SAMPLING_SETTINGS:
            check_value(f"{name}.{setting}", value, *SAMPLING_SETTINGS[setting])


def _conforms(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type; a float must be finite; an annotation not understood passes."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # numbers.Integral: numpy's integers too, for settings given in code
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and _finite(value)
    if hint is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(item, args[0]) for item in value)
        return len(value) == len(args) and all(_conforms(item, arg) for item, arg in zip(value, args))
    return True


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _numbers(value: Any) -> list:
    """Every number in a (nested) value, booleans and strings left out."""
    if isinstance(value, tuple):
        return [number for item in value for number in _numbers(item)]
    return [value] if isinstance(value, numbers.Real) and not isinstance(value, bool) else []


def _shown_value(value: Any) -> str:
    """A value as its JSON text (at most 40 characters, one line), naming its kind when that is not a number."""
    text = json.dumps(value, default=repr)
    text = text if len(text) <= 40 else text[:39] + "…"
    kinds = {str: "a string", bool: "a boolean", tuple: "a list", dict: "an object"}
    return f"{text} ({kinds[type(value)]})" if type(value) in kinds else text


def _expected(hint: Any, allowed: Range | None, plural: bool = False) -> str:
    """What an annotation asks for, in words: "a number in [0, 1]", "a list of integers >= 1", "null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    suffix = f" {allowed}" if allowed else ""
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(arg, allowed, plural) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return ("lists" if plural else "a list") + f" of {_expected(args[0], allowed, plural=True)}"
        return "[" + ", ".join(_expected(arg, allowed) for arg in args) + "]"
    singular = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    several = {type(None): "nulls", bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    if hint in singular:
        return (several if plural else singular)[hint] + (suffix if hint in (int, float) else "")
    return ("objects" if plural else "an object") if dataclasses.is_dataclass(hint) else "any value"


def check_sampling_options(sampling: Any) -> Any:
    """`sampling` (a SamplingOptions) when its steps, ensemble, TTA and seed have their types and ranges (the seed an
    integer in [0, 2**64 - 1], what torch's generator takes); else a DiffimlError naming the setting."""
    for setting, (hint, allowed) in SAMPLING_SETTINGS.items():
        if hasattr(sampling, setting):
            check_value(setting, getattr(sampling, setting), hint, allowed)
    return sampling
