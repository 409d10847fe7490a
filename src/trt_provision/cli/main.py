"""Entry point of ``trt-provision`` and ``python -m trt_provision``.

Exit codes: 0 ok, 1 user error (one line on stderr, no traceback), 2 usage, 3 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from trt_provision._version import __version__
from trt_provision.errors import TrtProvisionError

__all__ = ["COMMAND_MODULES", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USER", "build_parser", "main"]

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

# Each module exposes register(subparsers) and sets func=callable(args) -> int.
COMMAND_MODULES: tuple[str, ...] = (
    "provision", "compile", "verify", "inspect", "probe", "cache", "remote", "keys",
    "prepare",
)

log = logging.getLogger("trt_provision.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trt-provision",
        description="Compile, or reuse from a verified cache, one engine per model for this host.",
    )
    parser.add_argument("--version", action="version", version=f"trt-provision {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"trt_provision.cli.{name}").register(sub)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("trt_provision")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except TrtProvisionError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        print(
            f"internal error (a bug in trt-provision, please report it): "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
