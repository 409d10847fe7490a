"""Calibration data: sources, per-batch validation against the model, and the dataset digest.

A *batch* is one feed of the model: ``{input name: array}``. Sources are opened lazily and
may be iterated more than once (digest, calibration, accuracy check); file sources are
re-read each time rather than held in memory, and ``.npy`` files are memory-mapped.

Accepted sources (``CalibrationSpec.source`` or the Python API):

* ``np.ndarray`` - a single-input model; rank == model rank is one batch, rank == model
  rank + 1 is a stack of batches along axis 0;
* ``Mapping[str, np.ndarray]`` - one batch (or a stack, same rank rule, for every input);
* a list / iterator of either (a one-shot iterator is materialised on first use);
* a ``.npz`` file (one mapping), a ``.npy`` file (one array), a directory of them (sorted);
* ``path/to/file.py:function`` - a loader returning any of the above (default function
  name ``load_data``); it is called again for every pass over the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.errors import CalibrationCacheError, ModelError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from trt_provision.types import BuildConfig

__all__ = [
    "Batch",
    "CalibrationDataset",
    "InputSpec",
    "dataset_digest",
    "model_input_specs",
    "open_calibration_source",
    "validate_batch",
]

logger = logging.getLogger(__name__)

Batch = Mapping[str, "npt.NDArray[Any]"]

_DIGEST_DOMAIN = b"trt-provision/dataset/v1\x00"
_DIGEST_CHUNK = 8 << 20  # bytes per hashlib.update; memoryview slices, so no copies


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy dtype name and declared dims (None = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    # The symbolic name of each dynamic dim ("batch"; None when unnamed or static).
    dim_names: tuple[str | None, ...] = field(default=(), compare=False)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def named_shape(self) -> tuple[int | str | None, ...]:
        """Each dim's size, else its symbolic name, else None: inputs sharing a name must
        agree on its size."""
        names = self.dim_names or (None,) * len(self.shape)
        return tuple(d if d is not None else n for d, n in zip(self.shape, names, strict=True))


def model_input_specs(model_path: Path) -> tuple[InputSpec, ...]:
    """The real inputs of an ONNX model (graph inputs that are not initializers)."""
    import onnx
    from onnx import helper

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelError(
            f"cannot parse ONNX model: {type(exc).__name__}: {exc}", path=str(model_path)
        ) from exc
    initializers = {t.name for t in proto.graph.initializer}
    specs: list[InputSpec] = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ModelError("model input is not a tensor", input=value.name)
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        dims: list[int | None] = []
        names: list[str | None] = []
        for dim in ttype.shape.dim:
            static = dim.HasField("dim_value") and dim.dim_value > 0
            dims.append(dim.dim_value if static else None)
            names.append(None if static or not dim.HasField("dim_param") else dim.dim_param or None)
        specs.append(InputSpec(name=value.name, dtype=dtype, shape=tuple(dims),
                               dim_names=tuple(names)))
    return tuple(specs)


# ---------------------------------------------------------------- validation


def _fail(message: str, *, input_name: str, batch: int, **context: Any) -> CalibrationCacheError:
    return CalibrationCacheError(message, input=input_name, batch=batch, **context)


def _convert_dtype(
    array: npt.NDArray[Any], spec: InputSpec, batch: int, allow_lossy: bool
) -> npt.NDArray[Any]:
    import numpy as np

    target = np.dtype(spec.dtype)
    if array.dtype == target:
        return array
    src_kind, dst_kind = array.dtype.kind, target.kind
    if src_kind not in "biuf" or dst_kind not in "biuf":
        raise _fail(
            f"cannot convert calibration data of dtype {array.dtype} to {target}",
            input_name=spec.name, batch=batch, expected=str(target), found=str(array.dtype),
        )
    if allow_lossy:
        with np.errstate(over="ignore", invalid="ignore"):
            return array.astype(target)
    lossless = np.can_cast(array.dtype, target, casting="safe") and not (
        # int64 -> float64 is "safe" for numpy but loses integers beyond 2**53
        src_kind in "iu" and dst_kind == "f"
    )
    if not lossless:
        lossless = _values_fit(array, target)
    if not lossless:
        raise _fail(
            f"calibration data of dtype {array.dtype} does not convert losslessly to {target} "
            "(allow lossy casts explicitly to accept it)",
            input_name=spec.name, batch=batch, expected=str(target), found=str(array.dtype),
        )
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(target)


def _values_fit(array: npt.NDArray[Any], target: np.dtype[Any]) -> bool:
    """True when every value of ``array`` survives a round trip through ``target``."""
    import numpy as np

    if array.size == 0:
        return True
    if target.kind == "b":
        return bool(np.all((array == 0) | (array == 1)))
    if target.kind in "iu":
        info = np.iinfo(target)
        if array.dtype.kind == "f" and not bool(np.all(np.equal(np.floor(array), array))):
            return False
        lo, hi = array.min(), array.max()
        return bool(lo >= info.min and hi <= info.max)
    # float target: compare the round trip; overflow to inf shows up as a mismatch
    with np.errstate(over="ignore", invalid="ignore"):
        back = array.astype(target).astype(array.dtype)
    return bool(np.array_equal(back, array))


def validate_batch(
    batch: Mapping[str, Any],
    specs: Sequence[InputSpec],
    index: int,
    config: BuildConfig | None = None,
    *,
    allow_lossy_cast: bool = False,
) -> dict[str, npt.NDArray[Any]]:
    """Check one batch against the model inputs; return it converted to the declared dtypes."""
    import numpy as np

    by_name = {s.name: s for s in specs}
    unknown = sorted(set(batch) - set(by_name))
    if unknown:
        raise _fail(
            "calibration batch has an input the model does not declare",
            input_name=unknown[0], batch=index, expected=sorted(by_name),
        )
    missing = sorted(set(by_name) - set(batch))
    if missing:
        raise _fail(
            "calibration batch is missing a model input",
            input_name=missing[0], batch=index, expected=sorted(by_name),
        )
    out: dict[str, npt.NDArray[Any]] = {}
    for spec in specs:
        raw = batch[spec.name]
        array = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
        if array.ndim != spec.rank:
            raise _fail(
                f"calibration data has rank {array.ndim}, the model expects rank {spec.rank}",
                input_name=spec.name, batch=index,
                expected=list(spec.shape), found=list(array.shape),
            )
        for axis, (declared, found) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if declared is not None and declared != found:
                raise _fail(
                    f"calibration data dim {axis} is {found}, the model declares {declared}",
                    input_name=spec.name, batch=index,
                    expected=list(spec.shape), found=list(array.shape),
                )
        profile = config.profile_for(spec.name) if config is not None else None
        if profile is not None:
            if len(profile.min_shape) != array.ndim:
                raise _fail(
                    "optimization profile rank differs from the calibration data rank",
                    input_name=spec.name, batch=index,
                    expected=profile.to_dict(), found=list(array.shape),
                )
            for axis, (lo, hi, found) in enumerate(
                zip(profile.min_shape, profile.max_shape, array.shape, strict=True)
            ):
                if not lo <= found <= hi:
                    raise _fail(
                        f"calibration data dim {axis} = {found} is outside the optimization "
                        f"profile [{lo}, {hi}]",
                        input_name=spec.name, batch=index,
                        expected=profile.to_dict(), found=list(array.shape),
                    )
        if array.dtype.kind == "f" and array.size and not bool(np.isfinite(array).all()):
            raise _fail(
                "calibration data contains NaN or Inf",
                input_name=spec.name, batch=index, dtype=str(array.dtype),
            )
        out[spec.name] = _convert_dtype(array, spec, index, allow_lossy_cast)
    return out


# ---------------------------------------------------------------- sources


def _split_stack(
    item: Any, specs: Sequence[InputSpec], config: BuildConfig | None = None
) -> Iterator[Mapping[str, Any]]:
    """Turn one source item (array or mapping, single batch or stack) into batches.

    An item whose leading dimension exceeds the optimization profile's maximum batch for
    every input is a set of samples: it is cut into batches of the profile's opt batch.
    """
    import numpy as np

    if isinstance(item, Mapping):
        mapping: Mapping[str, Any] = item
    elif isinstance(item, np.ndarray):
        if len(specs) != 1:
            raise CalibrationCacheError(
                "a bare array is only accepted for single-input models; "
                "give a mapping of input name to array",
                inputs=[s.name for s in specs],
            )
        mapping = {specs[0].name: item}
    else:
        raise CalibrationCacheError(
            f"calibration source yielded a {type(item).__name__}; "
            "expected an array or a mapping of input name to array"
        )
    by_name = {s.name: s for s in specs}
    stacked = bool(mapping) and all(
        name in by_name and np.ndim(value) == by_name[name].rank + 1
        for name, value in mapping.items()
    )
    if not stacked:
        yield from _split_samples(mapping, config)
        return
    lengths = {len(value) for value in mapping.values()}
    if len(lengths) != 1:
        raise CalibrationCacheError(
            "stacked calibration arrays have different leading lengths",
            lengths={k: len(v) for k, v in mapping.items()},
        )
    for i in range(lengths.pop()):
        yield {name: value[i] for name, value in mapping.items()}


def _split_samples(
    mapping: Mapping[str, Any], config: BuildConfig | None
) -> Iterator[Mapping[str, Any]]:
    import numpy as np

    profiles = [config.profile_for(name) for name in mapping] if config is not None else []
    if (
        not mapping or not profiles or any(p is None for p in profiles)
        or any(np.ndim(v) == 0 for v in mapping.values())
    ):
        yield mapping
        return
    leading = {len(v) for v in mapping.values()}
    if len(leading) != 1 or not all(
        p is not None and len(v) > p.max_shape[0] for p, v in zip(profiles, mapping.values(),
                                                                   strict=True)
    ):
        yield mapping
        return
    total = leading.pop()
    step = min(p.opt_shape[0] for p in profiles if p is not None)
    smallest = max(p.min_shape[0] for p in profiles if p is not None)
    for start in range(0, total, step):
        stop = min(start + step, total)
        if stop - start < smallest:
            logger.info(
                "dropping %d trailing calibration samples (below the profile's min batch)",
                stop - start,
                extra={"event": "calibration.data.tail_dropped", "samples": stop - start},
            )
            return
        yield {name: value[start:stop] for name, value in mapping.items()}


def _regular_file(path: Path) -> None:
    """Refuse what is not a regular file before numpy opens it: a FIFO named as calibration
    data would block the run forever on open(), a device would be read without end."""
    try:
        st = os.stat(path)  # symlinks followed: a link to the user's data is fine
    except OSError as exc:
        raise CalibrationCacheError(
            f"cannot read calibration file: {exc.strerror}", path=str(path)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise CalibrationCacheError("calibration file is not a regular file", path=str(path))


def _load_npz(path: Path) -> dict[str, Any]:
    import numpy as np

    _regular_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as exc:
        raise CalibrationCacheError(
            f"cannot read calibration file: {exc}", path=str(path)
        ) from exc


def _load_npy(path: Path) -> Any:
    import numpy as np

    _regular_file(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationCacheError(
            f"cannot read calibration file: {exc}", path=str(path)
        ) from exc


def _iter_path(path: Path) -> Iterator[Any]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise CalibrationCacheError(
                "calibration directory holds no .npy or .npz files", path=str(path)
            )
        for file in files:
            yield from _iter_path(file)
        return
    if path.suffix == ".npz":
        yield _load_npz(path)
    elif path.suffix == ".npy":
        yield _load_npy(path)
    else:
        raise CalibrationCacheError(
            "calibration file must be .npz, .npy, a directory of them, or file.py:function",
            path=str(path),
        )


# sys.argv is process-wide and phase 1 plans models on threads: one loader import at a time.
_ARGV_LOCK = threading.RLock()


@contextlib.contextmanager
def _neutral_argv(path: Path) -> Iterator[None]:
    """While user code runs, sys.argv is that of ``python loader.py``: a loader that parses
    arguments at import (argparse on sys.argv) must not see, or take over, our command line."""
    with _ARGV_LOCK:
        saved = sys.argv
        sys.argv = [str(path)]
        try:
            yield
        finally:
            sys.argv = saved


def _loader_error(exc: BaseException, path: Path, func_name: str) -> CalibrationCacheError:
    # SystemExit is user code ending the process (sys.exit, argparse's usage error): an error
    # of this model's calibration data, never our exit. Ctrl-C (KeyboardInterrupt) goes through.
    what = f"exited (sys.exit({exc.code!r}))" if isinstance(exc, SystemExit) else "failed"
    detail = "" if isinstance(exc, SystemExit) else f": {type(exc).__name__}: {exc}"
    return CalibrationCacheError(
        f"calibration loader {path.name}:{func_name} {what}{detail}",
        path=str(path), function=func_name,
    )


def _call_loader(spec: str, base_dir: Path | None) -> Iterable[Any]:
    file_part, _, func_name = spec.partition(":")
    func_name = func_name or "load_data"
    path = Path(file_part)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise CalibrationCacheError("calibration loader script not found", path=str(path))
    module_name = f"_trt_provision_calibration_loader_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise CalibrationCacheError("cannot import calibration loader script", path=str(path))
    module = importlib.util.module_from_spec(module_spec)
    try:
        with _neutral_argv(path):
            module_spec.loader.exec_module(module)
            func = getattr(module, func_name)
            result = func()
    except AttributeError as exc:
        raise CalibrationCacheError(
            f"calibration loader script has no function {func_name!r}", path=str(path)
        ) from exc
    except (Exception, SystemExit) as exc:  # the user's code may raise (or exit) anything
        raise _loader_error(exc, path, func_name) from exc
    if isinstance(result, Iterator):  # a generator runs the user's code as it is read
        return _guarded(result, path, func_name)
    return _as_iterable(result)


def _guarded(items: Iterator[Any], path: Path, func_name: str) -> Iterator[Any]:
    while True:
        try:
            with _neutral_argv(path):
                item = next(items)
        except StopIteration:
            return
        except (Exception, SystemExit) as exc:
            raise _loader_error(exc, path, func_name) from exc
        yield item


def _as_iterable(source: Any) -> Iterable[Any]:
    import numpy as np

    if isinstance(source, (np.ndarray, Mapping)):
        return [source]
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        return source
    raise CalibrationCacheError(
        f"unsupported calibration source of type {type(source).__name__}"
    )


class CalibrationDataset:
    """A re-iterable, validated view of a calibration source for one model.

    Iterating yields ``(index, batch)`` with every batch validated and converted; an empty
    source raises :class:`CalibrationCacheError` rather than yielding nothing.
    """

    def __init__(
        self,
        source: Any,
        specs: Sequence[InputSpec],
        config: BuildConfig | None = None,
        *,
        max_batches: int | None = None,
        allow_lossy_cast: bool = False,
        base_dir: Path | None = None,
    ) -> None:
        self._specs = tuple(specs)
        self._config = config
        self._max_batches = max_batches
        self._allow_lossy = allow_lossy_cast
        self._base_dir = base_dir
        self._source: Any = source
        self._materialised: list[Any] | None = None
        if isinstance(source, Iterator):
            # A one-shot iterator cannot be replayed; keep its items (the caller chose memory).
            self._materialised = list(source)
        self._count: int | None = None

    @property
    def specs(self) -> tuple[InputSpec, ...]:
        return self._specs

    @property
    def description(self) -> str:
        if isinstance(self._source, (str, os.PathLike)):
            return str(self._source)
        return f"<in-memory {type(self._source).__name__}>"

    def _raw_items(self) -> Iterable[Any]:
        if self._materialised is not None:
            return self._materialised
        source = self._source
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if isinstance(source, str):
            if ".py:" in source or source.endswith(".py"):
                return _call_loader(source, self._base_dir)
            path = Path(source)
            if self._base_dir is not None and not path.is_absolute():
                path = self._base_dir / path
            if not path.exists():
                raise CalibrationCacheError("calibration source not found", path=str(path))
            return _iter_path(path)
        return _as_iterable(source)

    def __iter__(self) -> Iterator[dict[str, npt.NDArray[Any]]]:
        return self._validated(self._max_batches)

    def read_all(self) -> Iterator[dict[str, npt.NDArray[Any]]]:
        """Every batch of the source, validated, ``max_batches`` ignored: the first
        ``max_batches`` are those :meth:`__iter__` yields (and the digest covers), the rest
        are evidence. The caller bounds how much of the rest it keeps."""
        return self._validated(None)

    def _validated(self, limit: int | None) -> Iterator[dict[str, npt.NDArray[Any]]]:
        import numpy as np

        count = 0
        for item in self._raw_items():
            for raw in _split_stack(item, self._specs, self._config):
                if limit is not None and count >= limit:
                    break
                empty = next((n for n, a in raw.items() if np.size(a) == 0), None)
                if empty is not None:
                    # Zero samples calibrate nothing and prove nothing: an INT8 engine from
                    # them outputs garbage, and an accuracy check over them is vacuous.
                    raise CalibrationCacheError(
                        f"calibration data has zero samples: input {empty!r} of batch {count} "
                        f"has shape {list(np.shape(raw[empty]))}",
                        source=self.description, input=empty, batch=count,
                    )
                yield validate_batch(
                    raw, self._specs, count, self._config, allow_lossy_cast=self._allow_lossy
                )
                count += 1
            if limit is not None and count >= limit:
                break
        if count == 0:
            raise CalibrationCacheError(
                "calibration dataset is empty", source=self.description
            )
        if limit == self._max_batches:
            self._count = count

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self)
        return self._count


def open_calibration_source(
    source: Any,
    model_path: Path,
    config: BuildConfig | None = None,
    *,
    max_batches: int | None = None,
    allow_lossy_cast: bool = False,
    base_dir: Path | None = None,
) -> CalibrationDataset:
    """A validated dataset for ``model_path`` (inputs read from the model)."""
    return CalibrationDataset(
        source,
        model_input_specs(model_path),
        config,
        max_batches=max_batches,
        allow_lossy_cast=allow_lossy_cast,
        base_dir=base_dir,
    )


# ---------------------------------------------------------------- digest


def _update_array(digest: Any, array: npt.NDArray[Any]) -> None:
    import numpy as np

    if array.flags.c_contiguous:
        view = array.reshape(-1).view(np.uint8).data
        for start in range(0, len(view), _DIGEST_CHUNK):
            digest.update(view[start : start + _DIGEST_CHUNK])
        return
    # Non-contiguous (a strided view): copy one leading slice at a time, never the whole.
    if array.ndim <= 1:
        digest.update(np.ascontiguousarray(array).tobytes())
        return
    for sub in array:
        _update_array(digest, sub)


def dataset_digest(batches: Iterable[Mapping[str, npt.NDArray[Any]]]) -> str:
    """Streaming sha256 over every batch in order: input names, dtypes, shapes and bytes.

    Batch order matters; the order of names inside a batch does not (they are sorted).
    Bytes are hashed in place in chunks, so a large dataset is never held twice.
    """
    import numpy as np

    digest = hashlib.sha256(_DIGEST_DOMAIN)
    count = 0
    for batch in batches:
        digest.update(b"B%d\x00" % count)
        for name in sorted(batch):
            array = np.asarray(batch[name])
            # Canonical byte order so a big-endian copy of the same values digests the same.
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            header = f"{name}\x00{array.dtype.str}\x00{','.join(map(str, array.shape))}\x00"
            digest.update(header.encode())
            _update_array(digest, array)
        count += 1
    digest.update(b"E%d\x00" % count)
    return digest.hexdigest()
