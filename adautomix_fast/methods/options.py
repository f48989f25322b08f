"""How a setting is declared (no torch here): :class:`Option`, for the engine's own settings
(``settings.py``) and for every method's.

A method class declares

* ``options``: one :class:`Option` per setting of its own (type, default, range or choices, help,
  whether it changes what is trained). The run configuration gains one field per option, the
  training CLI one flag (``--puzzle-beta`` for ``puzzle_beta``), a YAML file one key, and the
  range check, the run summary and ``--resume``'s identity check all read the declaration.
* ``defaults``: its published settings for every data-set family in :data:`FAMILIES` (the
  method's Beta concentration, a learning-rate floor, any config key), applied after the data
  set's defaults and before a preset. A family left out is a failing test, not a silent fallback.

Options are inherited: AutoMix, built on AdAutoMix, has AdAutoMix's generator settings (and
leaves out, with ``excluded_options``, those its step does not use). The registry hands each
option's value to the method's constructor under the option's ``param`` name.

An engine setting is the same declaration with a ``group`` (the ``--help`` section) and, where
the flag differs from the key, ``flag_name`` and ``aliases``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import UsageError

# The data-set families whose published method settings differ: small images (digits, CIFAR,
# Tiny-ImageNet) with convolutional trunks, the same with the transformer/ConvNeXt recipes,
# ImageNet-like (ImageNet, image folders), and fine-grained fine-tuning (CUB, Aircraft, Cars).
FAMILIES = ("cifar", "cifar-transformer", "imagenet", "fine-grained")

_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """One setting of a method (module docstring).

    ``default`` None with ``optional`` means "the published value for the run" (the method
    resolves it, e.g. from the image size). ``low``/``high`` bound numbers (inclusive unless
    ``open_low``/``open_high``); ``choices`` lists the strings allowed; ``extra`` names values
    outside the range that are still valid (e.g. -1: "the graph-cut blocks"). ``identity``:
    the option changes what is trained, so a resumed run must keep it.
    """

    name: str
    type: type
    default: Any
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    extra: tuple[Any, ...] = ()
    optional: bool = False
    identity: bool = True
    metavar: Optional[str] = None
    range_help: str = ""           # why the range is what it is (with ``extra``: the range in words)
    owner: str = field(default="", compare=False)   # the --method value that declares it (set by the registry)
    # What ``None`` (an optional setting left unset) means, for --help: "the data set's".
    none_means: str = ""
    # The flag accepts the word 'none' for None (to switch off a preset's value).
    none_word: bool = False
    # The allowed values in words, used in messages instead of the bounds ("a positive norm").
    words: str = ""
    # The flag lists ``choices`` to argparse (False: the config's check names the problem, e.g.
    # "unknown --dataset 'mnist'").
    cli_choices: bool = True
    # A string setting without a fixed list of values (a path, a device, a model name); its check
    # is written where the setting is used.
    free_text: bool = False
    # Methods: the constructor keyword that receives the value ("" : the option is not a model
    # setting, e.g. which kernels run the generator; None: the option's name).
    param: Optional[str] = None
    # Engine settings: the --help section, a flag other than --<name>, and extra spellings.
    group: str = ""
    flag_name: Optional[str] = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.type not in _TYPES:
            raise TypeError(f"option {self.name}: type must be one of {_TYPES}, got {self.type}")

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        """Every spelling of the flag (short forms last, as argparse lists them)."""
        return (self.flag,) + self.aliases

    @property
    def keyword(self) -> Optional[str]:
        """The model constructor's keyword for this option, or None when it is not passed."""
        if self.param == "":
            return None
        return self.param or self.name

    @property
    def annotation(self):
        return Optional[self.type] if self.optional else self.type

    def range_text(self) -> str:
        """The allowed values in words, e.g. "in [0, 1]", "between 2 and 6", "one of a, b"."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            if self.type is int and not (self.open_low or self.open_high):
                return f"between {self.low:g} and {self.high:g}"
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            if self.type is int and not self.open_low:
                return f"at least {self.low:g}"
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return ""

    def check(self, value: Any) -> None:
        """A one-line UsageError when ``value`` (already of the declared type) is out of range."""
        if value is None or value in self.extra:
            return
        if self.choices and value not in self.choices:
            raise UsageError(f"{self.flag} must be {self.range_text()} (got {value!r})")
        if self.type in (int, float):
            low_bad = self.low is not None and (value <= self.low if self.open_low else value < self.low)
            high_bad = self.high is not None and (value >= self.high if self.open_high else value > self.high)
            if low_bad or high_bad or (self.type is float and not math.isfinite(value)):
                if self.words:
                    why = f": {self.range_help}" if self.range_help else ""
                    raise UsageError(f"{self.flag} must be {self.words} (got {value}){why}")
                if self.extra and self.range_help:   # the range with its extra values, in words
                    raise UsageError(f"{self.flag} must be {self.range_help} (got {value})")
                why = f": {self.range_help}" if self.range_help else ""
                raise UsageError(f"{self.flag} must be {self.range_text()} (got {value}){why}")

    def default_text(self) -> str:
        return self.value_text(self.default)

    def value_text(self, value: Any) -> str:
        """A value as --help writes it: on/off, 0.1, none (with what none means)."""
        if value is None:
            return self.none_means or ("none" if self.none_word else "the published value for the run")
        if self.type is bool:
            return "on" if value else "off"
        if value == "":
            return "empty"
        return f"{value:g}" if self.type is float else str(value)


def check_defaults(name: str, defaults: dict[str, dict[str, Any]]) -> Optional[str]:
    """Why a method's ``defaults`` table is incomplete, or None (the registry test asks)."""
    missing = [f for f in FAMILIES if f not in defaults]
    unknown = [f for f in defaults if f not in FAMILIES]
    if missing:
        return f"method {name} has no published defaults for the families {missing}"
    if unknown:
        return f"method {name} declares defaults for unknown families {unknown}; families are {FAMILIES}"
    return None


__all__ = ["FAMILIES", "Option", "check_defaults"]
