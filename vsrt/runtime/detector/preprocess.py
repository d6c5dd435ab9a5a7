"""Caffe-exact image preprocessing of the bottom-up-attention detector (OpenCV + numpy, no torch).

``lib/fast_rcnn/test.py:_get_image_blob`` of the original, step by step:

1. BGR image → float32, minus ``PIXEL_MEANS`` (BGR 102.9801, 115.9465, 122.7717; no division by a std). The
   original subtracts a float64 array in place from a float32 image, i.e. computes in float64 and rounds once to
   float32; we do the same (a float32 subtraction can differ by one ulp).
2. Scale ``s = test_scale / min(h, w)``; if ``round(s · max(h, w)) > test_max_size`` then
   ``s = test_max_size / max(h, w)`` (numpy's half-to-even ``round``, as ``np.round`` there).
3. ``cv2.resize(im, None, fx=s, fy=s, interpolation=INTER_LINEAR)`` on the **mean-subtracted float** image —
   passing ``fx``/``fy`` (not a target size) so OpenCV uses the same internal scale factors.
4. HWC → NCHW blob ``[1, 3, H', W']`` (one image, no padding).

The returned scale is the Python float ``s`` the original divides proposal boxes by (not ``H'/h``).

**Extreme aspect ratios.** The longest side is bounded by ``test_max_size``, so a thin image becomes a very thin
blob (20000×100 → 1000×5), below the smallest input the ``backbone_rpn`` graph takes (its TensorRT profile minimum,
:data:`MIN_INPUT_SIDE` = 64 per side, fixed at export). :func:`pad_blob` then zero-pads the **mean-subtracted** blob
at the bottom and right up to that minimum — exactly what the Caffe original does when it batches images
(``blob.py:im_list_to_blob`` copies each image into the top-left corner of a zero blob), so the padding is the
mean colour and the result is the one Caffe would give for that image batched with a larger one. No stride padding
is needed: the C4 backbone has no FPN and takes any size ≥ 1 (its res4 is ``feature_size`` of each side). The
proposal stage is given the real (unpadded) resized size, so every proposal — and every box — is clipped to the
real image, as Caffe clips to ``im_info``. Images of normal proportions (both resized sides ≥ 64) are not padded
and their results are unchanged. An image so thin that its resized shorter side could not hold one proposal of
the minimum size is refused earlier (:func:`vsrt.runtime.detector.images.check_detectable`).
"""

from __future__ import annotations

import cv2
import numpy as np

from vsrt.detector_config import DetectorConfig
from vsrt.errors import InputError

#: smallest height and width the ``backbone_rpn`` graph takes (its TensorRT profile minimum, set at export)
MIN_INPUT_SIDE = 64


def resize_scale(h: int, w: int, cfg: DetectorConfig) -> float:
    """The resize factor for an ``h × w`` image (shortest side to ``test_scale``, longest ≤ ``test_max_size``)."""
    size_min, size_max = min(h, w), max(h, w)
    scale = float(cfg.test_scale) / float(size_min)
    if np.round(scale * size_max) > cfg.test_max_size:
        scale = float(cfg.test_max_size) / float(size_max)
    return scale


def resized_hw(h: int, w: int, scale: float) -> tuple[int, int]:
    """The size ``cv2.resize(fx=fy=scale)`` produces: ``round(h·s) × round(w·s)`` (at least 1)."""
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def preprocess_image(image: np.ndarray, cfg: DetectorConfig) -> tuple[np.ndarray, float]:
    """BGR image ``[H, W, 3]`` (uint8, or float with values on the 0–255 scale) → ``(blob [1, 3, H', W'] float32,
    scale)`` exactly as the Caffe extractor prepares it (see the module docstring)."""
    im = np.asarray(image)
    if im.ndim != 3 or im.shape[2] != 3 or im.shape[0] < 1 or im.shape[1] < 1:
        raise InputError(f"the detector takes an H×W×3 BGR image, got an array of shape {list(im.shape)}")
    if not (np.issubdtype(im.dtype, np.integer) or np.issubdtype(im.dtype, np.floating)):
        raise InputError(f"the detector takes a numeric image, got dtype {im.dtype}")
    means = np.asarray(cfg.pixel_means_bgr, np.float64).reshape(1, 1, 3)
    # float32 copy, then ``-= PIXEL_MEANS`` (float64): computed in float64, rounded once to float32
    centred = (im.astype(np.float32).astype(np.float64) - means).astype(np.float32)
    h, w = im.shape[:2]
    scale = resize_scale(h, w, cfg)
    resized = cv2.resize(centred, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:  # OpenCV drops a length-1 channel axis; never for 3 channels, kept for safety
        resized = resized[:, :, None]
    blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32)
    return blob, scale


def pad_blob(blob: np.ndarray, min_hw: tuple[int, int] = (MIN_INPUT_SIDE, MIN_INPUT_SIDE)) -> np.ndarray:
    """Zero-pad a preprocessed blob ``[1, 3, H', W']`` at the bottom/right to at least ``min_hw`` (``im_list_to_blob``
    style, see the module docstring); returned unchanged (the same array) when it is already large enough."""
    _, c, h, w = blob.shape
    ph, pw = max(int(min_hw[0]), h), max(int(min_hw[1]), w)
    if (ph, pw) == (h, w):
        return blob
    out = np.zeros((1, c, ph, pw), np.float32)
    out[:, :, :h, :w] = blob
    return out
