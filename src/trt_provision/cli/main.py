"""Entry point of ``trt-provision`` and ``python -m trt_provision``.

Exit codes: 0 ok, 1 user error (one line on stderr, no traceback), 2 usage, 3 internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence

from trt_provision._version import __version__
from trt_provision.errors import TrtProvisionError, UsageError

__all__ = ["COMMAND_MODULES", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USER", "build_parser", "main"]

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

# Each module exposes register(subparsers) and sets func=callable(args) -> int.
COMMAND_MODULES: tuple[str, ...] = (
    "provision", "compile", "verify", "inspect", "probe", "cache", "remote", "keys",
    "run", "selftest", "prepare", "report", "export",
)

# Each command's one-line help and the module that registers it. `trt-provision --help` (and
# any command line naming no command) lists the commands from here without importing their
# modules, which pull in the config, the DTOs and their helpers: start-up stays close to a bare
# interpreter's. tests/core/test_startup.py keeps this table equal to what the modules register;
# a module without an entry here is imported for the listing, as before.
COMMAND_HELP: dict[str, tuple[str, str]] = {
    "provision": ("provision", "compile or reuse one engine per model of a manifest"),
    "compile": ("compile", "compile (or reuse) the engine of one ONNX model"),
    "verify": ("verify", "re-hash a cache directory and report bad entries"),
    "inspect": ("inspect",
                "show an engine's identity, metadata and measurements, or an ONNX model's I/O"),
    "probe": ("probe", "show the host's capabilities and thermal state"),
    "cache": ("cache", "list, garbage-collect or clear the local engine cache"),
    "push": ("remote", "upload this host's cached engines of a manifest to the remote store"),
    "pull": ("remote", "download a manifest's engines for this host from the remote store"),
    "keys": ("keys", "generate signing keys, sign and verify engines"),
    "run": ("run",
            "load an engine (or a manifest's cached engines), time it, compare with ONNX Runtime"),
    "selftest": ("selftest",
                 "prove the TensorRT path on this host (builds, loads and checks the demo corpus)"),
    "prepare": ("prepare", "write the FP16 or Q/DQ graph a build would parse"),
    "report": ("report",
               "what the cache holds for a manifest: coverage, accuracy, latency, signatures"),
    "export": ("export", "export cached engines (a Triton model repository)"),
}


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """A prefix of a flag is never that flag (``--calib`` is not ``--calibration-data``):
    set on this parser and every subcommand's, including ones registered elsewhere."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-v/-q after the subcommand too; counted apart and added up in main()."""
    parser.add_argument(
        "-v", "--verbose", dest="sub_verbose", action="count", default=argparse.SUPPRESS,
        help="more log output (-vv for debug)",
    )
    parser.add_argument(
        "-q", "--quiet", dest="sub_quiet", action="store_true", default=argparse.SUPPRESS,
        help="only errors on stderr",
    )


def _all_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.append(child)
                found.extend(_all_subparsers(child))
    return found


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` ("" for none), only that command's module
    registers its parser, and every other command is listed by its one-line help."""
    parser = argparse.ArgumentParser(
        prog="trt-provision",
        description="Compile, or reuse from a verified cache, one engine per model for this host.",
        epilog="Exit codes: 0 ok, 1 user error or a model that failed, 2 usage, 3 internal error.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"trt-provision {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listed = {module for module, _help in COMMAND_HELP.values()}
    chosen = COMMAND_HELP.get(command or "", ("", ""))[0]
    for name in COMMAND_MODULES:
        if command is None or name == chosen or name not in listed:
            importlib.import_module(f"trt_provision.cli.{name}").register(sub)
            continue
        for listed_command, (module, text) in COMMAND_HELP.items():
            if module == name:
                sub.add_parser(listed_command, help=text, add_help=False)
    for child in _all_subparsers(parser):
        own = {o for a in child._actions for o in a.option_strings}
        if not own & {"-v", "-q", "--verbose", "--quiet"} and not any(
            isinstance(a, argparse._SubParsersAction) for a in child._actions
        ):
            _add_verbosity(child)
    _no_abbreviations(parser)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    import logging  # here, not at the top: `--help` exits before any logging is set up

    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("trt_provision")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args, extra = parser.parse_known_args(argv)
    # A subcommand may take a trailing optional positional anywhere among its options
    # (``compile MODEL --fp16 OUT_DIR``): argparse fills it too early, so it lands here.
    late = getattr(args, "late_positional", None)
    if (late and len(extra) == 1 and extra[0] and not extra[0].startswith("-")
            and getattr(args, late) is None):
        setattr(args, late, extra[0])
        extra = []
    if extra:
        # The subcommand's usage, not the top level's, and the nearest real flag for a typo.
        import difflib

        chosen = _chosen_parser(parser, list(argv if argv is not None else sys.argv[1:]))
        hint = ""
        known = [o for a in chosen._actions for o in a.option_strings if o.startswith("--")]
        for token in extra:
            close = difflib.get_close_matches(token.split("=", 1)[0], known, n=1)
            if token.startswith("--") and close:
                hint = f" (did you mean {close[0]}?)"
                break
        chosen.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _chosen_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)subcommand parser the command line selected, for its usage line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for i, token in enumerate(argv):
                if token in action.choices:
                    return _chosen_parser(action.choices[token], argv[i + 1:])
    return parser


def _command_named(argv: Sequence[str]) -> str:
    """The command a command line names: its first token that is not a flag (no top-level
    flag takes a value); "" when there is none."""
    for token in argv:
        if not token.startswith("-"):
            return token
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    _tolerate_undecodable_names()
    parser = build_parser(_command_named(sys.argv[1:] if argv is None else argv))
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    verbose = args.verbose + getattr(args, "sub_verbose", 0)
    quiet = args.quiet or getattr(args, "sub_quiet", False)
    _configure_logging(verbose, quiet)
    try:
        return int(args.func(args))
    except UsageError as exc:  # names the flag as typed; the type name would mean nothing
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except TrtProvisionError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except MemoryError:  # a file or shape too large for this machine: not our bug
        print("error: out of memory (an input, model or file is too large for this "
              "machine's memory)", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:
        import logging

        logging.getLogger("trt_provision.cli").debug("internal error", exc_info=True)
        print(
            f"internal error (a bug in trt-provision, please report it): "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _tolerate_undecodable_names() -> None:
    """A file name that is not valid UTF-8 reaches Python as surrogate escapes; printing it
    must show it escaped, not crash the report that names it."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            # A detached or closed stream is left as it is.
            with contextlib.suppress(OSError, ValueError):
                reconfigure(errors="backslashreplace")
