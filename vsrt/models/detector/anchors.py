"""The 12 Caffe RPN anchors (``lib/rpn/generate_anchors.py`` of py-faster-rcnn), recomputed in numpy.

Base box ``[0, 0, 15, 15]`` (centre 7.5); for each ratio (ratio-major order) ``w = round(sqrt(256 / r))``,
``h = round(w · r)`` (numpy's half-to-even rounding, as the original), then each scale multiplies ``w`` and ``h``.
Rows are ``(x1, y1, x2, y2)`` with the "+1" convention (``x2 − x1 + 1 = w``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def generate_anchors(
    base_size: int = 16, ratios: Sequence[float] = (0.5, 1.0, 2.0), scales: Sequence[float] = (4, 8, 16, 32)
) -> np.ndarray:
    """``[len(ratios)·len(scales), 4]`` float32 anchors around the first cell, ratio-major."""
    ctr = 0.5 * (base_size - 1)
    size = float(base_size * base_size)
    rows = []
    for r in ratios:
        w = np.round(np.sqrt(size / r))
        h = np.round(w * r)
        for s in scales:
            ws, hs = w * s, h * s
            rows.append([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)])
    return np.asarray(rows, dtype=np.float32)


def config_anchors(cfg) -> np.ndarray:  # noqa: ANN001 - DetectorConfig
    """The anchors a :class:`~vsrt.detector_config.DetectorConfig` describes."""
    return generate_anchors(cfg.feat_stride, cfg.anchor_ratios, cfg.anchor_scales)
