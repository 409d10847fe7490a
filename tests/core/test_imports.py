"""Every submodule imports, and every --help runs, without the optional dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

import trt_provision

pytestmark = pytest.mark.tier1

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"tensorrt", "tensorrt_bindings", "cuda", "pynvml", "polygraphy", "boto3", "cupy"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} blocked for this test")
        return None
sys.meta_path.insert(0, Block())
"""

SCRIPT = (
    BLOCKER
    + """
import io, contextlib, json, pkgutil, importlib
import trt_provision
import argparse
from trt_provision.cli.main import build_parser, main
failures = {}
for info in pkgutil.walk_packages(trt_provision.__path__, "trt_provision."):
    if info.name == "trt_provision.__main__":
        continue
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failures[info.name] = repr(exc)
helps = {}
sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
for argv in [["--help"]] + [[c, "--help"] for c in sub.choices]:
    with contextlib.redirect_stdout(io.StringIO()):
        helps[" ".join(argv)] = main(argv)
print(json.dumps({"failures": failures, "helps": helps}))
"""
)


def test_submodules_import_and_help_runs_without_optional_deps() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["failures"] == {}
    assert data["helps"] and set(data["helps"].values()) == {0}


def test_import_is_light() -> None:
    code = (
        "import sys, trt_provision; "
        "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'tensorrt', 'rich', 'boto3')"
        " if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_public_api_is_explicit() -> None:
    assert trt_provision.__all__ == sorted(trt_provision.__all__)
    for name in trt_provision.__all__:
        assert hasattr(trt_provision, name), name
    # Anything else public on the package must be a submodule (imported by other tests).
    # (TYPE_CHECKING and the __future__ flag are module plumbing, not API.)
    extra = {n for n in dir(trt_provision) if not n.startswith("_")} - set(trt_provision.__all__)
    extra -= {"TYPE_CHECKING", "annotations"}
    assert all(isinstance(getattr(trt_provision, n), types.ModuleType) for n in extra), extra


def test_missing_dependency_error_names_the_extra() -> None:
    code = BLOCKER + (
        "from trt_provision._lazy import import_optional\n"
        "from trt_provision.errors import MissingDependencyError\n"
        "try:\n    import_optional('pynvml')\n"
        "except MissingDependencyError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'trt-provision[nvml]'" in proc.stdout


def test_python_dash_m_entry() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.startswith("trt-provision ")
