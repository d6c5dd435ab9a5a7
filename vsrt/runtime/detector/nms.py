"""Greedy non-maximum suppression with the legacy "+1" box convention of Caffe's ``cpu_nms`` (numpy only).

Semantics of ``lib/nms/cpu_nms.pyx`` (bottom-up-attention / py-faster-rcnn), bit for bit:

* areas and overlaps in **float32**: ``area = (x2 - x1 + 1) * (y2 - y1 + 1)``, intersection sides
  ``max(0, min(x2) - max(x1) + 1)``, ``ovr = inter / (area_i + area_j - inter)``;
* a box is suppressed when ``ovr >= thresh``, the threshold compared in float64 (as the C code compares a float
  with a double; comparing with ``float32(thresh)`` would differ when ``ovr`` equals it);
* candidates are visited by descending score, ``scores.argsort()[::-1]``. numpy's default sort is not stable, so
  the order among *exactly equal* scores is unspecified there; here it is fixed to the reverse of a stable
  ascending sort — among ties the **higher index first** — which is what the original gives whenever its sort
  happens to be stable (e.g. fewer than 17 candidates).
"""

from __future__ import annotations

import numpy as np


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by descending index (``argsort(kind="stable")[::-1]``), int64."""
    return np.argsort(np.asarray(scores), kind="stable")[::-1].astype(np.int64)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """ "+1" areas of float32 boxes ``[N, 4]`` (x1, y1, x2, y2), float32."""
    b = np.asarray(boxes, np.float32)
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def pairwise_overlaps(rows: np.ndarray, row_areas: np.ndarray, cols: np.ndarray, col_areas: np.ndarray) -> np.ndarray:
    """Float32 "+1" IoU ``[len(rows), len(cols)]``, each entry computed exactly as ``cpu_nms`` does for an earlier
    (kept) box ``i`` = row and a later box ``j`` = column: ``inter / (area_i + area_j - inter)``."""
    xx1 = np.maximum(rows[:, None, 0], cols[None, :, 0])
    yy1 = np.maximum(rows[:, None, 1], cols[None, :, 1])
    xx2 = np.minimum(rows[:, None, 2], cols[None, :, 2])
    yy2 = np.minimum(rows[:, None, 3], cols[None, :, 3])
    w = np.maximum(np.float32(0), xx2 - xx1 + np.float32(1))
    h = np.maximum(np.float32(0), yy2 - yy1 + np.float32(1))
    inter = w * h
    return inter / (row_areas[:, None] + col_areas[None, :] - inter)


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """All pairwise float32 "+1" IoUs ``[N, N]`` (symmetric; the same numbers ``cpu_nms`` compares)."""
    b = np.ascontiguousarray(boxes, np.float32)
    areas = box_areas(b)
    return pairwise_overlaps(b, areas, b, areas)


def float32_threshold(thresh: float) -> np.float32:
    """The smallest float32 ``t`` with ``t >= thresh`` (as a double), so that for float32 ``ovr`` the comparison
    ``ovr >= t`` equals the C code's ``(double) ovr >= thresh`` without casting every overlap to float64."""
    t = np.float32(thresh)
    if float(t) < float(thresh):
        t = np.nextafter(t, np.float32(np.inf))
    return np.float32(t)


def overlaps_with(boxes: np.ndarray, areas: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """Float32 "+1" IoU of box ``i`` with boxes ``others`` (indices), exactly as ``cpu_nms`` computes it."""
    return pairwise_overlaps(boxes[i : i + 1], areas[i : i + 1], boxes[others], areas[others])[0]


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, max_keep: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy "+1" NMS, in visiting order (descending score), int64.

    ``boxes`` ``[N, 4]`` are converted to float32 like Caffe's ``dets``; ``max_keep`` stops after that many keeps
    (the result equals the first ``max_keep`` of a full run, since greedy decisions depend only on earlier boxes).
    """
    b = np.ascontiguousarray(boxes, np.float32)
    s = np.asarray(scores, np.float32)
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise ValueError(f"nms needs boxes [N, 4] and scores [N], got {b.shape} and {s.shape}")
    order = descending_order(s)
    b = b[order]  # candidates in visiting order: every step works on a contiguous tail
    areas = box_areas(b)
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    thr = float32_threshold(thresh)
    one, zero = np.float32(1), np.float32(0)
    keep: list[int] = []
    limit = len(order) if max_keep is None else int(max_keep)
    rest = np.arange(len(order))
    while rest.size and len(keep) < limit:
        i = int(rest[0])
        keep.append(i)
        rest = rest[1:]
        if not rest.size:
            break
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        rest = rest[inter / (areas[i] + areas[rest] - inter) < thr]
    return order[np.asarray(keep, np.int64)].astype(np.int64)
