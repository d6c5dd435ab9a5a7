"""FP16 / INT8 gallery storage: error bounds and the recall they cost against exact FP32 search, measured."""

from __future__ import annotations

import numpy as np
import pytest
from _retrieval_helpers import unit

from vsrt.errors import InputError
from vsrt.runtime.quantize import bytes_per_vector, dequantize, quantize, recall_cost


def _data(n: int = 4000, d: int = 256, m: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gallery items and queries that are noisy views of some items (a realistic top-k with close competitors)."""
    rng = np.random.default_rng(seed)
    items = unit(rng, n, d)
    q = items[rng.choice(n, m, replace=False)] + 0.08 * rng.standard_normal((m, d)).astype(np.float32)
    return items, q / np.linalg.norm(q, axis=1, keepdims=True)


def test_roundtrip_error_bounds() -> None:
    x = unit(np.random.default_rng(1), 500, 512)
    codes, scales = quantize(x, "fp16")
    assert codes.dtype == np.float16 and scales is None
    assert np.abs(dequantize(codes) - x).max() <= 2.0**-11 * np.abs(x).max() + 1e-7
    codes, scales = quantize(x, "int8")
    assert codes.dtype == np.int8 and scales.shape == (500,) and np.abs(codes).max() == 127
    err = np.abs(dequantize(codes, scales) - x)
    assert (err.max(axis=1) <= scales / 2 + 1e-7).all()  # at most half a step per component
    zero = np.zeros((1, 8), np.float32)
    assert np.array_equal(dequantize(*quantize(zero, "int8")), zero)
    assert bytes_per_vector("int8", 2048) == 2052 and bytes_per_vector("fp16", 2048) == 4096
    with pytest.raises(InputError, match="int8 codes need"):
        dequantize(codes)


@pytest.mark.parametrize("storage,min_recall,max_err", [("fp32", 1.0, 0.0), ("fp16", 0.99, 5e-4), ("int8", 0.95, 1e-2)])
def test_recall_cost_is_measured(storage: str, min_recall: float, max_err: float) -> None:
    items, q = _data()
    rc = recall_cost(items, q, storage, k=10)
    assert rc.recall_at_k >= min_recall and rc.recall_at_1 >= min_recall
    assert rc.max_score_error <= max_err
    if storage == "fp32":
        assert rc.recall_at_k == 1.0 and rc.max_score_error == 0.0
    else:
        assert rc.max_score_error > 0.0  # a real, non-zero cost


def test_int8_costs_more_than_fp16() -> None:
    items, q = _data(n=3000, d=128, seed=3)
    f16, i8 = recall_cost(items, q, "fp16"), recall_cost(items, q, "int8")
    assert i8.mean_score_error > 10 * f16.mean_score_error
    assert i8.recall_at_k <= f16.recall_at_k
