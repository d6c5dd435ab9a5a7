"""Image loading for the detector: files or arrays → BGR uint8 ``[H, W, 3]``, with every odd case decided.

The original extractor reads images with ``cv2.imread(path)`` (``IMREAD_COLOR``); we decode the file's bytes with
``cv2.imdecode(..., IMREAD_COLOR)``, which is the same decoder and the same conversions:

* **format** — detected from the content, never from the extension: a PNG named ``.jpg`` decodes as PNG; a file
  that is not an image in a format OpenCV reads is an :class:`~vsrt.errors.InputError` naming it.
* **grayscale** → the gray value replicated into B, G and R.
* **RGBA / BGRA** → the alpha channel is **dropped** (the stored colour values are kept, not composited on any
  background), as ``cv2.imread`` does — so a transparent pixel gives whatever colour it stores.
* **16-bit** → 8-bit by keeping the high byte (``v >> 8``, i.e. ``floor(v / 256)``), OpenCV's conversion.
* **EXIF orientation** (JPEG) → applied: the image is rotated/flipped upright (OpenCV ≥ 3.1 behaviour; the
  original Caffe-era OpenCV 2.4 ignored it, so a sideways phone photo is sideways there).
* **empty, truncated or corrupt** files → :class:`~vsrt.errors.InputError` naming the file. A JPEG must end its
  main image with an EOI marker and a PNG must contain its IEND chunk (decoders may otherwise return a partially
  grey image for a cut-off file).
* **decompression bombs** → the pixel count is read from the header (PNG, JPEG, GIF, BMP, WebP) and refused
  *before* decoding when it exceeds ``cfg.max_image_pixels``; for other formats the decoded size is checked.
* **tiny images** → an image whose shorter side is below ``cfg.rpn_min_size`` pixels cannot produce a single
  region (the RPN drops every proposal smaller than that, in original-image pixels), so it is refused with a
  clear error rather than silently yielding no features. The same holds for an image so thin that, once resized
  (longest side ≤ ``test_max_size``), its shorter side is below the RPN's minimum proposal size (``rpn_min_size ·
  scale`` resized pixels, e.g. aspect ratios beyond ~2000:1 at the default sizes): refused with the ratio named.
  Thin images above that bound are detected: the preprocessed blob is zero-padded up to the graph's minimum input
  size (:func:`vsrt.runtime.detector.preprocess.pad_blob`) and boxes stay inside the real image.

Arrays are accepted as ``[H, W, 3]`` BGR, ``[H, W]`` / ``[H, W, 1]`` gray, ``[H, W, 4]`` BGRA, uint8 or uint16
(same conversions as files); float arrays must already be BGR on the 0–255 scale and are passed through.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from vsrt.detector_config import DetectorConfig
from vsrt.errors import InputError
from vsrt.runtime.detector.preprocess import resize_scale, resized_hw

ImageInput = str | Path | np.ndarray


def header_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` read from the first bytes of a PNG, JPEG, GIF, BMP or WebP; None otherwise
    (unknown format, or a header too short to say)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:2] == b"\xff\xd8":
        dims = _jpeg_size(data)
        return ("jpeg", *dims) if dims else None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return "gif", w, h
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return "bmp", abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            w = 1 + int.from_bytes(data[24:27], "little")
            h = 1 + int.from_bytes(data[27:30], "little")
            return "webp", w, h
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return "webp", w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return "webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic variants)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_segments(data: bytes):  # noqa: ANN202 - iterator of (marker, offset, length)
    """Walk the marker segments of a JPEG up to its first start-of-scan."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        yield marker, i, length
        if marker == 0xDA:
            return
        i += 2 + length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, off, _ in _jpeg_segments(data):
        if marker in _SOF and off + 9 <= len(data):
            h, w = struct.unpack(">HH", data[off + 5 : off + 9])
            return w, h
    return None


def _jpeg_complete(data: bytes) -> bool:
    """True when the main image's scan data is followed by an EOI marker (a cut-off file has none)."""
    sos = None
    for marker, off, length in _jpeg_segments(data):
        if marker == 0xDA:
            sos = off + 2 + length
    return sos is not None and data.find(b"\xff\xd9", sos) >= 0


def _png_complete(data: bytes) -> bool:
    return data.rfind(b"IEND") > 8


def to_bgr_uint8(array: np.ndarray, name: str = "image") -> np.ndarray:
    """An image array → ``[H, W, 3]`` BGR with the file conversions (gray replicated, alpha dropped, 16-bit high
    byte); float arrays (BGR, 0–255) are returned as float32 unchanged."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"{name}: expected an H×W×3 BGR (or gray / BGRA) image array, got shape {list(a.shape)}")
    if a.shape[2] == 4:
        a = a[:, :, :3]
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"{name}: the image array is empty (shape {list(a.shape)})")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return np.ascontiguousarray((a >> 8).astype(np.uint8))
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(f"{name}: the image array contains NaN or Inf")
        return np.ascontiguousarray(a, dtype=np.float32)
    raise InputError(f"{name}: image arrays must be uint8, uint16 or float (BGR 0-255), got {a.dtype}")


def decode_image_bytes(data: bytes, name: str, cfg: DetectorConfig) -> np.ndarray:
    """Encoded image bytes → BGR uint8 ``[H, W, 3]`` (see the module docstring for every rule)."""
    if not data:
        raise InputError(f"{name}: the file is empty (0 bytes)")
    head = header_size(data)
    if head is not None:
        fmt, w, h = head
        if w < 1 or h < 1:
            raise InputError(f"{name}: corrupt {fmt.upper()} header (size {w}×{h})")
        _check_pixels(name, h, w, cfg, before_decode=True)
        if fmt == "jpeg" and not _jpeg_complete(data):
            raise InputError(f"{name}: truncated or corrupt JPEG (no end-of-image marker after the scan data)")
        if fmt == "png" and not _png_complete(data):
            raise InputError(f"{name}: truncated or corrupt PNG (no IEND chunk)")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our error replaces libpng/libjpeg chatter
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise InputError(f"{name}: cannot decode the image ({str(exc).strip().splitlines()[-1]})") from None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None:
        what = f"corrupt or truncated {head[0].upper()}" if head else "not an image in a format OpenCV can read"
        raise InputError(f"{name}: cannot decode the image ({what})")
    _check_pixels(name, img.shape[0], img.shape[1], cfg, before_decode=False)
    return to_bgr_uint8(img, name)


def _check_pixels(name: str, h: int, w: int, cfg: DetectorConfig, before_decode: bool) -> None:
    if h * w > cfg.max_image_pixels:
        when = " (refused before decoding)" if before_decode else ""
        raise InputError(
            f"{name}: image of {w}×{h} = {h * w:,} pixels exceeds the detector's limit of "
            f"{cfg.max_image_pixels:,} (max_image_pixels){when}"
        )


def check_detectable(image: np.ndarray, name: str, cfg: DetectorConfig) -> None:
    """Refuse images too small to yield any region (shorter side below ``rpn_min_size`` original pixels)."""
    h, w = image.shape[:2]
    if min(h, w) < cfg.rpn_min_size:
        raise InputError(
            f"{name}: image of {w}×{h} pixels is too small for the detector: every region proposal must be at least "
            f"{cfg.rpn_min_size:g} pixels wide and tall in the original image, so none can be found"
        )
    if h * w > cfg.max_image_pixels:
        _check_pixels(name, h, w, cfg, before_decode=False)
    scale = resize_scale(h, w, cfg)
    short = min(resized_hw(h, w, scale)) if min(h, w) * scale >= 0.5 else 0
    if short < np.float32(cfg.rpn_min_size) * np.float32(scale):
        raise InputError(
            f"{name}: image of {w}×{h} pixels (aspect ratio {max(h, w) / min(h, w):.0f}:1) is too thin for the "
            f"detector: resized so its longest side is at most {cfg.test_max_size} pixels, its shorter side becomes "
            f"{short} pixel(s), less than the smallest region proposal ({cfg.rpn_min_size:g} original pixels = "
            f"{cfg.rpn_min_size * scale:.2f} resized pixels), so none can be found"
        )


def load_image(image: ImageInput, cfg: DetectorConfig, name: str | None = None) -> np.ndarray:
    """A path or an array → a BGR ``[H, W, 3]`` image ready for :func:`preprocess_image` (uint8, or float32 for
    float arrays), checked to be decodable, within the size bound and large enough to detect anything."""
    if isinstance(image, np.ndarray):
        label = name or f"image array {list(image.shape)}"
        img = to_bgr_uint8(image, label)
    elif isinstance(image, (str, Path)):
        p = Path(image)
        label = name or str(p)
        if not p.exists():
            raise InputError(f"{label}: image file not found")
        if not p.is_file():
            raise InputError(f"{label}: not a file")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise InputError(f"{label}: cannot read the file ({exc.strerror})") from None
        img = decode_image_bytes(data, label, cfg)
    else:
        raise InputError(f"the detector takes image paths or BGR arrays, got {type(image).__name__}")
    check_detectable(img, label, cfg)
    return img
