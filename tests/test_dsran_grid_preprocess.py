"""DSRAN's grid-stage preprocessing without torch or PIL: PIL-exact antialiased bilinear resize (checked against a
literal per-pixel reference written here, and against PIL itself where installed), torchvision's resize / crop
rules, ImageNet normalisation, decoding and bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsrt.errors import InputError
from vsrt.runtime.grid_preprocess import (
    MEAN,
    STD,
    center_crop,
    load_rgb,
    normalize,
    preprocess_batch,
    preprocess_image,
    resize_bilinear_pil,
    resize_shorter_side,
)


def _reference_pass(img: list, in_size: int, out_size: int, horizontal: bool) -> list:
    """Pillow's ``ImagingResampleHorizontal/Vertical_8bpc`` with the BILINEAR filter, one pixel at a time."""
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = fscale
    h, w = len(img), len(img[0])
    out = [[[0] * 3 for _ in range(out_size if horizontal else w)] for _ in range(h if horizontal else out_size)]
    for o in range(out_size):
        center = (o + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) / fscale)) for x in range(xmax)]
        tot = sum(ws)
        kk = [int(0.5 + (wv / tot if tot else wv) * (1 << 22)) for wv in ws]
        for line in range(h if horizontal else w):
            for c in range(3):
                ss = 1 << 21
                for x in range(xmax):
                    px = img[line][x + xmin][c] if horizontal else img[x + xmin][line][c]
                    ss += px * kk[x]
                v = min(max(ss >> 22, 0), 255)
                if horizontal:
                    out[line][o][c] = v
                else:
                    out[o][line][c] = v
    return out


def reference_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    rows = img.tolist()
    if width != img.shape[1]:
        rows = _reference_pass(rows, img.shape[1], width, True)
    if height != img.shape[0]:
        rows = _reference_pass(rows, img.shape[0], height, False)
    return np.array(rows, np.uint8)


@pytest.mark.parametrize(("h", "w", "nh", "nw"), [(23, 17, 11, 7), (5, 9, 13, 20), (31, 8, 6, 8), (12, 40, 12, 3),
                                                    (7, 7, 7, 7), (64, 3, 5, 9)])
def test_resize_equals_literal_pillow_algorithm(h: int, w: int, nh: int, nw: int) -> None:
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert np.array_equal(resize_bilinear_pil(img, nw, nh), reference_resize(img, nw, nh))


def test_resize_equals_pil_when_installed() -> None:
    pil = pytest.importorskip("PIL.Image", reason="Pillow not installed (the literal reference test still runs)")
    rng = np.random.default_rng(0)
    for h, w in [(480, 640), (375, 500), (333, 1000), (1024, 768), (200, 150), (256, 300)]:
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 2)
        ours = resize_shorter_side(img)
        short, long_ = min(h, w), max(h, w)
        size = (256, int(256 * long_ / short)) if w <= h else (int(256 * long_ / short), 256)
        ref = np.asarray(pil.fromarray(img).resize(size, pil.BILINEAR))
        assert ours.shape == ref.shape and np.array_equal(ours, ref), (h, w)


def test_torchvision_resize_and_crop_rules() -> None:
    img = np.zeros((333, 500, 3), np.uint8)
    assert resize_shorter_side(img).shape == (256, 384, 3)  # int(256 * 500 / 333) = 384
    assert resize_shorter_side(np.zeros((1000, 333, 3), np.uint8)).shape == (768, 256, 3)
    x = np.arange(257 * 259 * 3, dtype=np.int64).reshape(257, 259, 3).astype(np.uint8)
    c = center_crop(x, 224)
    # offsets int(round(33 / 2)) = 16 (half to even) and int(round(35 / 2)) = 18
    assert np.array_equal(c, x[16:240, 18:242]) and round(33 / 2) == 16
    with pytest.raises(InputError, match="smaller than the 224×224 crop"):
        center_crop(np.zeros((200, 300, 3), np.uint8))


def test_normalize_is_totensor_then_imagenet() -> None:
    x = np.array([[[0, 128, 255]]], np.uint8)
    got = normalize(x)
    assert got.shape == (3, 1, 1) and got.dtype == np.float32
    want = [(v / 255.0 - m) / s for v, m, s in zip([0, 128, 255], MEAN.tolist(), STD.tolist())]
    assert np.allclose(got[:, 0, 0], want, atol=1e-6)
    assert math.isclose(float(got[0, 0, 0]), -0.485 / 0.229, rel_tol=1e-6)


def test_file_and_array_inputs_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8), (5, 5), 1)
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), bgr)
    assert np.array_equal(load_rgb(p), bgr[:, :, ::-1])
    a, b = preprocess_image(p), preprocess_image(bgr)
    assert a.shape == (3, 224, 224) and np.array_equal(a, b)
    want = normalize(center_crop(reference_resize(bgr[:, :, ::-1], 358, 256)))  # int(256 * 420 / 300) = 358
    assert np.array_equal(a, want)
    assert preprocess_batch([p, bgr]).shape == (2, 3, 224, 224)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_rgb(tmp_path / "none.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(InputError, match="could not be decoded"):
        load_rgb(junk)
    with pytest.raises(InputError, match="H×W×3 uint8"):
        load_rgb(np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="list of images"):
        preprocess_batch(np.zeros((10, 10, 3), np.uint8))
