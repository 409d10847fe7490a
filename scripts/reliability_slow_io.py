"""Run the trt-provision CLI with every os.write / os.fsync / os.replace slowed down.

The code path is the real one; only the calls take longer, so a kill -9 sent at a random
moment lands inside the staging, sidecar and rename window more often.

Run: python scripts/reliability_slow_io.py [--delay-ms 20] -- provision examples/demo.toml
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _slowed(func: Any, delay_s: float) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_s)
        return func(*args, **kwargs)

    return wrapper


def main(argv: list[str]) -> int:
    delay_ms = 20.0
    if argv[:1] == ["--delay-ms"]:
        delay_ms, argv = float(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    for name in ("write", "fsync", "replace"):
        setattr(os, name, _slowed(getattr(os, name), delay_ms / 1000.0))
    from trt_provision.cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
