"""The benchmark plumbing runs and writes well-formed results (CPU, tiny sizes; no time asserted)."""

from __future__ import annotations

import glob
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/ is a folder of the repo, not an installed package
    sys.path.insert(0, ROOT)

from bench import common, gpu_check, step  # noqa: E402


def _only_json(folder) -> dict:
    files = glob.glob(os.path.join(str(folder), "*.json"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return json.load(f)


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_step_writes_cases_ratios_and_device(tmp_path):
    argv = ["--device", "cpu", "--shapes", "cifar,imagenet", "--impls", "vanilla,reference",
            "--arch", "tiny", "--image-size", "32", "--batch-size", "4", "--steps", "2",
            "--warmup", "1", "--out", str(tmp_path)]
    assert step.main(argv) == 0
    data = _only_json(tmp_path)
    assert data["device"]["kind"] == "CPU" and data["device"]["torch"]
    assert os.path.basename(glob.glob(str(tmp_path / "*.json"))[0]).startswith(common.device_slug(data["device"]))

    cases = data["cases"]
    for shape in ("cifar", "imagenet"):
        for impl in ("vanilla", "reference"):
            key = f"step/{shape}/tiny-32px-b4-fp32/{impl}"
            assert key in cases, sorted(cases)
            r = cases[key]
            assert r["error"] is None and r["impl"] == impl and r["device_kind"] == "CPU"
            assert r["config"]["batch_size"] == 4 and r["config"]["steps"] == 2
            for k in ("median", "p10", "p90"):
                assert _positive_finite(r["step_ms"][k])
            assert r["step_ms"]["p10"] <= r["step_ms"]["median"] <= r["step_ms"]["p90"]
            assert _positive_finite(r["images_per_s"]) and _positive_finite(r["peak_memory_mib"])
        ratio = data["ratios"][f"step/{shape}/tiny-32px-b4-fp32/reference_over_vanilla"]
        assert _positive_finite(ratio["value"])
    assert cases["step/imagenet/tiny-32px-b4-fp32/reference"]["adautomix_config"]["mix_samples"] == 2
    assert cases["step/cifar/tiny-32px-b4-fp32/reference"]["adautomix_config"]["mix_samples"] == 3


def test_results_merge_by_key(tmp_path):
    info = common.device_info(__import__("torch").device("cpu"))
    common.write_results(str(tmp_path), info, {"cases": {"a": {"v": 1}}, "ratios": {"r": {"value": 2.0}}})
    common.write_results(str(tmp_path), info, {"cases": {"b": {"v": 3}}, "gpu_check": {"gpu": False}})
    data = _only_json(tmp_path)
    assert set(data["cases"]) == {"a", "b"} and data["ratios"]["r"]["value"] == 2.0
    assert data["gpu_check"]["gpu"] is False


def test_unknown_impl_is_a_usage_error():
    with pytest.raises(SystemExit):
        step.parse_args(["--impls", "nope"])


def test_gpu_check_dry_run_records_skips(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--no-smoke", "--out", str(tmp_path)]) == 0
    assert "SKIPPED" in capsys.readouterr().out
    section = _only_json(tmp_path)["gpu_check"]
    assert section["gpu"] is False and section["dry_run"] is True
    assert section["build"]["status"] in ("built", "not built")
    names = {s["name"] for s in section["skipped"]}
    assert "gpu tests" in names and any(n.startswith("step bench") for n in names)


def test_parse_pytest_summary():
    out = "....\n3 passed, 1 skipped, 2 deselected, 1 error in 4.20s\n"
    assert gpu_check.parse_pytest(out) == {"passed": 3, "skipped": 1, "deselected": 2, "errors": 1}
