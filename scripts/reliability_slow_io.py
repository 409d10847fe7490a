"""Run the trt-provision CLI with every os.write / os.fsync / os.replace slowed down.

The code path is the real one; only the calls take longer, so a kill -9 sent at a random
moment lands inside the staging, sidecar and rename window more often. Two options widen
the window further, still on the real code path:

--max-write-bytes N   every os.write writes at most N bytes (a short write, which every
                      caller loops over), so a download or a staged engine is written in
                      many slowed pieces;
--chunked-file-writes N
                      file objects opened with os.fdopen (the calibration cache's atomic
                      writer) write in N pieces, flushed one by one with the delay between
                      them, so a kill can leave a half-written temp blob on disk.

Run: python scripts/reliability_slow_io.py [--delay-ms 20] [--max-write-bytes N]
         [--chunked-file-writes N] -- provision examples/demo.toml
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


def _capped_write(write: Any, cap: int) -> Any:
    def wrapper(fd: int, data: Any) -> int:
        return write(fd, memoryview(data)[:cap])

    return wrapper


class _ChunkedFile:
    """A binary file object whose write() goes to disk in pieces, with pauses between."""

    def __init__(self, fh: Any, pieces: int, delay_s: float) -> None:
        self._fh = fh
        self._pieces = pieces
        self._delay_s = delay_s

    def write(self, data: Any) -> int:
        view = memoryview(data)
        step = max(1, -(-len(view) // self._pieces))
        for start in range(0, len(view), step):
            self._fh.write(view[start : start + step])
            self._fh.flush()
            time.sleep(self._delay_s)
        return len(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _ChunkedFile:
        self._fh.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._fh.__exit__(*exc)


def _chunked_fdopen(fdopen: Any, pieces: int, delay_s: float) -> Any:
    def wrapper(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = fdopen(fd, mode, *args, **kwargs)
        return _ChunkedFile(fh, pieces, delay_s) if "w" in mode and "b" in mode else fh

    return wrapper


def main(argv: list[str]) -> int:
    delay_ms = 20.0
    max_write = 0
    pieces = 0
    while argv[:1] and argv[0] != "--" and argv[0].startswith("--"):
        option, value, argv = argv[0], argv[1], argv[2:]
        if option == "--delay-ms":
            delay_ms = float(value)
        elif option == "--max-write-bytes":
            max_write = int(value)
        elif option == "--chunked-file-writes":
            pieces = int(value)
        else:
            print(f"unknown option {option}", file=sys.stderr)
            return 2
    if argv[:1] == ["--"]:
        argv = argv[1:]
    delay_s = delay_ms / 1000.0
    if max_write > 0:
        os.write = _capped_write(os.write, max_write)
    for name in ("write", "fsync", "replace"):
        setattr(os, name, _slowed(getattr(os, name), delay_s))
    if pieces > 0:
        os.fdopen = _chunked_fdopen(os.fdopen, pieces, delay_s)
    from trt_provision.cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
