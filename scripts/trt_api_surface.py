"""Record the public Python API of real TensorRT bindings wheels as JSON.

The bindings wheels (``tensorrt-cuXX-bindings``) hold a pybind11 extension,
``tensorrt_bindings/tensorrt.so``, that links against ``libnvinfer``, ``libnvonnxparser`` and
``libnvinfer_plugin`` but needs only a handful of C entry points from them at load time. This
script downloads each wheel (no dependencies), lists the symbols the extension leaves
undefined, compiles a tiny stub library per SONAME that defines them (returning 0/NULL),
imports the bindings against the stubs in a child interpreter and walks the module: every
class with its own members (method signatures from the pybind docstrings), every enum with
its members, and module-level functions and constants.

Nothing in the stubs is ever called by the walk: only the module's Python-visible surface is
read. The output is the ground truth the conformance tests compare the runtime code and the
recording fake against, so tests never need TensorRT or the network.

Usage (needs the network once, gcc, binutils and a CPython matching the wheels' tag)::

    python scripts/trt_api_surface.py                       # all versions below
    python scripts/trt_api_surface.py --versions 11.4.0.106 --out tests/data/trt_api
    python scripts/trt_api_surface.py --wheel-dir ./wheels  # reuse downloaded wheels
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

# version -> pip requirement of its bindings wheel
WHEELS: dict[str, str] = {
    "10.3.0": "tensorrt-cu12-bindings==10.3.0",
    "10.16.1.11": "tensorrt-cu12-bindings==10.16.1.11",
    "11.4.0.106": "tensorrt-cu13-bindings==11.4.0.106",
}
PYTHON_TAG = "3.11"
SCHEMA = 1
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "trt_api"

# Which stub library defines a symbol; anything unmatched goes to libnvinfer.
_SYMBOL_HOMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"OnnxParser"), "libnvonnxparser"),
    (re.compile(r"^initLibNvInferPlugins$"), "libnvinfer_plugin"),
)


# --------------------------------------------------------------------------- parent side


def download_wheel(requirement: str, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", PYTHON_TAG, "--quiet", "-d", str(dest), requirement,
        ],
        check=True,
    )
    return _find_wheel(requirement, dest, before)


def _find_wheel(requirement: str, directory: Path, exclude: set[Path] | None = None) -> Path:
    name, _, version = requirement.partition("==")
    stem = name.replace("-", "_")
    hits = [
        p for p in directory.glob(f"{stem}-{version}-*.whl") if not exclude or p not in exclude
    ] or list(directory.glob(f"{stem}-{version}-*.whl"))
    if not hits:
        raise SystemExit(f"no wheel for {requirement} in {directory}")
    return sorted(hits)[0]


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def needed_libraries(extension: Path) -> list[str]:
    out = _run(["readelf", "-d", str(extension)])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _system_library_path(soname: str) -> Path | None:
    for line in _run(["ldconfig", "-p"]).splitlines():
        parts = line.strip().split(" => ")
        if len(parts) == 2 and parts[0].split(" ", 1)[0] == soname:
            return Path(parts[1])
    return None


def defined_symbols(library: Path) -> set[str]:
    out = _run(["nm", "-D", "--defined-only", str(library)])
    return {line.split()[-1].split("@", 1)[0] for line in out.splitlines() if line.strip()}


def missing_symbols(extension: Path, system_libs: list[Path]) -> list[str]:
    """Strong undefined symbols that neither the interpreter nor system libraries provide."""
    out = _run(["nm", "-D", "--undefined-only", str(extension)])
    provided: set[str] = set()
    for lib in system_libs:
        provided |= defined_symbols(lib)
    wanted = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) != 2 or fields[0] != "U" or "@" in fields[1]:
            continue  # weak, or versioned (those come from glibc / libstdc++)
        name = fields[1]
        if name.startswith(("Py", "_Py")) or name in provided:
            continue
        wanted.append(name)
    return sorted(set(wanted))


def build_stubs(extension: Path, stub_dir: Path) -> dict[str, list[str]]:
    """Compile one stub shared object per TensorRT SONAME the extension needs."""
    needed = needed_libraries(extension)
    nv = [s for s in needed if s.startswith("libnv")]
    system = [p for s in needed if s not in nv and (p := _system_library_path(s))]
    symbols = missing_symbols(extension, system)
    by_lib: dict[str, list[str]] = {s: [] for s in nv}
    for sym in symbols:
        home = next((lib for pat, lib in _SYMBOL_HOMES if pat.search(sym)), "libnvinfer")
        soname = next((s for s in nv if s.split(".so", 1)[0] == home), None)
        if soname is None:
            soname = next(s for s in nv if s.startswith("libnvinfer.so"))
        by_lib[soname].append(sym)
    stub_dir.mkdir(parents=True, exist_ok=True)
    for soname, syms in by_lib.items():
        source = stub_dir / (soname.split(".so", 1)[0] + "_stub.c")
        body = "".join(f"void *{s}(void) {{ return 0; }}\n" for s in syms)
        source.write_text("/* generated stub: every entry point returns NULL */\n" + body)
        subprocess.run(
            [
                "gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}",
                "-o", str(stub_dir / soname), str(source),
            ],
            check=True,
        )
    return by_lib


def surface_for(version: str, wheel: Path, work: Path) -> dict[str, Any]:
    extract = work / f"trt-{version}"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(extract)
    extension = next(extract.glob("tensorrt_bindings/tensorrt*.so"))
    stubs = build_stubs(extension, work / f"stubs-{version}")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(work / f"stubs-{version}")] + [p for p in [env.get("LD_LIBRARY_PATH")] if p]
    )
    env["PYTHONPATH"] = str(extract)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--walk"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    surface: dict[str, Any] = json.loads(out)
    surface["schema"] = SCHEMA
    surface["wheel"] = wheel.name
    surface["stubbed_symbols"] = {k: sorted(v) for k, v in sorted(stubs.items())}
    return surface


def write_surface(surface: dict[str, Any], path: Path) -> None:
    """One member per line: diffs between regenerations stay readable."""
    lines = ["{"]
    keys = sorted(surface)
    for i, key in enumerate(keys):
        comma = "," if i < len(keys) - 1 else ""
        value = surface[key]
        if isinstance(value, dict) and value and key in ("classes", "enums", "functions"):
            lines.append(f"  {json.dumps(key)}: {{")
            names = sorted(value)
            for j, name in enumerate(names):
                inner = json.dumps(value[name], sort_keys=True, separators=(",", ":"))
                sep = "," if j < len(names) - 1 else ""
                lines.append(f"    {json.dumps(name)}: {inner}{sep}")
            lines.append("  }" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}{comma}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- child side

_MODULE_PREFIXES = ("tensorrt_bindings.tensorrt.", "tensorrt_bindings.", "tensorrt.tensorrt.")


def _clean(text: str) -> str:
    for prefix in _MODULE_PREFIXES:
        text = text.replace(prefix, "trt.")
    return re.sub(r"\s+", " ", text).strip()


def signatures(name: str, doc: str | None) -> list[str]:
    """The pybind11 signature line(s) of a callable, overloads included."""
    if not doc:
        return []
    pattern = re.compile(rf"^\s*(?:\d+\.\s+)?{re.escape(name)}\(.*$")
    return [_clean(m.group(0)) for line in doc.splitlines() if (m := pattern.match(line))]


def _is_enum(obj: type) -> bool:
    # pybind11 enums expose a ``__members__`` dict of name -> value.
    return isinstance(getattr(obj, "__members__", None), dict)


def _python_signature(name: str, fn: Any) -> list[str]:
    """Functions written in Python (in the wheel's ``__init__``) have no pybind docstring."""
    try:
        return [_clean(f"{name}{inspect.signature(fn)}")]
    except (TypeError, ValueError):
        return []


def _walk_class(qualname: str, cls: type, classes: dict[str, Any], enums: dict[str, Any]) -> None:
    if _is_enum(cls):
        members = cls.__members__  # type: ignore[attr-defined]
        enums[qualname] = {k: int(v) for k, v in sorted(members.items())}
        return
    own: dict[str, Any] = {}
    for attr, raw in sorted(vars(cls).items()):
        if attr.startswith("_") and attr not in ("__init__", "__call__", "__getitem__", "__len__"):
            continue
        if inspect.isclass(raw):
            _walk_class(f"{qualname}.{attr}", raw, classes, enums)
            own[attr] = {"kind": "class"}
            continue
        if isinstance(raw, property):
            own[attr] = {"kind": "property", "settable": raw.fset is not None}
            continue
        if isinstance(raw, staticmethod):
            fn = raw.__func__
            own[attr] = {"kind": "staticmethod", "sig": signatures(attr, fn.__doc__)}
            continue
        if callable(raw):
            kind = "method" if attr != "__init__" else "constructor"
            own[attr] = {"kind": kind, "sig": signatures(attr, getattr(raw, "__doc__", None))}
            continue
        # Enum values exposed on a class (pybind ``export_values``) and plain constants.
        own[attr] = {"kind": "attribute", "type": type(raw).__name__}
    bases = [
        b.__name__ for b in cls.__bases__ if b.__module__.startswith(("tensorrt", "trt"))
    ]
    classes[qualname] = {"bases": bases, "members": own}


def walk() -> dict[str, Any]:
    module = importlib.import_module("tensorrt_bindings")
    classes: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    functions: dict[str, Any] = {}
    constants: dict[str, str] = {}
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        if inspect.isclass(obj):
            qual = name
            _walk_class(qual, obj, classes, enums)
        elif callable(obj):
            functions[name] = signatures(name, obj.__doc__) or _python_signature(name, obj)
        else:
            constants[name] = type(obj).__name__
    return {
        "version": str(module.__version__),
        "classes": classes,
        "enums": enums,
        "functions": functions,
        "constants": constants,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--versions", nargs="*", default=sorted(WHEELS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--wheel-dir", type=Path, default=None,
                        help="use wheels already in this directory instead of downloading")
    parser.add_argument("--walk", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.walk:
        json.dump(walk(), sys.stdout)
        return 0
    if sys.version_info[:2] != tuple(int(x) for x in PYTHON_TAG.split(".")):
        raise SystemExit(f"run with CPython {PYTHON_TAG}, the interpreter the wheels are built for")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trt-api-") as tmp:
        work = Path(tmp)
        for version in args.versions:
            requirement = WHEELS[version]
            if args.wheel_dir is not None:
                wheel = _find_wheel(requirement, args.wheel_dir)
            else:
                wheel = download_wheel(requirement, work)
            surface = surface_for(version, wheel, work)
            if surface["version"] != version:
                raise SystemExit(f"{wheel.name} reports version {surface['version']}")
            path = args.out / f"{version}.json"
            write_surface(surface, path)
            print(
                f"{path.name}: {len(surface['classes'])} classes, {len(surface['enums'])} enums, "
                f"{len(surface['functions'])} functions"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
