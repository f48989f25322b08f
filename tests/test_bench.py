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
            for k in ("median", "q1", "q3"):
                assert _positive_finite(r["step_ms"][k])
            assert r["step_ms"]["q1"] <= r["step_ms"]["median"] <= r["step_ms"]["q3"]
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
    # the baselines' and AutoMix's fused steps and the transformer/ConvNeXt shapes are GPU-check parts
    assert "step bench cifar methods" in names and "step bench convnext-cifar,swin amp bf16 channels-last" in names


def test_parse_pytest_summary():
    out = "....\n3 passed, 1 skipped, 2 deselected, 1 error in 4.20s\n"
    assert gpu_check.parse_pytest(out) == {"passed": 3, "skipped": 1, "deselected": 2, "errors": 1}


def test_pytest_benchmark_suites_run_and_write_grouped_json(tmp_path):
    """`pytest bench/ --benchmark-only` (here at the smoke size) runs every suite and writes
    pytest-benchmark's JSON: benchmarks grouped per shape, our device record in machine_info."""
    import subprocess
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", os.path.join(ROOT, "bench"), "--benchmark-only",
                           "--bench-size", "smoke", "-q", "-p", "no:cacheprovider", f"--benchmark-json={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    groups = {b["group"] for b in data["benchmarks"]}
    assert {"step-cifar", "step-imagenet", "ema-tiny", "mix-cifar-fwd", "attention-cifar-fwd+bwd"} <= groups
    impls = {b["extra_info"]["impl"] for b in data["benchmarks"] if b["group"] == "step-cifar"}
    assert {"vanilla", "reference"} <= impls
    for b in data["benchmarks"]:
        assert b["stats"]["rounds"] >= 1 and b["stats"]["median"] > 0
    info = data["machine_info"]["adautomix_fast"]
    for key in ("torch", "triton", "torch_cuda_build", "cpu_capability", "threads"):
        assert key in info
