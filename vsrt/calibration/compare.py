"""Run two ONNX graphs of one stage on the same batches with ONNX Runtime CPU and compare their outputs."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.export.parity import compare_arrays, merge_parity


def _session(path: str | Path, threads: int | None = None) -> Any:
    from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

    return OrtBackend(path, intra_op_threads=threads)


def compare_graphs(
    reference: str | Path,
    candidate: str | Path,
    batches: Iterable[dict[str, np.ndarray]],
    max_batches: int | None = 4,
    threads: int | None = None,
) -> dict[str, Any]:
    """Worst-case max-abs-error and min per-sample cosine of ``candidate`` vs ``reference`` over ``batches``.

    Returns the manifest's parity record (:func:`vsrt.export.parity.merge_parity`) plus ``mean_cosine`` per
    output.
    """
    ref, cand = _session(reference, threads), _session(candidate, threads)
    cases = []
    means: dict[str, list[float]] = {}
    for feeds in islice(batches, max_batches):
        a, b = ref.run(feeds), cand.run(feeds)
        case = {}
        for name in a:
            case[name] = compare_arrays(a[name], b[name])
            means.setdefault(name, []).extend(per_sample_cosine(a[name], b[name]).tolist())
        cases.append(case)
    out = merge_parity(cases)
    for name, vals in means.items():
        out["per_output"][name]["mean_cosine"] = float(np.mean(vals))
    out["reference"] = "fp32 onnx, onnxruntime cpu"
    return out


def per_sample_cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine between corresponding samples (axis 0) of two arrays, flattened per sample; 1 where both are 0."""
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    g = np.asarray(got, np.float64).reshape(len(got), -1)
    nr, ng = np.linalg.norm(r, axis=1), np.linalg.norm(g, axis=1)
    cos = (r * g).sum(1) / np.maximum(nr * ng, 1e-300)
    return np.where((nr == 0) & (ng == 0), 1.0, cos)


def output_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """Mean over outputs and samples of ``1 - cosine``: one number for how far a variant drifts."""
    vals = [float(np.mean(1.0 - per_sample_cosine(reference[k], candidate[k]))) for k in reference]
    return float(np.mean(vals)) if vals else 0.0
