"""adautomix_fast: a fast, faithful training engine for AdAutoMix (ICLR 2024).

Public API:
    AdAutoMix, MixPlan          the student, EMA teacher and generator; sample_plan / step_losses
    MaskGenerator               the mask generator G (plain PyTorch reference math)
    Config, PRESETS, resolve    run configuration and the published presets
    ReferenceStep               one eager step: losses, backward, SGD, EMA
    evaluate                    top-1 / top-5 of the four heads

Command line: ``python -m adautomix_fast.train --help``.
"""

# cputhreads first, on purpose (its start-up sample of the CPUs' load comes before the package's other
# imports); the isort split below keeps import sorting from moving it.
from .runtime import cputhreads  # noqa: F401  (first: its start-up sample of the CPUs' load)

# isort: split
from .config import PRESETS, Config, resolve
from .errors import DataError, UsageError
from .evaluate import evaluate
from .methods.adautomix import AdAutoMix, MixPlan, mixed_cross_entropy
from .methods.generator import MaskGenerator
from .step.optim import build_optimizer
from .step.precision import Precision
from .step.reference import ReferenceStep
from .step.schedules import Schedule

__version__ = "0.1.0"

__all__ = [
    "AdAutoMix", "MixPlan", "mixed_cross_entropy", "MaskGenerator", "Config", "PRESETS", "resolve",
    "ReferenceStep", "Schedule", "Precision", "build_optimizer", "evaluate", "UsageError", "DataError",
]
