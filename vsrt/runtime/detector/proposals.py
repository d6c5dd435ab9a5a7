"""The host proposal stage: RPN maps → the fixed-size RoI list of the ``roi_head`` graph (numpy only).

Caffe's ``lib/rpn/proposal_layer.py`` (test mode) with ``bbox_transform.py`` and ``cpu_nms``, in float32 as there:

1. anchors ``(y, x, a)`` = the 12 cell anchors shifted by ``feat_stride · (x, y)`` (:mod:`.anchors`);
2. deltas ``(dx, dy, dw, dh)`` = channels ``4a + k`` of ``rpn_delta``; decode with "+1" widths:
   ``w = x2 - x1 + 1``, ``cx = x1 + 0.5 w``, ``pcx = dx·w + cx``, ``pw = exp(dw)·w``,
   box ``[pcx - 0.5 pw, pcy - 0.5 ph, pcx + 0.5 pw - 1, pcy + 0.5 ph - 1]``;
3. clip to ``[0, W-1] × [0, H-1]`` of the resized image;
4. drop boxes with ``w + 1 < min`` or ``h + 1 < min``, ``min = rpn_min_size · scale`` (float32, like ``im_info``);
5. order by foreground probability (descending, ties by higher index: :func:`.nms.descending_order`), keep the
   first ``pre_nms_top_n``;
6. "+1" NMS at ``rpn_nms_thresh`` on that list (which re-sorts it, exactly as the original calls ``nms`` on the
   sorted array), keep the first ``num_rois``;
7. pad to ``num_rois`` rows with zero boxes and return the number of valid rows.
"""

from __future__ import annotations

import numpy as np

from vsrt.detector_config import DetectorConfig
from vsrt.errors import InputError
from vsrt.runtime.detector.anchors import shifted_anchors
from vsrt.runtime.detector.nms import descending_order, nms


def decode_boxes(anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """``bbox_transform_inv`` in float32: anchors ``[N, 4]`` + deltas ``[N, 4]`` → boxes ``[N, 4]``."""
    boxes = np.asarray(anchors).astype(np.float32)
    d = np.asarray(deltas, np.float32)
    widths = boxes[:, 2] - boxes[:, 0] + np.float32(1.0)
    heights = boxes[:, 3] - boxes[:, 1] + np.float32(1.0)
    ctr_x = boxes[:, 0] + np.float32(0.5) * widths
    ctr_y = boxes[:, 1] + np.float32(0.5) * heights
    pcx = d[:, 0] * widths + ctr_x
    pcy = d[:, 1] * heights + ctr_y
    pw = np.exp(d[:, 2]) * widths
    ph = np.exp(d[:, 3]) * heights
    half = np.float32(0.5)
    one = np.float32(1.0)
    return np.stack([pcx - half * pw, pcy - half * ph, pcx + half * pw - one, pcy + half * ph - one], axis=1)


def clip_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Clip float32 boxes to ``[0, W-1] × [0, H-1]``."""
    h, w = np.float32(image_hw[0]), np.float32(image_hw[1])
    out = np.empty_like(boxes)
    zero = np.float32(0)
    out[:, 0] = np.maximum(np.minimum(boxes[:, 0], w - 1), zero)
    out[:, 1] = np.maximum(np.minimum(boxes[:, 1], h - 1), zero)
    out[:, 2] = np.maximum(np.minimum(boxes[:, 2], w - 1), zero)
    out[:, 3] = np.maximum(np.minimum(boxes[:, 3], h - 1), zero)
    return out


def _check_maps(rpn_prob: np.ndarray, rpn_delta: np.ndarray, cfg: DetectorConfig) -> tuple[int, int]:
    a = cfg.num_anchors
    if rpn_prob.ndim != 4 or rpn_prob.shape[:2] != (1, a):
        raise InputError(f"rpn_prob must be [1, {a}, h, w], got {list(rpn_prob.shape)}")
    h, w = rpn_prob.shape[2:]
    if rpn_delta.shape != (1, 4 * a, h, w):
        raise InputError(f"rpn_delta must be [1, {4 * a}, {h}, {w}], got {list(rpn_delta.shape)}")
    return int(h), int(w)


def propose(
    rpn_prob: np.ndarray,
    rpn_delta: np.ndarray,
    image_hw: tuple[int, int],
    scale: float,
    cfg: DetectorConfig,
) -> tuple[np.ndarray, int]:
    """RPN outputs → ``(rois [num_rois, 4] float32, n_valid)``: the first ``n_valid`` rows are the proposals (x1,
    y1, x2, y2 in resized-image pixels) in NMS keep order, the rest zero padding."""
    prob = np.asarray(rpn_prob, np.float32)
    delta = np.asarray(rpn_delta, np.float32)
    fh, fw = _check_maps(prob, delta, cfg)
    a = cfg.num_anchors
    anchors = shifted_anchors(cfg, fh, fw)
    deltas = delta[0].reshape(a, 4, fh, fw).transpose(2, 3, 0, 1).reshape(-1, 4)
    scores = prob[0].transpose(1, 2, 0).reshape(-1)
    boxes = clip_boxes(decode_boxes(anchors, deltas), image_hw)
    min_size = np.float32(cfg.rpn_min_size) * np.float32(scale)
    ws = boxes[:, 2] - boxes[:, 0] + np.float32(1)
    hs = boxes[:, 3] - boxes[:, 1] + np.float32(1)
    keep = np.where((ws >= min_size) & (hs >= min_size))[0]
    boxes, scores = boxes[keep], scores[keep]
    order = descending_order(scores)
    if cfg.pre_nms_top_n > 0:
        order = order[: cfg.pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]
    kept = nms(boxes, scores, cfg.rpn_nms_thresh, max_keep=cfg.num_rois) if len(boxes) else np.zeros(0, np.int64)
    rois = np.zeros((cfg.num_rois, 4), np.float32)
    n_valid = int(len(kept))
    rois[:n_valid] = boxes[kept]
    return rois, n_valid
