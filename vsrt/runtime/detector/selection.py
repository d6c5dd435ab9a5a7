"""Host box selection of generate_tsv, computed with an exact lazy algorithm instead of 1600 NMS calls.

The original (``peteanderson80/bottom-up-attention:tools/generate_tsv.py:get_detections_from_im``, reproduced by
``MILVLG/bottom-up-attention.pytorch:utils/extract_utils.py:save_roi_features``)::

    cls_boxes = rois / im_scale                      # the *proposal* boxes (not the regressed ones), float32
    max_conf = zeros(R)
    for c in 1 .. C-1:                                # every object class, background 0 skipped
        keep = nms(hstack(cls_boxes, cls_prob[:, c]), NMS=0.3)     # "+1" cpu_nms, in original-image pixels
        max_conf[keep] = where(cls_prob[keep, c] > max_conf[keep], cls_prob[keep, c], max_conf[keep])
    keep_boxes = where(max_conf >= conf_thresh)
    if len(keep_boxes) < MIN_BOXES:   keep_boxes = argsort(max_conf)[::-1][:MIN_BOXES]
    elif len(keep_boxes) > MAX_BOXES: keep_boxes = argsort(max_conf)[::-1][:MAX_BOXES]

**Ordering rule**: the result is in descending ``max_conf`` order when fewer than ``min_boxes`` or more than
``max_boxes`` boxes pass the threshold, and in **ascending proposal index** (``np.where``) when the count is within
``[min_boxes, max_boxes]`` — so with 36/36 the boxes are score-ordered unless exactly 36 pass. Ties in the argsorts
are broken by higher index first (:func:`.nms.descending_order`; the original's unstable sort leaves them
unspecified). Some releases of generate_tsv use other defaults (0.4 / 36 / 36); they are all ``cfg`` fields.

**Lazy algorithm** (same result, exactly): the proposal boxes are class-agnostic, so one float32 "+1" IoU matrix
serves every class. Visit all (box, class) pairs by descending score (ties: higher box index first, the order each
per-class NMS visits them in) keeping, per class, the set of boxes suppressed by its kept boxes: a pair is kept iff
its box is not suppressed in its class — which is each class's greedy NMS, interleaved. The first kept pair of a
box is its largest kept score, i.e. its ``max_conf``. Stop as soon as the next score is below ``conf_thresh`` and
below the ``min_boxes``-th ``max_conf`` found so far: every box that passes the threshold is then known, and so are
the ``min_boxes`` largest values with their ties, which is all the rule above reads. Typically only a few hundred
pairs are visited instead of 1600 NMS runs over all proposals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsrt.detector_config import DetectorConfig
from vsrt.errors import InputError
from vsrt.runtime.detector.nms import descending_order, iou_matrix


@dataclass
class Selection:
    """The boxes generate_tsv keeps: ``keep`` (proposal indices, in its order), their ``max_conf`` (the selection
    confidence), the proposal ``boxes`` in original-image pixels (all valid rows), and ``visited`` pairs."""

    keep: np.ndarray
    max_conf: np.ndarray
    boxes: np.ndarray
    visited: int


def original_boxes(rois: np.ndarray, n_valid: int, scale: float) -> np.ndarray:
    """Valid proposal rows in original-image pixels: ``rois / im_scale`` in float32, as generate_tsv divides."""
    return np.asarray(rois, np.float32)[:n_valid] / np.float32(scale)


def apply_box_rule(max_conf: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """generate_tsv's threshold / MIN / MAX rule on a complete ``max_conf`` vector (see the module docstring)."""
    keep = np.where(max_conf >= cfg.conf_thresh)[0]
    if len(keep) < cfg.min_boxes:
        keep = descending_order(max_conf)[: cfg.min_boxes]
    elif len(keep) > cfg.max_boxes:
        keep = descending_order(max_conf)[: cfg.max_boxes]
    return np.asarray(keep, np.int64)


def select(rois: np.ndarray, cls_prob: np.ndarray, n_valid: int, scale: float, cfg: DetectorConfig) -> Selection:
    """The full selection (keep indices, their max_conf, original-image boxes); see :func:`select_boxes`."""
    cls_prob = np.asarray(cls_prob, np.float32)
    if cls_prob.ndim != 2 or cls_prob.shape[0] < n_valid or cls_prob.shape[1] < 2:
        raise InputError(f"cls_prob must be [R >= {n_valid}, classes >= 2], got {list(cls_prob.shape)}")
    n = int(n_valid)
    boxes = original_boxes(rois, n, scale)
    max_conf = np.zeros(n, np.float64)
    if n == 0:
        return Selection(np.zeros(0, np.int64), max_conf, boxes, 0)
    scores = cls_prob[:n, 1:]
    nc = scores.shape[1]
    over = iou_matrix(boxes).astype(np.float64) >= np.float64(cfg.nms_thresh)
    suppressed = np.zeros((nc, n), bool)
    is_set = np.zeros(n, bool)
    n_set = 0
    v_min = np.inf  # the min_boxes-th max_conf found (values are found in descending order)
    m = cfg.min_boxes
    flat = scores.ravel()  # pair p = (box p // nc, class 1 + p % nc)
    conf = np.float64(cfg.conf_thresh)
    # Pairs are visited in chunks, each a contiguous run of the global order (descending score, ties by higher
    # pair index, i.e. higher box first): first every pair at/above the threshold, then the largest ``chunk`` of
    # the rest (all pairs equal to the chunk's smallest value included), and so on; the order is never sorted
    # beyond what is visited.
    pool = np.arange(flat.size)
    chunk = max(256, 8 * m)
    visited = 0
    first = True
    while pool.size:
        vals = flat[pool]
        if first:
            take_mask = vals >= np.float32(cfg.conf_thresh)
        else:
            k = min(chunk, pool.size)
            take_mask = vals >= np.partition(vals, pool.size - k)[pool.size - k]
            chunk *= 4
        take, pool = pool[take_mask], pool[~take_mask]
        done = False
        for p in take[descending_order(flat[take])].tolist():
            s = float(flat[p])
            if s < conf and n_set >= m and s < v_min:
                done = True
                break
            visited += 1
            b, c = divmod(p, nc)
            if suppressed[c, b]:
                continue
            suppressed[c] |= over[b]
            if not is_set[b]:
                is_set[b] = True
                max_conf[b] = s
                n_set += 1
                if n_set == m:
                    v_min = s
        if done or (first and n_set >= m):  # after the first chunk: all the rest is below conf and the m-th value
            break
        first = False
    return Selection(apply_box_rule(max_conf, cfg), max_conf, boxes, visited)


def select_boxes(rois: np.ndarray, cls_prob: np.ndarray, n_valid: int, scale: float, cfg: DetectorConfig) -> np.ndarray:
    """Indices (into the valid proposal rows, int64, generate_tsv order) of the boxes generate_tsv keeps.

    ``rois`` are the ``roi_head`` inputs (resized-image pixels, ``n_valid`` valid rows), ``cls_prob`` its class
    probabilities (column 0 = background), ``scale`` the preprocessing resize factor.
    """
    return select(rois, cls_prob, n_valid, scale, cfg).keep


def object_labels(cls_prob: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, scores)`` of the most probable object class of each kept box, background excluded; ids index the
    model's class axis (1 .. C-1, so ``cls_prob[k, id]`` is the score; MILVLG's 0-based ``objects_id`` = id - 1)."""
    p = np.asarray(cls_prob, np.float32)[keep, 1:]
    ids = np.argmax(p, axis=1) if len(keep) else np.zeros(0, np.int64)
    return (ids + 1).astype(np.int64), p[np.arange(len(keep)), ids].astype(np.float32)


def attribute_labels(attr_prob: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, scores)`` of the most probable attribute of each kept box, "no attribute" (0) excluded; ids index the
    attribute axis (1 .. num_attributes-1)."""
    return object_labels(attr_prob, keep)
