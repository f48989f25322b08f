"""Run configuration: one dataclass, named presets for the published settings.

Precedence when the CLI resolves a run: dataclass defaults < dataset defaults < preset <
flags given explicitly on the command line. The resolved config is printed and saved in the
run folder (``config.yaml``) before the first step, and its fingerprint is stored in every
checkpoint so a checkpoint of another configuration is refused on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import field, fields
from typing import Any, Optional

from . import registry
from .errors import UsageError
from .models.specs import ARCH_NAMES, arch_spec, check_image_size, is_library_arch
from .presets import DATASET_DEFAULTS, PRESETS
from .settings import SETTINGS

DATASETS = next(o.choices for o in SETTINGS if o.name == "dataset")


class RunSettings:
    """What every run configuration does; ``Config`` (below) adds one field per engine setting
    (``settings.SETTINGS``) and per method option (the registry's)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A Config from settings of any source (flags, YAML, a checkpoint), each value checked
        against its field's declared type first: one line naming the key and the expected type."""
        known = {f.name for f in fields(cls)}
        bad_keys = [k for k in d if not isinstance(k, str)]
        if bad_keys:
            raise UsageError(f"config key {bad_keys[0]!r} is not a name; "
                             "keys are config names such as lr or batch_size")
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**{k: checked_value(k, v) for k, v in d.items()})

    @classmethod
    def identity_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("identity"))

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in type(self).IDENTITY}

    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> None:
        """Raise a one-line UsageError for impossible values or combinations: the names first
        (architecture, data set, method), then every declared range and choice, then the
        combinations."""
        if is_library_arch(self.arch):
            arch_spec(self.arch)   # an unknown model name, or timm missing: one line
        else:
            _check_choice(self.arch, ARCH_NAMES, "unknown --arch {value!r}; choose one of {choices}, "
                                                 "timm/<timm model> or tv/<torchvision model>")
        if self.tap is not None and not is_library_arch(self.arch):
            raise UsageError(f"--tap chooses the generator's stage of a timm/ or tv/ architecture; --arch {self.arch} "
                             "has its published tap: drop --tap")
        _check_choice(self.dataset, DATASETS, "unknown --dataset {value!r}; choose one of {choices}")
        registry.method_class(self.method)   # one line naming the choices for an unknown method
        for option in SETTINGS:
            option.check(getattr(self, option.name))
        if self.min_lr > self.lr:
            raise UsageError(f"need 0 <= --min-lr <= --lr and --lr > 0 (got lr={self.lr}, min_lr={self.min_lr})")
        if self.gen_min_lr is not None and self.gen_lr is None:
            raise UsageError("--gen-min-lr needs --gen-lr (the generator's own parameter group)")
        if self.gen_lr is not None and self.gen_min_lr is not None and self.gen_min_lr > self.gen_lr:
            raise UsageError(f"need 0 <= --gen-min-lr <= --gen-lr and --gen-lr > 0 (got gen_lr={self.gen_lr}, "
                             f"gen_min_lr={self.gen_min_lr})")
        if self.run_name is not None:
            check_single_folder_name(self.run_name, "--run-name", "--output")
        registry.check_method(self)
        validate_recipe(self)


def check_single_folder_name(name: str, flag: str, parent_flag: str) -> None:
    """A folder name made inside the parent folder, never a path out of it: ``../x`` or ``/x``
    would write beside or far from ``--output`` without a word."""
    if (not name or name in (".", "..") or "/" in name or (os.sep != "/" and os.sep in name)
            or (os.altsep and os.altsep in name) or "\0" in name):
        raise UsageError(f"{flag} {name!r} must be a single folder name (no '/', not '.' or '..'); "
                         f"{parent_flag} DIR says where it is made")


def _check_choice(value: Any, choices: tuple[str, ...], message: str) -> None:
    if value not in choices:
        raise UsageError(message.format(value=value, choices=", ".join(choices)))


def _field(option) -> tuple:
    return (option.name, option.annotation,
            field(default=option.default, metadata={"group": option.group or METHOD, "identity": option.identity,
                                                    "option": option}))


METHOD = "method"
# The run configuration: every engine setting and every method's option, each a field of the
# declared type and default, marked as identity when it changes what is trained.
Config = dataclasses.make_dataclass(
    "Config",
    [_field(o) for o in SETTINGS] + [_field(o) for o in registry.OPTIONS.values()],
    bases=(RunSettings,),
    namespace={"__doc__": "One run's settings (module docstring): the engine's settings plus every method's options."},
)
Config.__module__ = __name__
# The fields that define what is trained (checkpoint.check_compatible compares them on resume).
Config.IDENTITY = Config.identity_fields()
# Every declaration by config key.
DECLARATIONS = {o.name: o for o in SETTINGS} | dict(registry.OPTIONS)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _setting(key: str) -> str:
    return f"--{key.replace('_', '-')} (config key {key})"


def checked_value(key: str, value: Any) -> Any:
    """``value`` as the type declared for ``key`` (an int is a valid float), or a UsageError:
    bools are not numbers, floats must be finite, whole-number fields take no fraction."""
    declared = _field_types()[key]
    optional = type(None) in typing.get_args(declared)
    base = next((a for a in typing.get_args(declared) if a is not type(None)), declared) if optional else declared
    if value is None:
        if optional:
            return None
        raise UsageError(f"{_setting(key)} needs a value (got none)")
    if base is bool:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "a whole number"
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            expected = "a finite number"
        else:
            expected = "a number"
    elif base is str:
        if isinstance(value, str):
            return value
        expected = "a string"
    else:   # no other field types exist; a new one must be added here
        raise TypeError(f"config field {key} has an unsupported type {declared}")
    if optional:
        expected += " or none"
    raise UsageError(f"{_setting(key)} must be {expected} (got {value!r})")


def resolve(explicit: dict[str, Any], preset: Optional[str] = None) -> Config:
    """Build a Config from explicit settings (flags the user typed) and an optional preset.

    Order: the declared defaults < the data set's engine settings (``presets.DATASET_DEFAULTS``)
    < the method's published settings for the data set's family and the architecture
    (``registry.method_defaults``) < the data set's own values of that method's options (Tiny's
    beta) < preset < explicit values. A preset's or a data set's value of an option the method
    does not take is left out (a preset describes one method's run, most AdAutoMix's).
    """
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    preset_values = dict(PRESETS[preset]) if preset else {}
    for key in ("dataset", "arch", "method"):   # read below, before the whole config is checked
        if key in explicit:
            checked_value(key, explicit[key])
    dataset = explicit.get("dataset", preset_values.get("dataset", Config.dataset))
    if dataset not in DATASETS:
        raise UsageError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    arch = explicit.get("arch", preset_values.get("arch", Config.arch))
    method = explicit.get("method", preset_values.get("method", Config.method))
    own = registry.method_options(method)

    def for_method(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k not in registry.OPTIONS or k in own}

    dataset_values = DATASET_DEFAULTS[dataset]
    values = {k: v for k, v in dataset_values.items() if k not in registry.OPTIONS}
    values.update(registry.method_defaults(method, dataset, arch))
    values.update({k: v for k, v in dataset_values.items() if k in own})
    values.update(for_method(preset_values))
    values.update(explicit)
    values["preset"] = preset
    cfg = Config.from_dict(values)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------- recipe validation
def validate_recipe(cfg: Config) -> None:
    """One-line UsageErrors for the architecture-recipe combinations (each field's own range is
    declared and checked by validate())."""
    spec = arch_spec(cfg.arch)
    if cfg.warmup_epochs > cfg.epochs:
        raise UsageError(f"--warmup-epochs must be between 0 and --epochs {cfg.epochs} (got {cfg.warmup_epochs})")
    if cfg.drop_path and spec.family == "resnet":
        raise UsageError(f"--drop-path applies to the Swin, ConvNeXt and DeiT architectures, not {cfg.arch}")
    if cfg.randaugment is not None:
        registry.parse_randaugment(cfg.randaugment)
    if cfg.randaugment is not None and cfg.augment is not None:
        raise UsageError(f"--randaugment and --augment {cfg.augment} are two augmentation policies: choose one "
                         "(--randaugment none or --augment none)")
    if cfg.cifar_stem and not spec.cifar_stem:
        raise UsageError(f"--arch {cfg.arch} has no CIFAR stem; use --no-cifar-stem and --img-size {spec.image_size}")
    check_image_size(cfg.arch, registry.image_side(cfg), cfg.cifar_stem)
