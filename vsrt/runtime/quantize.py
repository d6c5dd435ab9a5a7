"""Storage precisions of gallery embeddings: FP32, FP16 and INT8 (symmetric scalar quantisation). numpy only.

Gallery embeddings are L2-normalised, so every component lies in ``[-1, 1]`` and a score is an inner product.

* ``fp32`` — exact, 4 bytes per component.
* ``fp16`` — IEEE half precision, 2 bytes per component; relative rounding error ≤ 2⁻¹¹ per component, so a
  score changes by at most about ``5e-4`` (``|Δs| ≤ Σ|q_i|·|x_i|·2⁻¹¹ ≤ 2⁻¹¹`` for unit vectors). Rankings change
  only between candidates whose scores are closer than that.
* ``int8`` — one byte per component plus one float32 scale **per vector**: ``scale = max|x| / 127``,
  ``code = round(x / scale)`` in ``[-127, 127]``; a score is ``scale · (code · q)``. The per-component error is at
  most ``scale / 2``, so for a unit query ``|Δs| ≤ scale/2 · ‖q‖₁`` in the worst case and about
  ``scale/2 · sqrt(D/3) · ‖q‖₂/sqrt(D)`` typically (rounding errors are independent). A per-vector scale needs no
  calibration data and adapts to every item, which matters because the gallery grows append-only (a per-dimension
  scale fixed by the first items would clip later ones).

:func:`recall_cost` measures what a storage precision costs on real embeddings: the overlap of its top-k with
the exact FP32 top-k (recall@k against exact search) and the largest score error. ``benchmarks/search.py`` and
``tests/test_gallery_quantize.py`` report it; ``vsrt index`` prints it for the gallery it writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsrt.errors import InputError

#: storage precisions a gallery can use
STORAGE_DTYPES = ("fp32", "fp16", "int8")
_NUMPY = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16), "int8": np.dtype(np.int8)}
INT8_MAX = 127


def check_storage(storage: str) -> str:
    """``storage`` if it is a known storage precision, else a clear :class:`InputError`."""
    if storage not in STORAGE_DTYPES:
        raise InputError(f"unknown gallery storage '{storage}' (choose from {', '.join(STORAGE_DTYPES)})")
    return storage


def numpy_dtype(storage: str) -> np.dtype:
    """The numpy dtype that holds codes of ``storage``."""
    return _NUMPY[check_storage(storage)]


def storage_of(dtype: np.dtype | type) -> str:
    """The storage name of a numpy dtype (inverse of :func:`numpy_dtype`)."""
    dt = np.dtype(dtype)
    for name, d in _NUMPY.items():
        if d == dt:
            return name
    raise InputError(f"no gallery storage holds dtype {dt}")


def bytes_per_vector(storage: str, dim: int) -> int:
    """Bytes one stored vector takes (INT8 includes its float32 scale)."""
    return numpy_dtype(storage).itemsize * dim + (4 if storage == "int8" else 0)


def quantize(x: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 ``[N, D]`` → ``(codes [N, D] in the storage dtype, scales [N] float32 or None)``.

    Only ``int8`` has scales. A zero vector gets scale 0 (it scores 0 against everything).
    """
    storage = check_storage(storage)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"embeddings to store must have shape [N, D], got {list(x.shape)}")
    if storage == "fp32":
        return np.ascontiguousarray(x), None
    if storage == "fp16":
        return x.astype(np.float16), None
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x), np.float32)
    scales = (amax / INT8_MAX).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scales


def dequantize(codes: np.ndarray, scales: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Stored codes → float32 ``[N, D]`` (into ``out`` when given). ``scales`` is required for int8 codes."""
    codes = np.asarray(codes)
    if out is None:
        out = np.empty(codes.shape, np.float32)
    np.copyto(out, codes, casting="unsafe")
    if codes.dtype == np.int8:
        if scales is None:
            raise InputError("int8 codes need their per-vector scales to be dequantised")
        out *= np.asarray(scales, np.float32)[:, None]
    return out


@dataclass
class RecallCost:
    """What a storage precision costs against exact FP32 search on the same embeddings."""

    storage: str
    k: int
    recall_at_k: float
    recall_at_1: float
    max_score_error: float
    mean_score_error: float
    queries: int
    items: int

    def to_json(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def recall_cost(items: np.ndarray, queries: np.ndarray, storage: str, k: int = 10) -> RecallCost:
    """Recall@k (overlap of the top-k with the exact FP32 top-k, averaged over queries), recall@1 and score
    errors of ``storage`` on ``items [N, D]`` searched with ``queries [M, D]`` (both float32)."""
    items = np.asarray(items, np.float32)
    queries = np.asarray(queries, np.float32)
    if items.ndim != 2 or queries.ndim != 2 or items.shape[1] != queries.shape[1]:
        raise InputError(f"items [N, D] and queries [M, D] must share D, got {items.shape} and {queries.shape}")
    if len(items) == 0 or len(queries) == 0:
        raise InputError("recall_cost needs at least one item and one query")
    k = max(1, min(k, len(items)))
    exact = queries @ items.T
    codes, scales = quantize(items, storage)
    approx = queries @ dequantize(codes, scales).T
    top_e = np.argpartition(-exact, k - 1, axis=1)[:, :k]
    top_a = np.argpartition(-approx, k - 1, axis=1)[:, :k]
    overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(top_e, top_a)])
    r1 = float(np.mean(exact.argmax(axis=1) == approx.argmax(axis=1)))
    err = np.abs(exact - approx)
    return RecallCost(storage, k, float(overlap), r1, float(err.max()), float(err.mean()), len(queries), len(items))
