"""Gallery format: append, reopen, duplicates, model binding, torn writes discarded, corruption detected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _retrieval_helpers import FakeModel, unit

from vsrt.errors import InputError
from vsrt.runtime.gallery import LOG, SEGMENTS, Gallery, GalleryCorruptError, GalleryError, content_hash

D = 24


def _filled(path: Path, storage: str = "fp32", n: int = 300, chunk: int = 100, seed: int = 0
            ) -> tuple[Gallery, np.ndarray]:
    x = unit(np.random.default_rng(seed), n, D)
    g = Gallery.create(path, D, storage, FakeModel(D))
    for i in range(0, n, chunk):
        g.add([f"item{j}" for j in range(i, min(n, i + chunk))], x[i : i + chunk],
              [{"row": j, "boxes": [[0, 0, 1, 1]]} for j in range(i, min(n, i + chunk))])
    return g, x


def test_runtime_gallery_modules_never_import_torch() -> None:
    code = ("import sys, vsrt.runtime.gallery, vsrt.runtime.search, vsrt.runtime.quantize, vsrt.runtime.rerank, "
            "vsrt.runtime.indexer, vsrt.runtime.profiler, vsrt.runtime.doctor, vsrt.export.triton\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("storage", ["fp32", "fp16", "int8"])
def test_add_reopen_roundtrip(tmp_path: Path, storage: str) -> None:
    g, x = _filled(tmp_path / "g", storage)
    g2 = Gallery.open(tmp_path / "g")
    assert len(g2) == 300 and len(g2.segments) == 3 and g2.storage == storage and g2.dim == D
    tol = {"fp32": 0, "fp16": 1e-3, "int8": 1e-2}[storage]
    assert np.abs(g2.embeddings() - x).max() <= tol
    assert g2.item(150) == {"index": 150, "key": "item150", "meta": {"row": 150, "boxes": [[0, 0, 1, 1]]}}
    assert g2.keys()[:3] == ["item0", "item1", "item2"]
    assert g2.verify()["ok"] and g2.verify()["items"] == 300
    assert g2.model["family"] == "fake"


def test_duplicates_by_content_hash(tmp_path: Path) -> None:
    g, x = _filled(tmp_path / "g", n=50, chunk=50)
    h = [content_hash(v) for v in x[:3]]
    v = unit(np.random.default_rng(9), 1, D)[0]
    res = g.add(["again0", "new", "new-dup"], np.stack([x[0], v, v]), hashes=[h[0], "ab" * 32, "ab" * 32])
    assert res.added == 1 and res.duplicates == ["again0", "new-dup"]
    assert len(Gallery.open(tmp_path / "g")) == 51
    assert g.contains("ab" * 32) and g.has_key("new")
    with pytest.raises(GalleryError, match="already in gallery .* different content"):
        g.add(["new"], unit(np.random.default_rng(3), 1, D), hashes=["cd" * 32])


def test_bad_inputs_are_clear(tmp_path: Path) -> None:
    g = Gallery.create(tmp_path / "g", D, "fp16", FakeModel(D))
    with pytest.raises(GalleryError, match="L2-normalised"):
        g.add(["a"], np.ones((1, D), np.float32))
    with pytest.raises(GalleryError, match=r"shape \[2, 24\]"):
        g.add(["a", "b"], np.ones((1, D), np.float32))
    with pytest.raises(GalleryError, match="NaN"):
        g.add(["a"], np.full((1, D), np.nan, np.float32))
    with pytest.raises(GalleryError, match="JSON-serialisable"):
        g.add(["a"], unit(np.random.default_rng(0), 1, D), [{"x": object()}])
    with pytest.raises(GalleryError, match="already exists"):
        Gallery.create(tmp_path / "g", D, "fp16", FakeModel(D))
    with pytest.raises(GalleryError, match="no gallery"):
        Gallery.open(tmp_path / "nothing")
    with pytest.raises(Exception, match="unknown gallery storage"):
        Gallery.create(tmp_path / "h", D, "fp8")
    assert len(Gallery.open(tmp_path / "g")) == 0  # nothing half-added


def test_other_model_is_refused(tmp_path: Path) -> None:
    g, x = _filled(tmp_path / "g", n=20, chunk=20)
    g.search(x[:2], 3, model=FakeModel(D))
    other = FakeModel(D, family="vsrpp", sha="0" * 64, model_dir="/models/other")
    with pytest.raises(GalleryError, match="built with model family 'fake'.*query model is family 'vsrpp'"):
        g.search(x[:2], 3, model=other)
    with pytest.raises(GalleryError, match="queries must have shape"):
        g.search(np.ones((2, D + 1), np.float32), 3)


def test_torn_log_line_and_orphans_are_discarded(tmp_path: Path) -> None:
    g, x = _filled(tmp_path / "g", n=200, chunk=100)
    log = tmp_path / "g" / LOG
    good = log.read_bytes()
    line = good.splitlines(keepends=True)[-1]
    seg_dir = tmp_path / "g" / SEGMENTS
    # a crash after writing a third segment's files and half its log line
    (seg_dir / "00000002.emb.npy").write_bytes(b"partial")
    (seg_dir / ".00000002.items.json.abc.tmp").write_bytes(b"[")
    log.write_bytes(good + line[: len(line) // 2])
    g2 = Gallery.open(tmp_path / "g")
    assert len(g2) == 200 and len(g2.segments) == 2
    assert np.allclose(g2.embeddings(), x)
    # a crash that left a whole but wrong final line (e.g. zero-filled block) is discarded too
    log.write_bytes(good + b"\x00" * 40 + b"\n")
    assert len(Gallery.open(tmp_path / "g")) == 200
    # the next writer cuts the torn tail and deletes the orphans before appending
    res = g2.add(["z"], unit(np.random.default_rng(5), 1, D))
    assert res.added == 1 and not (seg_dir / ".00000002.items.json.abc.tmp").exists()
    assert log.read_bytes().startswith(good) and log.read_bytes().count(b"\n") == 3
    assert len(Gallery.open(tmp_path / "g")) == 201 and Gallery.open(tmp_path / "g").verify()["ok"]


def test_corruption_is_detected_never_read_back(tmp_path: Path) -> None:
    g, x = _filled(tmp_path / "g", "fp16", n=200, chunk=100)
    emb = tmp_path / "g" / SEGMENTS / "00000001.emb.npy"
    data = bytearray(emb.read_bytes())
    data[-5] ^= 0x40  # one flipped bit in the embeddings: same size, wrong content
    emb.write_bytes(bytes(data))
    with pytest.raises(GalleryCorruptError, match="does not match its commit checksum"):
        Gallery.open(tmp_path / "g").verify()
    with pytest.raises(GalleryCorruptError, match="00000001.emb.npy"):
        Gallery.open(tmp_path / "g").search(x[:1], 5)
    with pytest.raises(GalleryCorruptError):
        Gallery.open(tmp_path / "g").embeddings(150, 160)
    # check="size" is the explicit opt-out for trusted storage: it reads without hashing
    assert len(Gallery.open(tmp_path / "g", check="size").search(x[:1], 5).indices[0]) == 5
    # truncation is caught on open (size check)
    emb.write_bytes(bytes(data[:-100]))
    with pytest.raises(GalleryCorruptError, match="truncated"):
        Gallery.open(tmp_path / "g")


def test_damaged_log_and_header_are_corruption(tmp_path: Path) -> None:
    _filled(tmp_path / "g", n=300, chunk=100)
    log = tmp_path / "g" / LOG
    lines = log.read_bytes().splitlines(keepends=True)
    bad = bytearray(lines[0])
    bad[80] = ord("X") if bad[80] != ord("X") else ord("Y")
    log.write_bytes(bytes(bad) + b"".join(lines[1:]))
    with pytest.raises(GalleryCorruptError, match="line 1 is damaged"):
        Gallery.open(tmp_path / "g")
    log.write_bytes(lines[0] + lines[2])  # a commit removed from the middle
    with pytest.raises(GalleryCorruptError, match="the log was edited"):
        Gallery.open(tmp_path / "g")
    log.write_bytes(b"".join(lines))
    header = tmp_path / "g" / "gallery.json"
    h = json.loads(header.read_text())
    h["dim"] = 7
    header.write_text(json.dumps(h))
    with pytest.raises(GalleryCorruptError, match="header"):
        Gallery.open(tmp_path / "g")


def test_missing_segment_file_is_corruption(tmp_path: Path) -> None:
    _filled(tmp_path / "g", "int8", n=200, chunk=100)
    (tmp_path / "g" / SEGMENTS / "00000000.scale.npy").unlink()
    with pytest.raises(GalleryCorruptError, match="missing"):
        Gallery.open(tmp_path / "g")


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    g, _ = _filled(tmp_path / "g", n=10, chunk=10)
    code = ("import sys, numpy as np\nfrom vsrt.runtime.gallery import Gallery\n"
            f"g = Gallery.open({str(tmp_path / 'g')!r})\n"
            "try:\n    g.add(['x'], np.eye(1, 24, dtype=np.float32))\nexcept Exception as e:\n"
            "    print(type(e).__name__, e); sys.exit(3)\n")
    with g.writer():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3 and "being written by another process" in r.stdout
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(Gallery.open(tmp_path / "g")) == 11


def test_local_features_for_reranking(tmp_path: Path) -> None:
    g = Gallery.create(tmp_path / "g", D, "fp16", FakeModel(D))
    x = unit(np.random.default_rng(0), 6, D)
    loc = np.random.default_rng(1).standard_normal((6, 4, 8)).astype(np.float32)
    g.add([str(i) for i in range(6)], x, local=loc)
    g2 = Gallery.open(tmp_path / "g")
    assert g2.has_local
    assert np.allclose(g2.local_features([5, 0]), loc[[5, 0]], atol=1e-2)
    with pytest.raises(GalleryError, match="local features"):
        g2.add(["7"], unit(np.random.default_rng(7), 1, D))


def test_index_a_folder_of_images_through_the_detector(tmp_path: Path) -> None:
    """Images → detector (regions + boxes) → embeddings; keys are relative paths, boxes kept, copies skipped."""
    import cv2

    from vsrt.runtime.indexer import index_source

    class Det:
        def __init__(self, path: str) -> None:
            img = cv2.imread(path)
            self.features = np.tile(img.mean(axis=(0, 1)), (36, 4)).astype(np.float32)  # [36, 12]
            self.boxes = np.array([[0, 0, img.shape[1], img.shape[0]]] * 36, np.float32)
            self.image_hw = img.shape[:2]
            self.num_boxes, self.source = 36, path  # the surface of vsrt.runtime.detector.Detection

    class Detector:
        def __init__(self) -> None:
            self.asked: list[int] = []

        def detect(self, paths: list[str], num_boxes: int) -> list[Det]:
            self.asked.append(num_boxes)
            return [Det(p) for p in paths]

    model = FakeModel(D)
    model.num_regions = 36
    model.manifest.stages = {"backbone_rpn": None, "roi_head": None}
    model.detector = Detector()
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg", "sub/c.png"):
        cv2.imwrite(str(src / name), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    (src / "copy.png").write_bytes((src / "b.png").read_bytes())
    (src / "notes.txt").write_text("not an image")
    rep = index_source(src, model, tmp_path / "g", storage="fp16", commit_every=2)
    assert rep.kind == "images" and rep.added == 3 and rep.duplicates == ["copy.png"] and rep.segments == 2
    g = Gallery.open(tmp_path / "g")
    assert g.keys() == ["a.jpg", "b.png", "sub/c.png"]
    meta = g.item(2)["meta"]
    assert meta["path"] == str((src / "sub" / "c.png").resolve()) and meta["image_hw"] == [20, 30]
    assert len(meta["boxes"]) == 36 and meta["boxes"][0] == [0.0, 0.0, 30.0, 20.0]
    assert model.detector.asked == [36, 36]  # the visual stage's region count, one call per segment
    plain = FakeModel(D)  # a model without a detector cannot index raw images
    with pytest.raises(InputError, match="has no detector"):
        index_source(src, plain, tmp_path / "g2")


def test_take_arbitrary_items(tmp_path: Path) -> None:
    g, x = _filled(tmp_path / "g", "int8", n=300, chunk=70)
    idx = [299, 0, 71, 70, 69, 150]
    assert np.allclose(g.take(idx), g.embeddings()[idx]) and np.abs(g.take(idx) - x[idx]).max() < 1e-2
    with pytest.raises(GalleryError, match="within"):
        g.take([300])
