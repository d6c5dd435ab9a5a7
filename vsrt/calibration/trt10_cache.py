"""TensorRT 10's implicit INT8 path: a calibration cache written from our statistics, and an entropy calibrator.

JetPack 6 ships TensorRT 10.3, where ``BuilderFlag.INT8`` with an ``IInt8Calibrator`` still works (removed in
TensorRT 11). A calibrator that finds a cache never asks for data, so the cache written here from the *same*
statistics as the Q/DQ graph (:class:`~vsrt.calibration.int8.CalibrationStats`) lets a Jetson build an implicit
INT8 engine from the FP32 ONNX without running calibration on the device.

Cache format (text): a header ``TRT-<version code>-<algorithm>`` then one line per tensor,
``<tensor name>: <scale as big-endian IEEE-754 float32 in hex>`` with ``scale = amax / 127``. Tensor names are the
ONNX tensor names (TensorRT's ONNX parser names network tensors after them).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.calibration.int8 import CalibrationStats
from vsrt.calibration.sources import CalibrationSource
from vsrt.errors import InputError
from vsrt.io import atomic_write_bytes, atomic_write_text

#: the algorithm name TensorRT's IInt8EntropyCalibrator2 writes into its cache header
ENTROPY2 = "EntropyCalibration2"
#: TensorRT version written into caches when none is given (JetPack 6.1/6.2)
DEFAULT_TRT_VERSION = "10.3.0"


def trt_version_code(version: str) -> int:
    """TensorRT's numeric version as used in cache headers: 10.3.0 → 100300 (≥ 10), 8.6.1 → 8601 (< 10)."""
    try:
        parts = [int(p) for p in version.split(".")[:3]]
    except ValueError:
        raise InputError(f"not a TensorRT version: '{version}'") from None
    while len(parts) < 3:
        parts.append(0)
    major, minor, patch = parts
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def encode_scale(scale: float) -> str:
    """A scale as TensorRT writes it in a cache: big-endian float32 bits in lowercase hex."""
    return struct.pack(">f", float(scale)).hex()


def decode_scale(text: str) -> float:
    """Inverse of :func:`encode_scale`."""
    return struct.unpack(">f", bytes.fromhex(text.strip()))[0]


def cache_text(stats: CalibrationStats, trt_version: str = DEFAULT_TRT_VERSION, algorithm: str = ENTROPY2) -> str:
    """The calibration cache for ``stats`` as text (one scale per calibrated tensor)."""
    lines = [f"TRT-{trt_version_code(trt_version)}-{algorithm}"]
    for name in sorted(stats.ranges):
        amax = stats.amax(name)
        if not np.isfinite(amax):
            raise InputError(f"tensor '{name}' has a non-finite calibration range")
        scale = max(amax, 1e-12) / 127.0
        lines.append(f"{name}: {encode_scale(scale)}")
    return "\n".join(lines) + "\n"


def write_calibration_cache(
    path: str | Path, stats: CalibrationStats, trt_version: str = DEFAULT_TRT_VERSION, algorithm: str = ENTROPY2
) -> Path:
    """Write the TensorRT 10 calibration cache for ``stats`` (atomically); returns the path."""
    atomic_write_text(path, cache_text(stats, trt_version, algorithm))
    return Path(path)


def read_calibration_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """``(header, {tensor: scale})`` of a TensorRT calibration cache."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"calibration cache not found: {p}")
    lines = p.read_text(encoding="ascii").splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise InputError(f"{p} is not a TensorRT calibration cache (no 'TRT-…' header)")
    scales = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, _, value = line.rpartition(":")
        if not name:
            raise InputError(f"{p}: malformed line '{line}'")
        scales[name.strip()] = decode_scale(value)
    return lines[0], scales


def make_entropy_calibrator(
    trt: Any,
    source: CalibrationSource | None,
    cache_path: str | Path,
    cuda: Any | None = None,
) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` (TensorRT ≤ 10) fed by ``source``, reading/writing ``cache_path``.

    If ``cache_path`` exists TensorRT takes the scales from it and never asks for a batch (``source`` may then be
    ``None``). Otherwise each
    ``get_batch`` copies the next batch to device buffers through ``cuda`` (the runtime's CUDA helper,
    :func:`vsrt.runtime.backends.tensorrt_backend.cuda_api`). ``source``'s batches must all have the shape of the
    calibration profile (TensorRT calibrates at one shape).
    """
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise InputError(
            f"this TensorRT ({getattr(trt, '__version__', '?')}) has no IInt8EntropyCalibrator2: implicit INT8 "
            "calibration was removed in TensorRT 11; build from the Q/DQ ONNX (`vsrt calibrate`) instead"
        )
    cache_path = Path(cache_path)

    class _EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._batches = source.batches() if source is not None else iter(())
            self._buffers: dict[str, Any] = {}

        def get_batch_size(self) -> int:
            return int(source.batch_size) if source is not None else 1

        def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
            feeds = next(self._batches, None)
            if feeds is None:
                return None
            if cuda is None:
                raise InputError("calibrating without a cache needs a CUDA device (cuda-python or pycuda)")
            ptrs = []
            for name in names:
                if name not in feeds:
                    raise InputError(f"calibration batch has no input '{name}' (has {sorted(feeds)})")
                a = np.ascontiguousarray(feeds[name])
                buf = self._buffers.get(name)
                if buf is None or buf.nbytes < a.nbytes:
                    buf = self._buffers[name] = cuda.malloc(a.nbytes)
                cuda.h2d(buf, a)
                ptrs.append(int(buf.ptr))
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return _EntropyCalibrator()
