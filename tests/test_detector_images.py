"""Image loading and Caffe preprocessing for the detector: every odd image has a defined result or a clear error
naming the file (corrupt, truncated, empty, wrong extension, 1×1, 20000×20000, grayscale, RGBA, 16-bit,
EXIF-rotated)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsrt.detector_config import DetectorConfig
from vsrt.errors import InputError
from vsrt.runtime.detector.images import header_size, load_image
from vsrt.runtime.detector.preprocess import preprocess_image, resize_scale, resized_hw

CFG = DetectorConfig()


def photo(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 2)
    im[:10, :20] = (0, 0, 255)  # a red block top-left: orientation is visible
    return im


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def encode(ext: str, im: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, im)
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_regular_png_and_jpeg(tmp_path: Path) -> None:
    im = photo()
    got = load_image(write(tmp_path / "a.png", encode(".png", im)), CFG)
    np.testing.assert_array_equal(got, im)
    got = load_image(write(tmp_path / "a.jpg", encode(".jpg", im)), CFG)
    assert got.shape == im.shape and got.dtype == np.uint8
    assert header_size(encode(".jpg", im)) == ("jpeg", 80, 60)
    assert header_size(encode(".png", im)) == ("png", 80, 60)


def test_wrong_extension_decodes_by_content(tmp_path: Path) -> None:
    im = photo()
    got = load_image(write(tmp_path / "really_a_png.jpg", encode(".png", im)), CFG)
    np.testing.assert_array_equal(got, im)
    got = load_image(write(tmp_path / "noext", encode(".bmp", im)), CFG)
    np.testing.assert_array_equal(got, im)
    with pytest.raises(InputError, match=r"notes\.png.*not an image"):
        load_image(write(tmp_path / "notes.png", b"just some text, not pixels\n" * 4), CFG)


def test_empty_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"empty\.jpg.*empty \(0 bytes\)"):
        load_image(write(tmp_path / "empty.jpg", b""), CFG)
    with pytest.raises(InputError, match=r"missing\.jpg.*not found"):
        load_image(tmp_path / "missing.jpg", CFG)
    with pytest.raises(InputError, match="not a file"):
        load_image(tmp_path, CFG)
    with pytest.raises(InputError, match="paths or BGR arrays"):
        load_image(42, CFG)  # type: ignore[arg-type]


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files(tmp_path: Path, ext: str) -> None:
    data = encode(ext, photo(120, 160))
    for cut in (len(data) // 2, len(data) - 3):
        p = write(tmp_path / f"cut{cut}{ext}", data[:cut])
        with pytest.raises(InputError, match=rf"cut{cut}\{ext}.*(truncated|corrupt)"):
            load_image(p, CFG)


def test_corrupt_files(tmp_path: Path) -> None:
    data = bytearray(encode(".png", photo(120, 160)))
    idat = data.find(b"IDAT")
    data[idat + 8 : idat + 200] = bytes(192)  # garbage compressed data, chunk CRC now wrong
    with pytest.raises(InputError, match=r"bad\.png.*cannot decode.*corrupt"):
        load_image(write(tmp_path / "bad.png", bytes(data)), CFG)
    jpg = bytearray(encode(".jpg", photo(120, 160)))
    jpg[2:40] = b"\x00" * 38  # the segment structure after SOI is destroyed
    with pytest.raises(InputError, match=r"bad\.jpg"):
        load_image(write(tmp_path / "bad.jpg", bytes(jpg)), CFG)
    rng = np.random.default_rng(1)
    with pytest.raises(InputError, match=r"noise\.jpg"):
        load_image(write(tmp_path / "noise.jpg", b"\xff\xd8" + rng.bytes(5000)), CFG)


def test_one_pixel_image_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path / "dot.png", encode(".png", np.full((1, 1, 3), 128, np.uint8)))
    with pytest.raises(InputError, match=r"dot\.png.*1×1.*too small.*16 pixels"):
        load_image(p, CFG)
    with pytest.raises(InputError, match="too small"):
        load_image(np.zeros((15, 400, 3), np.uint8), CFG)
    assert load_image(np.zeros((16, 16, 3), np.uint8), CFG).shape == (16, 16, 3)  # the smallest detectable


def test_huge_image_refused_from_header_before_decoding(tmp_path: Path) -> None:
    # a PNG whose header says 20000×20000 (the pixels would need 1.2 GB): refused from the header alone
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(InputError, match=r"bomb\.png.*20000×20000 = 400,000,000 pixels.*before decoding"):
        load_image(write(tmp_path / "bomb.png", png), CFG)
    # a JPEG whose SOF says 20000×20000
    jpg = bytearray(encode(".jpg", photo(16, 16)))
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    assert header_size(bytes(jpg)) == ("jpeg", 20000, 20000)
    with pytest.raises(InputError, match=r"bomb\.jpg.*before decoding"):
        load_image(write(tmp_path / "bomb.jpg", bytes(jpg)), CFG)
    # the bound is the config's: a real (small) image above a lowered limit
    small = DetectorConfig(max_image_pixels=10_000)
    with pytest.raises(InputError, match="max_image_pixels"):
        load_image(write(tmp_path / "big.png", encode(".png", photo(120, 160))), small)
    with pytest.raises(InputError, match="max_image_pixels"):
        load_image(photo(120, 160), small)


def test_grayscale_rgba_and_16bit(tmp_path: Path) -> None:
    gray = cv2.cvtColor(photo(), cv2.COLOR_BGR2GRAY)
    got = load_image(write(tmp_path / "g.png", encode(".png", gray)), CFG)
    assert got.shape == (60, 80, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], gray)
    np.testing.assert_array_equal(load_image(gray, CFG), got)
    bgra = np.dstack([photo(), np.zeros((60, 80), np.uint8)])  # fully transparent: colours kept, alpha dropped
    got = load_image(write(tmp_path / "t.png", encode(".png", bgra)), CFG)
    np.testing.assert_array_equal(got, bgra[:, :, :3])
    np.testing.assert_array_equal(load_image(bgra, CFG), bgra[:, :, :3])
    deep = (np.arange(60 * 80 * 3, dtype=np.uint32).reshape(60, 80, 3) * 97 % 65536).astype(np.uint16)
    got = load_image(write(tmp_path / "d.png", encode(".png", deep)), CFG)
    np.testing.assert_array_equal(got, (deep >> 8).astype(np.uint8))  # the high byte
    np.testing.assert_array_equal(load_image(deep, CFG), got)


def exif_app1(orientation: int) -> bytes:
    """An APP1 segment with a little-endian TIFF header and one IFD entry: Orientation (0x0112, SHORT)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize(
    ("orientation", "rotate"), [(6, cv2.ROTATE_90_CLOCKWISE), (3, cv2.ROTATE_180), (8, cv2.ROTATE_90_COUNTERCLOCKWISE)]
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, rotate: int) -> None:
    data = encode(".jpg", photo(40, 64))
    rotated = data[:2] + exif_app1(orientation) + data[2:]
    raw = cv2.imdecode(np.frombuffer(rotated, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    got = load_image(write(tmp_path / "phone.jpg", rotated), CFG)
    np.testing.assert_array_equal(got, cv2.rotate(raw, rotate))
    if orientation != 3:
        assert got.shape[:2] == (64, 40)
    # the red block, top-left in the stored pixels, moved where the rotation puts it
    red = (got[:, :, 2] > 200) & (got[:, :, 0] < 60)
    ys, xs = np.nonzero(red)
    corner = {6: (0, 1), 3: (1, 1), 8: (1, 0)}[orientation]  # (bottom?, right?)
    assert (ys.mean() > got.shape[0] / 2) == bool(corner[0]) and (xs.mean() > got.shape[1] / 2) == bool(corner[1])


def test_array_inputs() -> None:
    im = photo()
    np.testing.assert_array_equal(load_image(im[:, :, :1], CFG)[:, :, 2], im[:, :, 0])
    f = load_image(im.astype(np.float32), CFG)
    assert f.dtype == np.float32
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((4, 5, 6, 3), np.uint8), CFG)
    with pytest.raises(InputError, match="uint8, uint16 or float"):
        load_image(np.zeros((20, 20, 3), bool), CFG)
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((20, 20, 3), np.nan, np.float32), CFG)


@pytest.mark.parametrize(
    ("hw", "scale", "out"),
    [
        ((600, 1000), 1.0, (600, 1000)),
        ((480, 640), 1.25, (600, 800)),
        ((375, 1000), 1.0, (375, 1000)),  # 600/375 would make the long side 1600 > 1000
        ((1000, 600), 1.0, (1000, 600)),
        ((16, 16), 37.5, (600, 600)),
        ((333, 500), 600 / 333, (600, 901)),
    ],
)
def test_caffe_scale_rule(hw: tuple[int, int], scale: float, out: tuple[int, int]) -> None:
    assert resize_scale(*hw, CFG) == pytest.approx(scale, rel=0, abs=0)
    assert resized_hw(*hw, scale) == out
    blob, s = preprocess_image(np.zeros((*hw, 3), np.uint8), CFG)
    assert s == scale and blob.shape == (1, 3, *out) and blob.dtype == np.float32


def test_preprocessing_is_caffe_exact() -> None:
    im = photo(75, 130, seed=3)
    blob, s = preprocess_image(im, CFG)
    # _get_image_blob, literally: float32 copy, in-place subtraction of the float64 means, resize with fx/fy
    ref = im.astype(np.float32, copy=True)
    ref -= np.array([[[102.9801, 115.9465, 122.7717]]])
    ref = cv2.resize(ref, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(blob[0], ref.transpose(2, 0, 1))
    # the mean is subtracted before the resize (not after): results differ from resizing uint8 first
    late = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR).astype(np.float32) - np.float32(
        [102.9801, 115.9465, 122.7717]
    )
    assert not np.array_equal(blob[0], late.transpose(2, 0, 1))
