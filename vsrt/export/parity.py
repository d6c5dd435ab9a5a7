"""Numerical comparison of two sets of outputs (torch reference vs ONNX Runtime, FP32 vs FP16, …). numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np


def compare_arrays(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max absolute error, and the minimum over samples (axis 0) of the cosine between flattened samples.

    Samples that are all-zero in both arrays count as cosine 1.
    """
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {got.shape}")
    if ref.size == 0:
        return {"max_abs_err": 0.0, "min_cosine": 1.0}
    err = float(np.max(np.abs(ref - got)))
    r = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    g = got.reshape(got.shape[0], -1) if got.ndim > 1 else got.reshape(1, -1)
    nr = np.linalg.norm(r, axis=1)
    ng = np.linalg.norm(g, axis=1)
    both_zero = (nr == 0) & (ng == 0)
    cos = np.where(both_zero, 1.0, (r * g).sum(1) / np.maximum(nr * ng, 1e-300))
    return {"max_abs_err": err, "min_cosine": float(cos.min())}


def merge_parity(results: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Combine per-case, per-output comparisons into the manifest's parity record (worst case over cases)."""
    per_output: dict[str, dict[str, float]] = {}
    for case in results:
        for name, r in case.items():
            cur = per_output.setdefault(name, {"max_abs_err": 0.0, "min_cosine": 1.0})
            cur["max_abs_err"] = max(cur["max_abs_err"], r["max_abs_err"])
            cur["min_cosine"] = min(cur["min_cosine"], r["min_cosine"])
    return {
        "max_abs_err": max((r["max_abs_err"] for r in per_output.values()), default=0.0),
        "min_cosine": min((r["min_cosine"] for r in per_output.values()), default=1.0),
        "per_output": per_output,
        "cases": len(results),
    }
