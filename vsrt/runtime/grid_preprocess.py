"""Pixels for DSRAN's ``grid`` stage: ``Resize(256) → CenterCrop(224) → ToTensor → Normalize(ImageNet)``. No torch.

DSRAN's test transform (``data.py get_transform``) runs torchvision on a PIL image. This module reproduces it
without torch or PIL:

* **Decode** with OpenCV (``IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION``: EXIF orientation is ignored, as PIL's
  ``Image.open(...).convert('RGB')`` does), BGR → RGB. JPEG decoders of OpenCV and PIL may differ by ±1 grey level
  on some files (different libjpeg builds / IDCT); PNG and arrays are exact.
* **Resize(256)**: shorter side to 256, longer side ``int(256 · long / short)`` (torchvision's rule), with
  **PIL's BILINEAR resampling**, which is *antialiased*: a triangle filter whose support widens with the
  downscale factor (``support = max(in/out, 1)``), applied horizontally then vertically, each pass with PIL's
  22-bit fixed-point coefficients and rounding to uint8 — implemented here in integer numpy arithmetic, so the
  result is bit-identical to ``PIL.Image.resize(..., BILINEAR)``. (``cv2.resize`` ``INTER_LINEAR`` is *not*
  antialiased and differs strongly on downscales; ``INTER_AREA`` is close but not equal.)
* **CenterCrop(224)**: offsets ``int(round((h − 224) / 2))`` (Python's round-half-even, as torchvision).
* **ToTensor + Normalize**: ``(u8 / 255 − mean) / std`` in float32, channel-first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vsrt.errors import InputError

#: ImageNet normalisation (torchvision / DSRAN)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RESIZE = 256
CROP = 224
#: PIL's fixed-point precision for 8-bit resampling (``32 - 8 - 2``)
PRECISION_BITS = 22


def load_rgb(image: str | Path | np.ndarray) -> np.ndarray:
    """An image file (any format OpenCV reads) or an ``H×W×3`` BGR uint8 array → ``H×W×3`` RGB uint8."""
    import cv2

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"image arrays must be H×W×3 uint8 (BGR), got {image.dtype} {list(image.shape)}")
        if min(image.shape[:2]) < 1:
            raise InputError(f"image array is empty: shape {list(image.shape)}")
        bgr = image
    else:
        p = Path(image)
        if not p.is_file():
            raise InputError(f"image {p} not found")
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise InputError(f"image {p} could not be decoded (not an image file, or a format OpenCV cannot read)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _bilinear_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the triangle filter (support 1):
    ``(xmin [out], count [out], kk [out, ksize] int64)``."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    xmin = np.zeros(out_size, np.int64)
    count = np.zeros(out_size, np.int64)
    kk = np.zeros((out_size, ksize), np.int64)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size) - lo
        x = np.arange(hi, dtype=np.float64)
        w = np.maximum(1.0 - np.abs((x + lo - center + 0.5) * ss), 0.0)
        total = w.sum()
        if total != 0.0:
            w = w / total
        # (int)(0.5 + w·2^22) for w >= 0 (the triangle filter has no negative lobes)
        kk[xx, :hi] = (0.5 + w * (1 << PRECISION_BITS)).astype(np.int64)
        xmin[xx], count[xx] = lo, hi
    return xmin, count, kk


def _resample_axis(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One PIL 8-bit resampling pass along ``axis`` (1 = horizontal, 0 = vertical) of an ``H×W×C`` uint8 image."""
    in_size = img.shape[axis]
    xmin, count, kk = _bilinear_coeffs(in_size, out_size)
    src = np.moveaxis(img, axis, 0).astype(np.int64)  # in_size, other, C
    acc = np.full((out_size, *src.shape[1:]), 1 << (PRECISION_BITS - 1), np.int64)
    for k in range(kk.shape[1]):
        w = np.where(k < count, kk[:, k], 0)
        if not w.any():
            continue
        idx = np.minimum(xmin + k, in_size - 1)
        acc += src[idx] * w[:, None, None]
    out = np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def resize_bilinear_pil(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``PIL.Image.resize((width, height), BILINEAR)`` for an ``H×W×C`` uint8 image, bit-exact, without PIL:
    horizontal pass first, then vertical, each rounded to uint8 (a pass is skipped when its size is unchanged)."""
    if width < 1 or height < 1:
        raise InputError(f"resize target must be at least 1×1, got {width}×{height}")
    out = rgb
    if width != rgb.shape[1]:
        out = _resample_axis(out, width, axis=1)
    if height != rgb.shape[0]:
        out = _resample_axis(out, height, axis=0)
    return out


def resize_shorter_side(rgb: np.ndarray, size: int = RESIZE) -> np.ndarray:
    """torchvision ``Resize(size)``: shorter side → ``size``, longer → ``int(size · long / short)``."""
    h, w = rgb.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_h, new_w = size, int(size * w / h)
    return resize_bilinear_pil(rgb, new_w, new_h)


def center_crop(rgb: np.ndarray, size: int = CROP) -> np.ndarray:
    """torchvision ``CenterCrop(size)`` (the image must be at least ``size`` on both sides)."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        raise InputError(f"image {w}×{h} is smaller than the {size}×{size} crop")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return rgb[top : top + size, left : left + size]


def normalize(rgb: np.ndarray) -> np.ndarray:
    """``ToTensor`` + ``Normalize(ImageNet)``: ``H×W×3`` uint8 → ``3×H×W`` float32."""
    x = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(image: str | Path | np.ndarray, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """One image (path or BGR array) → ``3×crop×crop`` float32, DSRAN's test transform."""
    return normalize(center_crop(resize_shorter_side(load_rgb(image), resize), crop))


def preprocess_batch(images: Sequence[str | Path | np.ndarray], resize: int = RESIZE, crop: int = CROP
                     ) -> np.ndarray:
    """Images → ``N×3×crop×crop`` float32 pixels for the ``grid`` stage."""
    if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        raise InputError("preprocess_batch takes a list of images, not a single image")
    out = np.zeros((len(images), 3, crop, crop), np.float32)
    for i, im in enumerate(images):
        out[i] = preprocess_image(im, resize, crop)
    return out
