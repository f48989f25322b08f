"""The registry of training methods, built from the method classes themselves, and what the run
configuration asks of the data and optimizer modules (native image sizes, normalisation, the
optimizers, RandAugment specs), so that ``config`` imports none of them.

Every module under ``adautomix_fast/methods/`` is imported and every ``MixModel`` subclass that
sets ``name`` in its own body is a method: adding a method is adding its module, nothing else.
The registry answers what the rest of the engine asks about methods: the ``--method`` values
(``METHODS``, in listing order), each method's options (``method_options``: the config fields
and flags they become), its published defaults for a data set and architecture
(``method_defaults``), the checks and the description of a run, and ``build_model``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Optional

from . import methods as _methods_package
from .data.randaugment import parse_randaugment
from .data.transforms import FINEGRAINED, NATIVE_SIZE, NORMALIZATION
from .errors import UsageError
from .methods.base import DataFacts, MixModel
from .methods.options import FAMILIES, Option, check_defaults
from .models.library import BackboneChoice
from .step.optim import OPTIMIZERS

# The transformer/ConvNeXt recipes of the small-image data sets have their own published method
# settings; the fine-grained sets and ImageNet-like data theirs.
TRANSFORMER_ARCHS = ("swin_t", "convnext_t", "deit_s")
IMAGENET_LIKE = ("imagenet", "folder")


def _discover() -> dict[str, type[MixModel]]:
    found: dict[str, type[MixModel]] = {}
    for info in pkgutil.iter_modules(_methods_package.__path__):
        module = importlib.import_module(f"{_methods_package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, MixModel) and obj.__module__ == module.__name__
                    and vars(obj).get("name")):
                if obj.name in found:
                    raise TypeError(f"two methods are named {obj.name!r}: {found[obj.name]} and {obj}")
                found[obj.name] = obj
    return dict(sorted(found.items(), key=lambda item: (item[1].rank, item[0])))


def _collect_options(methods: dict[str, type[MixModel]]) -> dict[str, Option]:
    """Every method option by config key, with ``owner`` set to the method that declares it."""
    out: dict[str, Option] = {}
    for cls in methods.values():
        for option in vars(cls).get("options", ()):
            if option.name in out:
                raise TypeError(f"option {option.name!r} is declared by both {out[option.name].owner} and {cls.name}")
            out[option.name] = dataclasses.replace(option, owner=cls.name)
    return out


METHODS: dict[str, type[MixModel]] = _discover()
OPTIONS: dict[str, Option] = _collect_options(METHODS)
# The methods without a generator: the paper's baselines.
BASELINES: tuple[str, ...] = tuple(name for name, cls in METHODS.items() if not cls.has_teacher)


def method_class(name: str) -> type[MixModel]:
    """The model class of method ``name`` (a one-line UsageError naming the choices otherwise)."""
    if name not in METHODS:
        raise UsageError(f"unknown --method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_options(name: str) -> dict[str, Option]:
    """The options method ``name`` accepts (its own and those of the methods it is built on)."""
    return {o.name: OPTIONS[o.name] for o in method_class(name).all_options()}


def data_family(dataset: str, arch: str) -> str:
    """The family (``FAMILIES``) whose published method settings apply: cifar (small images:
    digits, CIFAR, Tiny-ImageNet), cifar-transformer, imagenet (ImageNet and image folders) or
    fine-grained."""
    if dataset in FINEGRAINED:
        return "fine-grained"
    if dataset in IMAGENET_LIKE:
        return "imagenet"
    return "cifar-transformer" if arch in TRANSFORMER_ARCHS else "cifar"


def method_defaults(method: str, dataset: str, arch: str) -> dict[str, Any]:
    """The published settings of ``method`` for the data set's family and the architecture,
    applied after the data set's engine defaults and before a preset."""
    return method_class(method).published_defaults(data_family(dataset, arch), arch)


def takers(key: str) -> list[str]:
    """The methods whose options include ``key`` (the declaring one and those built on it)."""
    return [name for name, cls in METHODS.items() if key in {o.name for o in cls.all_options()}]


def image_side(cfg, data_side: Optional[int] = None) -> int:
    """The run's training image side in pixels: ``--img-size``, else the side the data was read at
    (``data_side``: a folder of small images trains at theirs), else the data set's native size."""
    return cfg.img_size or data_side or NATIVE_SIZE[cfg.dataset]


def data_facts(cfg, data_side: Optional[int] = None) -> DataFacts:
    mean, std = NORMALIZATION[cfg.dataset]
    return DataFacts(image_side(cfg, data_side), tuple(mean), tuple(std))


def check_method(cfg, data_side: Optional[int] = None) -> None:
    """One-line UsageErrors for the run's method settings: every option's range (every method's,
    so that a config file cannot hold an impossible value for later) and the method's own
    combination checks."""
    for option in OPTIONS.values():
        option.check(getattr(cfg, option.name))
    method_class(cfg.method).check_config(cfg, image_side(cfg, data_side))


def check_foreign_options(method: str, settings: dict[str, Any]) -> None:
    """A one-line UsageError when ``settings`` (the flags the user typed) hold an option that
    ``method`` does not take: it would be ignored without a word."""
    own = method_options(method)
    for key in settings:
        option = OPTIONS.get(key)
        if option is not None and key not in own:
            names = takers(key)
            which = names[0] + " only" if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            raise UsageError(f"{option.flag} applies to {which}; --method {method} does not use it: drop the flag")


class _WithBackbone:
    """The run config as a method's ``from_config`` reads it, with ``arch`` the backbone and its
    chosen tap (``--tap``): the methods pass ``arch`` on to the classifier as it is."""

    def __init__(self, cfg, arch):
        self._cfg, self.arch = cfg, arch

    def __getattr__(self, name: str):
        return getattr(self._cfg, name)


def build_model(cfg, num_classes: int, cifar_stem: bool, data_side: Optional[int] = None) -> MixModel:
    """The model of the run's method (``cfg.method``), on the CPU, freshly initialised, every
    declared option handed to its constructor (``MixModel.settings_from_config``); ``data_side``:
    the side the training images were read at, where the data decided it."""
    if getattr(cfg, "tap", None) is not None:
        cfg = _WithBackbone(cfg, BackboneChoice(cfg.arch, tap=cfg.tap))
    return method_class(cfg.method).from_config(cfg, num_classes, cifar_stem, data=data_facts(cfg, data_side))


def registry_problems() -> list[str]:
    """Every incomplete declaration (the registry test asserts there is none)."""
    problems = []
    for name, cls in METHODS.items():
        if not cls.title:
            problems.append(f"method {name} has no title")
        if not cls.summary:
            problems.append(f"method {name} has no summary")
        problem = check_defaults(name, cls.defaults)
        if problem:
            problems.append(problem)
            continue
        for family in FAMILIES:
            for arch in ("r18", "r50", "swin_t"):
                values = cls.published_defaults(family, arch)
                if cls.uses_mix_alpha and not (isinstance(values.get("mix_alpha"), float) and values["mix_alpha"] > 0):
                    problems.append(f"method {name} has no Beta concentration (mix_alpha) for family {family}")
        for option in cls.all_options():
            if not option.help:
                problems.append(f"option {option.name} of {name} has no help")
            if option.type in (int, float) and option.low is None and option.high is None:
                problems.append(f"option {option.name} of {name} declares no range")
            if option.type is str and not option.choices:
                problems.append(f"option {option.name} of {name} declares no choices")
            if option.default is not None:
                try:
                    option.check(option.default)
                except UsageError as exc:
                    problems.append(f"option {option.name} of {name}: its default is outside its range ({exc})")
    return problems


def methods_table() -> str:
    """The methods table of docs/methods.md, generated from the declarations (a test keeps the
    page equal to it: ``make docs`` writes it)."""
    def alpha(cls, family: str, arch: str = "r50") -> str:
        value = cls.published_defaults(family, arch).get("mix_alpha")
        return "-" if value is None or not cls.uses_mix_alpha else f"{value:g}"

    lines = ["| `--method` | method | what it does | Beta a: CIFAR CNNs | CIFAR transformers | ImageNet "
             "(R18/R34) | fine-grained | options |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, cls in METHODS.items():
        imagenet, small = alpha(cls, "imagenet"), alpha(cls, "imagenet", "r18")
        options = ", ".join(f"`{o.flag}`" for o in vars(cls).get("options", ())) or "-"
        lines.append(f"| `{name}` | {cls.title} | {cls.summary} | {alpha(cls, 'cifar')} | "
                     f"{alpha(cls, 'cifar-transformer')} | {imagenet}{f' ({small})' if small != imagenet else ''} | "
                     f"{alpha(cls, 'fine-grained')} | {options} |")
    return "\n".join(lines)


TABLE_START, TABLE_END = "<!-- methods-table:start -->\n", "\n<!-- methods-table:end -->"


def with_methods_table(page: str) -> str:
    """``page`` (docs/methods.md) with the text between its table markers replaced by
    ``methods_table()``."""
    start, end = page.index(TABLE_START) + len(TABLE_START), page.index(TABLE_END)
    return page[:start] + methods_table() + page[end:]


__all__ = ["OPTIMIZERS", "methods_table", "with_methods_table", "parse_randaugment", "METHODS", "OPTIONS", "BASELINES",
           "FAMILIES", "method_class", "method_options", "data_family", "method_defaults", "image_side", "data_facts",
           "check_method", "check_foreign_options", "build_model", "registry_problems"]
