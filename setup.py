"""Build and install adautomix_fast.

* `adautomix_fast/` is the Python package.
* `kernels/` (Triton kernels) is installed as `adautomix_fast.kernels`, never as a top-level
  package called `kernels`.
* `csrc/` holds the C++/CUDA sources of `adautomix_fast._C`. The extension is built when sources
  are present: the C++ (CPU) part always, the CUDA part whenever nvcc is found, so that CI
  compiles the CUDA code even on machines without a GPU. Set ADAUTOMIX_NO_CUDA=1 to skip the
  CUDA part, ADAUTOMIX_NO_EXT=1 to skip the extension altogether (the pure PyTorch fallback
  then runs).
* CUDA architectures: TORCH_CUDA_ARCH_LIST when set. Unset, torch compiles for the GPUs it sees
  (what `make gpu-check` gets on a GPU machine); with no GPU visible (CI) this file sets
  DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX" (A100, H100/H200, PTX that newer GPUs JIT-compile) instead
  of every architecture nvcc knows, which keeps the whole build to a minute or two.
* CUDA root: CUDA_HOME when set, else found from nvcc on PATH (through links and wrapper
  scripts). The CUDA part is skipped, with a message, when torch is a CPU-only build or nvcc's
  CUDA major version differs from torch's (torch's build would refuse it).
* The extension uses the limited Python C API (one `abi3` library per platform).

Install into an environment that already has torch, without build isolation:
    pip install --no-build-isolation -e .
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Used when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (see the docstring).
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _is_cuda_root(path):
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def _find_cuda_home():
    """CUDA root = the folder above nvcc's real bin/ (torch's own guess can be wrong).

    nvcc on PATH may be a link (followed) or a wrapper script; for the latter nvcc itself says
    where it lives (`_HERE_=<bin>` in its --dryrun output).
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if _is_cuda_root(root):
        return root
    here = None
    try:  # a dry run of a compile lists nvcc's settings, among them its own folder
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        here = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    except (OSError, subprocess.SubprocessError):
        pass
    if here and _is_cuda_root(os.path.dirname(here.group(1).strip())):
        return os.path.dirname(here.group(1).strip())
    if _is_cuda_root("/usr/local/cuda"):
        return "/usr/local/cuda"
    print(f"setup.py: found {nvcc} but not the CUDA root above it; set CUDA_HOME. Building the "
          "CPU part only.", file=sys.stderr)
    return None


def _cuda_build_problem(cuda_home):
    """Why the CUDA part cannot be built against this torch (None when it can)."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvcc in {cuda_home} does not run ({exc})"
    found = re.search(r"release (\d+)\.(\d+)", out)
    if found and found.group(1) != torch.version.cuda.split(".")[0]:
        # torch's BuildExtension refuses a different major version; build the CPU part instead.
        return f"nvcc is CUDA {found.group(1)}.{found.group(2)} but torch was built with CUDA {torch.version.cuda}"
    return None


def _default_cuda_archs():
    """Compile for DEFAULT_CUDA_ARCHS when nothing says which GPUs to target (no GPU visible)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        print(f"setup.py: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building CUDA code for "
              f"{DEFAULT_CUDA_ARCHS}", file=sys.stderr)


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
    build_cuda = cuda_home is not None and bool(sources_cu)
    problem = _cuda_build_problem(cuda_home) if build_cuda else None
    if problem:
        print(f"setup.py: building the C++ (CPU) part only: {problem}", file=sys.stderr)
        build_cuda = False
    if not (sources_cpp or build_cuda):
        return [], {}
    if build_cuda and not os.path.isfile(os.path.join(cuda_home, "include", "cusparse.h")):
        # A toolkit without the CUDA library headers (cusparse.h, ...) that torch's CUDA headers
        # may include: use those of the pip-installed CUDA wheels.
        for site in sys.path:
            for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
                candidate = os.path.join(site, sub)
                if os.path.isdir(candidate):
                    include_dirs.append(candidate)

    # The limited API (as extension-cpp): the module only registers ops with the dispatcher, so
    # it needs neither pybind11 (faster to compile) nor libtorch_python. torch adds the
    # -DPy_LIMITED_API flag itself when py_limited_api=True.
    common = dict(include_dirs=include_dirs, py_limited_api=True)
    # No -std flag: torch adds the standard its headers need (C++17 up to 2.12ish, C++20 on 2.14).
    # -fopenmp: at::parallel_for is a header template whose `#pragma omp parallel` is compiled
    # into *this* extension; without the flag it silently runs on one thread (measured: the CPU
    # op took 10.0 ms for ResNet-50's parameters on 2 cores, vs 7.5 ms for _foreach_lerp_).
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    extra = {"cxx": ["-O3", *openmp]}
    common["extra_link_args"] = openmp
    if build_cuda:
        _default_cuda_archs()
        extra["cxx"].append("-DWITH_CUDA")
        # No --use_fast_math: it flushes denormals to zero, and momentum 1 must keep the EMA
        # exactly (the op is memory-bound; fast math would buy nothing).
        extra["nvcc"] = ["-O3", "-DWITH_CUDA"]
        ext = cpp_extension.CUDAExtension(
            "adautomix_fast._C", sources_cpp + sources_cu, extra_compile_args=extra, **common,
        )
    else:
        ext = cpp_extension.CppExtension(
            "adautomix_fast._C", sources_cpp, extra_compile_args=extra, **common,
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}
    return [ext], cmdclass


ext_modules, cmdclass = _extensions()

setup(
    name="adautomix_fast",
    version="0.1.0",
    description="A fast, faithful training engine for AdAutoMix (adversarial automatic mixup)",
    python_requires=">=3.10",
    packages=["adautomix_fast", "adautomix_fast.data", "adautomix_fast.evaluate", "adautomix_fast.methods",
              "adautomix_fast.models", "adautomix_fast.run", "adautomix_fast.runtime", "adautomix_fast.step",
              "adautomix_fast.kernels"],
    package_dir={"adautomix_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy",
        "pillow",
        "scikit-learn",
        "tqdm",
        "pyyaml",
        # The evaluation suite (python -m adautomix_fast.evaluate, docs/evaluation.md).
        "matplotlib",               # every picture (Agg backend, no display needed)
        "torchmetrics",             # ECE
        "torchattacks",             # the reference the hand-written FGSM/PGD are tested against
        "grad-cam",                 # Grad-CAM panels (pytorch-grad-cam)
        # Corruptions synthesised without downloads. The original `imagecorruptions` (1.1.2,
        # 2020) no longer imports (it needs pkg_resources, gone from current setuptools, and
        # skimage's removed `multichannel` argument); this maintained fork of it works with
        # numpy 2 and scikit-image 0.26 and installs the same `imagecorruptions` module.
        "imagecorruptions-imaug",
        "tensorboard",              # the optional --tensorboard log (torch.utils.tensorboard)
        # --method puzzlemix: pyGCO's graph cuts (manylinux wheels; the module is `gco`) and
        # SciPy's exact assignment (--puzzle-transport exact; scikit-learn pulls it in anyway).
        "gco-wrapper",
        "scipy",
    ],
    extras_require={
        # timm: the DeiT architectures (deit_s) and timm/<name>; the test suite runs them, so "test" pulls it too.
        # lightning: examples/lightning_module.py, which the suite runs.
        # ruff: `make lint`; held to one minor version, since a new minor version can turn on new rules.
        # submitit: compare --launcher slurm and slurm-local, which the suite runs.
        "test": ["pytest", "pytest-benchmark", "timm>=1.0", "lightning", "ruff~=0.17.6", "submitit>=1.5"],
        "slurm": ["submitit>=1.5"],
        "timm": ["timm>=1.0"],
        "dali": ["nvidia-dali-cuda130"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
    entry_points={"console_scripts": ["adautomix-train=adautomix_fast.train:cli",
                                      "adautomix-evaluate=adautomix_fast.evaluate.cli:cli"]},
)
