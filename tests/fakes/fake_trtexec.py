"""A fake ``trtexec`` that parses its command line the way the real one of each version does.

Run as a program (``install_fake_trtexec`` writes a wrapper named ``trtexec`` that calls this
file with the test interpreter). Environment:

* ``FAKE_TRTEXEC_TRT``: the banner number (``NV_TENSORRT_VERSION``, e.g. ``101601``);
* ``FAKE_TRTEXEC_ARGV``: where the argv is written, one argument a line;
* ``FAKE_TRTEXEC_ENGINE``: the engine file ``--saveEngine`` receives a copy of;
* ``FAKE_TRTEXEC_MODE``: ``ok``, ``fail``, ``hang``, ``noengine`` or ``calibrates``.

What it does like trtexec (each cites its source):

* prints the banner ``&&&& RUNNING TensorRT.trtexec [TensorRT vNNNNNN]`` first
  (samples/common/logging.h, ``reportTestStart``), and ``&&&& FAILED`` on any failure;
* refuses an option its version does not parse: after ``AllOptions::parse`` every argument
  left over is an error "Unknown option: --x value" (samples/trtexec/trtexec.cpp,
  v10.3.0..v11.1). The options of each version are those ``getAndDelOption`` consumes in
  samples/common/sampleOptions.cpp of that tag: 11.x has no ``--fp16``, ``--int8``,
  ``--calib``, ``--best``, ``--bf16``, ``--fp8``, ``--int4`` (weak typing was removed);
* loads every ``--staticPlugins`` library after TensorRT's own plugins (trtexec.cpp,
  ``loadLibrary(pluginPath)``): a missing file fails. A fake library is a text file naming
  the plugin creators it registers, one a line;
* parses the ONNX model: an op without an importer and without a registered plugin creator
  is an error "No importer registered for op: X" (onnx/onnx-tensorrt ModelImporter.cpp,
  ``parseNode``; the fake parser's importer table, ``fake_tensorrt._OP_LAYERS``);
* mode ``calibrates``: with ``--calib`` the builder logs a calibration run, as TensorRT's
  builder does when it rejects the cache and calibrates (here on trtexec's random data,
  ``RndInt8Calibrator`` in samples/common/sampleEngines.cpp): "Starting Calibration" and
  "Calibrated batch N in ... seconds" (NVIDIA/TensorRT samples/sampleINT8/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Options each trtexec version consumes (samples/common/sampleOptions.cpp at v10.3.0,
# v10.16 and v11.1: the "--name" literals passed to getAndDelOption). Only the ones a build
# from this project could pass, plus the weak-typing ones 11.x removed.
_COMMON = frozenset({
    "onnx", "saveEngine", "skipInference", "minShapes", "optShapes", "maxShapes",
    "memPoolSize", "builderOptimizationLevel", "hardwareCompatibilityLevel",
    "timingCacheFile", "stronglyTyped", "noTF32", "useDLACore", "allowGPUFallback",
    "staticPlugins", "plugins", "verbose", "help",
})
_WEAK_TYPING = frozenset({"fp16", "int8", "calib", "best", "bf16", "fp8", "int4"})
OPTIONS_BY_MAJOR: dict[int, frozenset[str]] = {10: _COMMON | _WEAK_TYPING, 11: _COMMON}
_REPEATABLE = frozenset({"staticPlugins", "plugins"})


def _major(banner: str) -> int:
    number = int(banner)
    return number // 10000 if number >= 100000 else number // 1000


def _fail(*lines: str) -> int:
    for line in lines:
        print(line)
    print("&&&& FAILED TensorRT.trtexec")
    return 1


def _parse(argv: list[str], major: int) -> tuple[dict[str, str], list[str], list[str]]:
    known = OPTIONS_BY_MAJOR[major]
    options: dict[str, str] = {}
    libraries: list[str] = []
    unknown: list[str] = []
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in known:
            unknown.append(arg)
        elif name in _REPEATABLE:
            libraries.append(value)
        else:
            options[name] = value
    return options, libraries, unknown


def _importers() -> frozenset[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fakes.fake_tensorrt import _OP_LAYERS

    return frozenset(_OP_LAYERS)


def main(argv: list[str]) -> int:
    banner = os.environ.get("FAKE_TRTEXEC_TRT", "101601")
    print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}] # trtexec {' '.join(argv)}")
    if argv[:1] == ["--help"]:
        print("=== Model Options ===")
        return 0
    Path(os.environ["FAKE_TRTEXEC_ARGV"]).write_text("".join(a + "\n" for a in argv))
    mode = os.environ.get("FAKE_TRTEXEC_MODE", "ok")
    if mode == "fail":
        print("[I] [TRT] parsing")
        return _fail("[E] [TRT] ModelImporter: no importer for op FancyOp")
    if mode == "hang":
        child = subprocess.Popen(["sleep", "30"])  # a grandchild the timeout must reap
        Path(os.environ["FAKE_TRTEXEC_ARGV"] + ".child").write_text(str(child.pid))
        time.sleep(30)
        return 0
    if mode == "noengine":
        print("&&&& PASSED TensorRT.trtexec")
        return 0
    options, libraries, unknown = _parse(argv, _major(banner))
    if unknown:
        return _fail(*(f"[E] Unknown option: {a.partition('=')[0]} {a.partition('=')[2]}"
                       for a in unknown))
    creators: set[str] = set()
    for library in libraries:
        print(f"[I] Loading supplied plugin library: {library}")
        path = Path(library)
        if not path.is_file():
            return _fail(f"[E] Could not load library {library}: cannot open shared object")
        creators.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    if "onnx" in options:
        import onnx

        model = onnx.load(options["onnx"], load_external_data=False)
        importers = _importers()
        for node in model.graph.node:
            if node.op_type not in importers and node.op_type != "Constant" \
                    and node.op_type not in creators:
                return _fail(f"[E] [TRT] ModelImporter.cpp:949: While parsing node "
                             f"{node.name}: No importer registered for op: {node.op_type}",
                             "[E] Failed to parse onnx file")
    if mode == "calibrates" and "calib" in options:
        print("[I] [TRT] Starting Calibration.")
        print("[I] [TRT]   Calibrated batch 0 in 0.00211989 seconds.")
        print("[I] [TRT] Calibration completed in 0.317902 seconds.")
    if "saveEngine" in options:
        shutil.copyfile(os.environ["FAKE_TRTEXEC_ENGINE"], options["saveEngine"])
    if "timingCacheFile" in options:
        with open(options["timingCacheFile"], "ab") as fh:
            fh.write(b"tc")
    print("[W] [TRT] a warning")
    print("&&&& PASSED TensorRT.trtexec")
    return 0


def install_fake_trtexec(bindir: Path) -> Path:
    """A ``trtexec`` in ``bindir`` running this fake with the current interpreter."""
    bindir.mkdir(parents=True, exist_ok=True)
    binary = bindir / "trtexec"
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    binary.chmod(0o755)
    return binary


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
