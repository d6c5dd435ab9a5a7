"""The 12 Caffe anchors of the bottom-up-attention RPN and their placement on the feature map (numpy only).

Reproduces ``lib/rpn/generate_anchors.py`` of py-faster-rcnn / bottom-up-attention: a ``feat_stride``-pixel base
box ``[0, 0, s-1, s-1]`` (centre 7.5 for s = 16), one box per aspect ratio with the *same area* (widths
``round(sqrt(area / ratio))``, heights ``round(width * ratio)``, numpy's half-to-even rounding), then each of those
scaled by every scale. Order is **ratio-major** (ratio 0.5 × scales 4, 8, 16, 32, then ratio 1, then ratio 2);
coordinates use the legacy "+1" convention (``width = x2 - x1 + 1``). For the defaults the widths are
``[92, 184, 368, 736, 64, 128, 256, 512, 44, 88, 176, 352]`` and the heights
``[48, 96, 192, 384, 64, 128, 256, 512, 88, 176, 352, 704]``.
"""

from __future__ import annotations

import numpy as np

from vsrt.detector_config import DetectorConfig


def _centred(ws: np.ndarray, hs: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Boxes ``[x1, y1, x2, y2]`` of widths ``ws`` / heights ``hs`` centred at (cx, cy), "+1" convention."""
    return np.stack([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)], axis=1)


def caffe_anchors(cfg: DetectorConfig | None = None) -> np.ndarray:
    """The cell anchors ``[A, 4]`` (float64, x1 y1 x2 y2 relative to the cell's top-left pixel), ratio-major."""
    cfg = cfg or DetectorConfig()
    base = float(cfg.feat_stride)
    cx = cy = 0.5 * (base - 1)
    area = base * base
    ratios = np.asarray(cfg.anchor_ratios, np.float64)
    scales = np.asarray(cfg.anchor_scales, np.float64)
    widths = np.round(np.sqrt(area / ratios))
    heights = np.round(widths * ratios)
    rows = [_centred(w * scales, h * scales, cx, cy) for w, h in zip(widths, heights)]
    return np.concatenate(rows, axis=0)


def shifted_anchors(cfg: DetectorConfig, feat_h: int, feat_w: int) -> np.ndarray:
    """Every anchor of a ``feat_h × feat_w`` map, ``[feat_h·feat_w·A, 4]`` float64 in (y, x, a) order.

    Anchor ``a`` of cell (y, x) is the cell anchor shifted by ``feat_stride · (x, y)``, the order of Caffe's
    ``proposal_layer.py`` (and of the ``rpn_prob`` / ``rpn_delta`` channels read as ``[h, w, A]``).
    """
    cell = caffe_anchors(cfg)
    sx = np.arange(feat_w, dtype=np.float64) * cfg.feat_stride
    sy = np.arange(feat_h, dtype=np.float64) * cfg.feat_stride
    gx, gy = np.meshgrid(sx, sy)
    shifts = np.stack([gx.ravel(), gy.ravel(), gx.ravel(), gy.ravel()], axis=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)
