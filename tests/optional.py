"""Skipping what needs an optional package that is not installed (the GPU image has none of them)."""

from __future__ import annotations

import importlib.util

import pytest


def skip_without_requirements(method: str) -> None:
    """Skip a test of ``method`` where an optional package it needs is missing (OpenCV's contrib
    saliency for SaliencyMix, pyGCO for PuzzleMix), with the method's own message."""
    from adautomix_fast.registry import method_class

    missing = method_class(method).missing_requirement()
    if missing:
        pytest.skip(missing)


def skip_without(*modules: str) -> None:
    """Skip unless every module is importable (torchattacks, pytorch_grad_cam, imagecorruptions)."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"needs {', '.join(absent)} (not installed)")
