"""Caffe's RoI max pooling (``roi_pooling_layer.cpp``), exactly, three ways.

* :func:`roi_pool_sparse` — standard ops only (Pad/Slice/Max, integer arithmetic, Gather, Max): a 2-D sparse table
  of window maxima, so every bin is the max of four overlapping power-of-two windows. TensorRT parses it (it has no
  ``MaxRoiPool``); bit-identical to Caffe because max is exact and every integer is computed as Caffe does.
* :func:`roi_pool_maxroipool` — the same values, exported as one ONNX ``MaxRoiPool`` node (ONNX Runtime CPU's
  fast kernel, which follows the Caffe loop).
* :func:`roi_pool_loop` — a plain numpy transcription of the Caffe loop: the reference the other two are tested
  against.

Caffe's integers, per RoI ``(x1, y1, x2, y2)`` in image pixels and ``spatial_scale`` (1/16):
``s = round(coord·scale)`` (C ``round``: half away from zero), ``extent = max(e − s + 1, 1)``,
``bin = float32(extent) / P``, bin ``p`` spans ``[floor(p·bin) + s, ceil((p+1)·bin) + s)`` clipped to
``[0, size]``; an empty bin is 0.

The sparse table is exact as long as every clipped bin spans at most ``2**levels`` cells; :func:`table_levels`
gives the levels that guarantee it for RoIs inside an image of the configured maximum size (what the proposal
stage produces, as its boxes are clipped to the image).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

#: fill value for the (never selected) cells past the feature map's edge in the sparse table
_PAD_VALUE = -3.0e38


def feature_size(pixels: int) -> int:
    """Side of the res4 map for an image side of ``pixels``: conv7/2 p3 → maxpool3/2 ceil → /2 → /2."""
    h1 = (pixels - 1) // 2 + 1
    h2 = -(-(h1 - 3) // 2) + 1
    h3 = (h2 - 1) // 2 + 1
    return (h3 - 1) // 2 + 1


def table_levels(max_image_side: int, pool_size: int = 14) -> int:
    """Sparse-table levels that cover every bin of an in-image RoI for images up to ``max_image_side`` pixels."""
    side = feature_size(max_image_side)
    longest_bin = math.ceil((side + 1) / pool_size) + 1
    return int(math.floor(math.log2(longest_bin))) + 1


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C ``round`` on float32 (half away from zero), exact: ``floor(|x|)`` plus one when the fraction ≥ 0.5."""
    a = torch.abs(x)
    fl = torch.floor(a)
    up = (a - fl) >= 0.5  # a - floor(a) is exact in float32
    r = fl + up.to(x.dtype)
    return torch.where(x < 0, -r, r)


def _bin_edges(lo: torch.Tensor, hi: torch.Tensor, size: torch.Tensor, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per RoI [R] quantised start/end (float32 coords × scale) → bin starts/ends [R, pool] (int32), clipped."""
    s = _round_half_away(lo).to(torch.int32)
    e = _round_half_away(hi).to(torch.int32)
    extent = torch.clamp(e - s + 1, min=1)
    bin_size = extent.to(torch.float32) / float(pool)
    p = torch.arange(pool, dtype=torch.float32)
    start = torch.floor(p[None, :] * bin_size[:, None]).to(torch.int32) + s[:, None]
    end = torch.ceil((p[None, :] + 1.0) * bin_size[:, None]).to(torch.int32) + s[:, None]
    zero = torch.zeros((), dtype=torch.int32)
    start = torch.minimum(torch.maximum(start, zero), size)
    end = torch.minimum(torch.maximum(end, zero), size)
    return start, end


def _level(length: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window level k (largest with 2**k ≤ length, capped) and its width 2**k, by comparisons (no Pow)."""
    k = torch.zeros_like(length)
    width = torch.ones_like(length)
    for j in range(1, levels):
        ge = length >= (1 << j)
        k = k + ge.to(torch.int32)
        width = torch.where(ge, torch.full_like(width, 1 << j), width)
    return k, width


def _window_tables(x: torch.Tensor, levels: int, dim: int) -> list[torch.Tensor]:
    """``out[j][..., i] = max(x[..., i : i + 2**j])`` along ``dim`` (cells past the edge padded, never selected)."""
    tables = [x]
    for j in range(1, levels):
        prev = tables[-1]
        shift = 1 << (j - 1)
        spec = [0] * (2 * x.dim())
        spec[2 * (x.dim() - 1 - dim) + 1] = shift
        padded = nn.functional.pad(prev, spec, value=_PAD_VALUE)
        index = [slice(None)] * x.dim()
        index[dim] = slice(shift, None)
        tables.append(torch.maximum(prev, padded[tuple(index)]))
    return tables


def _dim32(x: torch.Tensor, dim: int) -> torch.Tensor:
    """A (possibly dynamic) dimension as an int32 scalar tensor (traced as Shape → Gather → Cast)."""
    return torch._shape_as_tensor(x)[dim].to(torch.int32)


def roi_pool_sparse(
    features: torch.Tensor, rois: torch.Tensor, pool_size: int = 14, spatial_scale: float = 1.0 / 16, levels: int = 3
) -> torch.Tensor:
    """Caffe RoI max pooling from standard ops. ``features`` [1, C, H, W], ``rois`` [R, 4] → [R, C, P, P].

    Exact when every clipped bin spans ≤ ``2**levels`` cells (see :func:`table_levels`).
    """
    x = features[0]  # [C, H, W]
    c = x.shape[0]
    h = _dim32(x, 1)
    w = _dim32(x, 2)
    # tables[kh][kw]: max over [y, y+2^kh) × [x, x+2^kw)
    rows = _window_tables(x, levels, dim=1)
    tables = [t for r in rows for t in _window_tables(r, levels, dim=2)]  # index kh*levels + kw
    stack = torch.stack(tables, 0).permute(0, 2, 3, 1).reshape(-1, c)  # [K²·H·W, C]

    scaled = rois.to(torch.float32) * spatial_scale
    ys, ye = _bin_edges(scaled[:, 1], scaled[:, 3], h, pool_size)
    xs, xe = _bin_edges(scaled[:, 0], scaled[:, 2], w, pool_size)
    kh, wh = _level(ye - ys, levels)
    kw, ww = _level(xe - xs, levels)
    zero = torch.zeros((), dtype=torch.int32)
    hm1, wm1 = h - 1, w - 1
    y0 = torch.minimum(torch.maximum(ys, zero), hm1)
    y1 = torch.minimum(torch.maximum(ye - wh, zero), hm1)
    x0 = torch.minimum(torch.maximum(xs, zero), wm1)
    x1 = torch.minimum(torch.maximum(xe - ww, zero), wm1)
    base = (kh[:, :, None] * levels + kw[:, None, :]) * (h * w)  # [R, P, P]
    out = None
    for yy in (y0, y1):
        for xx in (x0, x1):
            idx = base + yy[:, :, None] * w + xx[:, None, :]
            g = torch.index_select(stack, 0, idx.reshape(-1))
            out = g if out is None else torch.maximum(out, g)
    assert out is not None
    out = out.reshape(rois.shape[0], pool_size, pool_size, c)
    empty = ((ye - ys) <= 0)[:, :, None] | ((xe - xs) <= 0)[:, None, :]
    out = torch.where(empty[..., None], torch.zeros_like(out), out)
    return out.permute(0, 3, 1, 2)


class _MaxRoiPoolFn(torch.autograd.Function):
    """Eager: the sparse-table computation; ONNX export: a single ``MaxRoiPool`` node."""

    @staticmethod
    def forward(ctx, features, rois, pool_size, spatial_scale, levels):  # noqa: ANN001, ANN205
        return roi_pool_sparse(features, rois, pool_size, spatial_scale, levels)

    @staticmethod
    def symbolic(g, features, rois, pool_size, spatial_scale, levels):  # noqa: ANN001, ANN205
        zeros = g.op(
            "ConstantOfShape",
            g.op(
                "Concat",
                g.op(
                    "Slice",
                    g.op("Shape", rois),
                    g.op("Constant", value_t=torch.tensor([0])),
                    g.op("Constant", value_t=torch.tensor([1])),
                ),
                g.op("Constant", value_t=torch.tensor([1])),
                axis_i=0,
            ),
            value_t=torch.tensor([0.0], dtype=torch.float32),
        )
        rois5 = g.op("Concat", zeros, rois, axis_i=1)
        return g.op("MaxRoiPool", features, rois5, pooled_shape_i=[pool_size, pool_size], spatial_scale_f=spatial_scale)


def roi_pool_maxroipool(
    features: torch.Tensor, rois: torch.Tensor, pool_size: int = 14, spatial_scale: float = 1.0 / 16, levels: int = 3
) -> torch.Tensor:
    """Same values as :func:`roi_pool_sparse`; exported to ONNX as one ``MaxRoiPool`` node (batch index 0)."""
    return _MaxRoiPoolFn.apply(features, rois, pool_size, spatial_scale, levels)


def roi_pool_loop(
    features: np.ndarray, rois: np.ndarray, pool_size: int = 14, spatial_scale: float = 1.0 / 16
) -> np.ndarray:
    """Literal numpy port of Caffe's ROIPoolingLayer forward (one image): [1, C, H, W], [R, 4] → [R, C, P, P]."""
    feats = np.asarray(features, dtype=np.float32)[0]
    c, height, width = feats.shape
    rois = np.asarray(rois, dtype=np.float32)
    out = np.zeros((rois.shape[0], c, pool_size, pool_size), dtype=np.float32)
    scale = np.float32(spatial_scale)

    def c_round(v: np.float32) -> int:  # std::round on a float32 value (float64 arithmetic is exact here)
        a = abs(float(v))
        r = math.floor(a + 0.5)
        return -r if v < 0 else r

    for n in range(rois.shape[0]):
        x1, y1, x2, y2 = (np.float32(v) * scale for v in rois[n])
        sw, sh, ew, eh = c_round(x1), c_round(y1), c_round(x2), c_round(y2)
        roi_h = max(eh - sh + 1, 1)
        roi_w = max(ew - sw + 1, 1)
        bin_h = np.float32(roi_h) / np.float32(pool_size)
        bin_w = np.float32(roi_w) / np.float32(pool_size)
        for ph in range(pool_size):
            hstart = int(math.floor(np.float32(ph) * bin_h))
            hend = int(math.ceil(np.float32(ph + 1) * bin_h))
            hstart = min(max(hstart + sh, 0), height)
            hend = min(max(hend + sh, 0), height)
            for pw in range(pool_size):
                wstart = int(math.floor(np.float32(pw) * bin_w))
                wend = int(math.ceil(np.float32(pw + 1) * bin_w))
                wstart = min(max(wstart + sw, 0), width)
                wend = min(max(wend + sw, 0), width)
                if hend <= hstart or wend <= wstart:
                    continue  # empty bin: 0
                out[n, :, ph, pw] = feats[:, hstart:hend, wstart:wend].max(axis=(1, 2))
    return out
