"""What start-up imports: `--help` lists the commands without importing them, and a run in
which every engine is reused never parses a model (no onnx). Module sets, not timings:
scripts/bench_startup.py and scripts/bench_cache_hit.py measure the time."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision.cli.main import COMMAND_HELP, COMMAND_MODULES, build_parser

pytestmark = pytest.mark.tier1

ROOT = Path(__file__).resolve().parents[2]

# Runs the CLI in-process and prints, on its last line, the modules it imported.
_MODULES_AFTER = (
    "import json, sys\n"
    "from trt_provision.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
)


def _modules_after(*argv: str, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER, *argv], capture_output=True, text=True,
        timeout=120, env=env, cwd=ROOT,
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return data["code"], set(data["modules"]), proc.stdout


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_help_table_is_what_the_command_modules_register() -> None:
    registered = {
        action.dest: action.help for action in _subcommands(build_parser())._choices_actions
    }
    assert registered == {name: text for name, (_module, text) in COMMAND_HELP.items()}
    assert {module for module, _text in COMMAND_HELP.values()} == set(COMMAND_MODULES)
    # The listing without the command modules reads exactly as the full one.
    assert build_parser("").format_help() == build_parser().format_help()


def test_help_imports_no_command_module_and_nothing_heavy() -> None:
    code, modules, out = _modules_after("--help")
    assert code == 0 and "provision" in out and "selftest" in out
    heavy = {"numpy", "onnx", "onnxruntime", "rich", "trt_provision.config",
             "trt_provision.types", "logging"}
    assert not heavy & modules, sorted(heavy & modules)
    commands = {f"trt_provision.cli.{name}" for name in COMMAND_MODULES}
    assert not commands & modules, sorted(commands & modules)


def test_a_command_still_gets_its_own_parser_and_flag_hints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trt_provision.cli.main import main

    assert main(["-v", "provision", "--help"]) == 0
    assert "--dry-run" in capsys.readouterr().out
    assert main(["provision", "x.toml", "--dry-rnu"]) == 2
    assert "did you mean --dry-run?" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_all_reused_provision_parses_no_model(tmp_path: Path, demo_dir: Path) -> None:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(tmp_path / "cache")}
    manifest = str(demo_dir / "demo.toml")
    code, _modules, _out = _modules_after("provision", manifest, "--json", env=env)
    assert code == 0
    code, modules, out = _modules_after("provision", manifest, "--json", env=env)
    summary = json.loads(out[: out.rindex("\n{")])
    assert code == 0 and summary["reused"] == 3 and summary["built"] == 0
    # onnx only parses models; a reused engine proves its model parsed when it was built.
    assert "onnx" not in modules


def test_a_model_that_is_not_onnx_is_still_refused_before_any_build(tmp_path: Path) -> None:
    from trt_provision.compiler import EngineCompiler
    from trt_provision.compose import wire
    from trt_provision.config import Settings
    from trt_provision.types import BackboneSpec, EngineCompileRequest

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00 definitely not protobuf \x12\x34" * 10)
    compiler: EngineCompiler = wire(Settings(cache_dir=tmp_path / "cache")).compiler
    summary = compiler.compile_engines_for_corpus(
        EngineCompileRequest((BackboneSpec("bad", bad),))
    )
    (result,) = summary.results
    assert result.outcome.value == "failed" and result.identity is None
    assert "cannot parse ONNX model" in (result.error or "")


def test_unparsed_model_hash_is_the_parsed_one(tmp_path: Path, demo_models: dict[str, Path]) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trt_provision.identity import model_sha256

    for path in demo_models.values():
        assert model_sha256(path, parse=False) == model_sha256(path)
    # External data: the key "location" is in the bytes, so the model is parsed and the
    # external file hashed, exactly as with parse=True.
    weight = numpy_helper.from_array(np.ones(256, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])], [weight],
    )
    model = tmp_path / "ext.onnx"
    onnx.save_model(helper.make_model(graph), str(model), save_as_external_data=True,
                    location="ext.bin", size_threshold=0)
    first = model_sha256(model, parse=False)
    assert first == model_sha256(model)
    (tmp_path / "ext.bin").write_bytes(b"\x00" * 1024)
    assert model_sha256(model, parse=False) != first


def test_unparsed_hash_finds_the_key_across_read_boundaries(tmp_path: Path) -> None:
    from trt_provision.errors import ModelError
    from trt_provision.identity import model_sha256

    # Not ONNX, with "location" straddling the first 1 MiB read: it must be parsed (and so
    # refused), not hashed as a model that names no external data.
    path = tmp_path / "straddle.onnx"
    path.write_bytes(b"\xff" * ((1 << 20) - 4) + b"location" + b"\xff" * 16)
    with pytest.raises(ModelError, match="cannot parse"):
        model_sha256(path, parse=False)
    path.write_bytes(b"\xff" * ((1 << 20) - 4) + b"locatio_" + b"\xff" * 16)
    assert len(model_sha256(path, parse=False)) == 64
