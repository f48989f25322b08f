"""The package imports with only what the GPU machines' image has: without the optional packages
(NVIDIA DALI, torchattacks, grad-cam, imagecorruptions, pyGCO, lightning, submitit) every module of
adautomix_fast, its kernels and bench/ still imports; the features that need one say so when
used, not at import."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Import names of the optional packages the GPU image lacks.
OPTIONAL = ("nvidia.dali", "torchattacks", "pytorch_grad_cam", "imagecorruptions", "gco", "lightning", "submitit")

_CHILD = r"""
import importlib, importlib.abc, pkgutil, sys

HIDDEN = {hidden!r}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, Hide())
import adautomix_fast, adautomix_fast.kernels, bench
names = []
# adautomix_fast.kernels is installed from kernels/ (setup.py), outside the package's folder: walked on its own.
for package in (adautomix_fast, adautomix_fast.kernels, bench):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__") or info.name.split(".")[-1].startswith("test_") \
                or info.name.endswith(".conftest"):
            continue   # __main__ runs a program; pytest files and conftest import pytest fixtures
        importlib.import_module(info.name)
        names.append(info.name)
leaked = sorted(n for n in sys.modules if any(n == h or n.startswith(h + ".") for h in HIDDEN))
print(len(names), "modules;", "leaked:", leaked)
"""


def test_every_module_imports_without_the_optional_packages():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _CHILD.format(hidden=OPTIONAL)], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    count, rest = out.stdout.strip().split(" modules; ")
    assert int(count) > 70 and rest == "leaked: []", out.stdout


# The imports a function may make on first use: the optional packages, those that cost seconds
# at import (matplotlib, scikit-learn with SciPy, dynamo) and the Triton kernels and Triton itself.
LAZY = {"timm", "nvidia", "cv2", "gco", "torchattacks", "pytorch_grad_cam", "imagecorruptions", "matplotlib",
        "torchmetrics", "safetensors", "huggingface_hub", "pytest_benchmark", "scipy", "sklearn", "triton",
        "lightning", "submitit", "torch.utils.tensorboard", "torch._dynamo", "torch.library", "adautomix_fast.kernels",
        "kernels"}


def _function_level_imports(path):
    import ast
    tree = ast.parse(open(path).read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.If)) and node is not tree:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, a.name) for a in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    module = inner.module or ""
                    if inner.level:   # relative: "from .. import kernels" names the kernels
                        module = module or ",".join(a.name for a in inner.names)
                    found.append((inner.lineno, module))
    return found


def test_only_optional_or_costly_dependencies_are_imported_inside_functions():
    offenders = []
    for folder in ("adautomix_fast", "bench", "kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py") or name.startswith("test_") or name == "conftest.py":
                    continue
                path = os.path.join(dirpath, name)
                for line, module in _function_level_imports(path):
                    if module == "__future__" or any(module == m or module.startswith(m + ".") for m in LAZY):
                        continue
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{line} {module}")
    assert not offenders, "move these imports to the top of their module:\n" + "\n".join(sorted(set(offenders)))


def _module_graph():
    """{module: the package modules it imports at module level}, read from the source."""
    import ast
    files = {}
    for dirpath, _, names in os.walk(os.path.join(ROOT, "adautomix_fast")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                files[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    graph = {}
    for module, path in files.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        deps = set()
        for node in ast.parse(open(path).read(), path).body:
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                source = (base + ("." + node.module if node.module else "")) if node.level else node.module
                subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in files]
                deps.update(subs)
                if len(subs) < len(node.names):     # names from the module itself
                    deps.add(source)
        graph[module] = {d for d in deps if d in files and d != module}
    return graph


def test_the_package_has_no_import_cycle():
    graph, state, cycles = _module_graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_method_module_imports_the_data_modules_or_the_config():
    graph = _module_graph()
    for module, deps in graph.items():
        if module.startswith("adautomix_fast.methods."):
            bad = sorted(d for d in deps if d.startswith("adautomix_fast.data") or d == "adautomix_fast.config")
            assert not bad, f"{module} imports {bad}: pass what it needs (DataFacts) instead"
