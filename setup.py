"""Build and install adautomix_fast.

* `adautomix_fast/` is the Python package.
* `kernels/` (Triton kernels) is installed as `adautomix_fast.kernels`, never as a top-level
  package called `kernels`.
* `csrc/` holds the C++/CUDA sources of `adautomix_fast._C`. The extension is built when sources
  are present: the C++ (CPU) part always, the CUDA part whenever nvcc is found, so that CI
  compiles the CUDA code even on machines without a GPU. Set ADAUTOMIX_NO_CUDA=1 to skip the
  CUDA part, ADAUTOMIX_NO_EXT=1 to skip the extension altogether (the pure PyTorch fallback
  then runs).

Install into an environment that already has torch, without build isolation:
    pip install --no-build-isolation -e .
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """CUDA root = the folder above nvcc's bin/ (torch's own guess can be wrong)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _extensions():
    sources_cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    sources_cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if _flag("ADAUTOMIX_NO_EXT") or not (sources_cpp or sources_cu):
        return [], {}

    cuda_home = None if _flag("ADAUTOMIX_NO_CUDA") else _find_cuda_home()
    if cuda_home is not None:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    include_dirs = [os.path.join(ROOT, "csrc")]
    # CUDA library headers (cusparse.h, ...) of the pip-installed CUDA wheels.
    for site in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            candidate = os.path.join(site, sub)
            if os.path.isdir(candidate):
                include_dirs.append(candidate)

    extra = {"cxx": ["-O3", "-std=c++17"]}
    if cuda_home is not None and sources_cu:
        extra["cxx"].append("-DWITH_CUDA")
        extra["nvcc"] = ["-O3", "-std=c++17", "-DWITH_CUDA", "--use_fast_math"]
        ext = cpp_extension.CUDAExtension(
            "adautomix_fast._C", sources_cpp + sources_cu,
            include_dirs=include_dirs, extra_compile_args=extra,
        )
    else:
        ext = cpp_extension.CppExtension(
            "adautomix_fast._C", sources_cpp,
            include_dirs=include_dirs, extra_compile_args=extra,
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}
    return [ext], cmdclass


ext_modules, cmdclass = _extensions()

setup(
    name="adautomix_fast",
    version="0.1.0",
    description="A fast, faithful training engine for AdAutoMix (adversarial automatic mixup)",
    python_requires=">=3.10",
    packages=["adautomix_fast", "adautomix_fast.data", "adautomix_fast.kernels"],
    package_dir={"adautomix_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy",
        "pillow",
        "scikit-learn",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        "test": ["pytest"],
        "dali": ["nvidia-dali-cuda130"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["adautomix-train=adautomix_fast.train:cli"]},
)
