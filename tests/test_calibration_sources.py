"""Calibration data sources: deterministic sampling, the three consumer conventions, clear errors on bad data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from vsrt.calibration.sources import (
    ArraySource,
    CaptionSource,
    ImageFolderSource,
    RandomSource,
    RegionFeatureSource,
    _RecordingBackend,
    sample_indices,
)
from vsrt.errors import InputError
from vsrt.manifest import TensorSpec


def _regions(tmp_path: Path, n: int = 40, r: int = 36, f: int = 8) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "train_ims.npy"
    np.save(path, rng.random((n, r, f), dtype=np.float32))
    return path


def test_sample_indices_deterministic_sorted_distinct() -> None:
    a = sample_indices(100, 10, seed=3)
    assert np.array_equal(a, sample_indices(100, 10, seed=3))
    assert not np.array_equal(a, sample_indices(100, 10, seed=4))
    assert len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    assert np.array_equal(sample_indices(5, None, 0), np.arange(5))
    assert np.array_equal(sample_indices(5, 50, 0), np.arange(5))
    with pytest.raises(InputError, match="positive"):
        sample_indices(5, 0, 0)
    with pytest.raises(InputError, match="no items"):
        sample_indices(0, 3, 0)


def test_region_source_batches_are_the_sampled_rows(tmp_path: Path) -> None:
    path = _regions(tmp_path)
    src = RegionFeatureSource(path, count=10, seed=1, batch_size=4, expect_shape=[36, 8])
    batches = list(src.batches())
    assert [b["regions"].shape[0] for b in batches] == [4, 4, 2] and len(src) == 3
    got = np.concatenate([b["regions"] for b in batches])
    full = np.load(path)
    assert np.array_equal(got, full[sample_indices(40, 10, 1)])
    assert all(b["regions"].dtype == np.float32 and b["regions"].flags.c_contiguous for b in batches)
    # same data, same digest; other seed, other digest
    assert src.digest() == RegionFeatureSource(path, count=10, seed=1, batch_size=4).digest()
    assert src.digest() != RegionFeatureSource(path, count=10, seed=2, batch_size=4).digest()
    assert src.describe()["count"] == 10


def test_region_source_conventions_agree(tmp_path: Path) -> None:
    src = RegionFeatureSource(_regions(tmp_path), count=9, seed=0, batch_size=4)
    direct = list(src.batches())
    polygraphy = list(src.load_data())
    reader = src.ort_reader()
    ort = []
    while (feeds := reader.get_next()) is not None:
        ort.append(feeds)
    assert len(direct) == len(polygraphy) == len(ort) == len(reader) == 3
    for a, b, c in zip(direct, polygraphy, ort):
        assert np.array_equal(a["regions"], b["regions"]) and np.array_equal(a["regions"], c["regions"])
    reader.rewind()
    assert np.array_equal(reader.get_next()["regions"], direct[0]["regions"])


def test_region_source_folder_of_files(tmp_path: Path) -> None:
    folder = tmp_path / "feats"
    folder.mkdir()
    for i in range(6):
        np.save(folder / f"img{i:02d}.npy", np.full((36, 8), i, np.float32))
    src = RegionFeatureSource(folder, count=None, batch_size=4, expect_shape=[36, 8])
    got = np.concatenate([b["regions"] for b in src.batches()])
    assert got.shape == (6, 36, 8) and np.array_equal(got[:, 0, 0], np.arange(6))


def test_region_source_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        RegionFeatureSource(tmp_path / "missing.npy")
    path = _regions(tmp_path, f=8)
    with pytest.raises(InputError, match=r"per-image shape \[36, 8\].*takes \[36, 2048\]"):
        RegionFeatureSource(path, expect_shape=[36, 2048])
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((4, 8), np.float32))
    with pytest.raises(InputError, match="3 dims"):
        RegionFeatureSource(flat)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="plain numeric"):
        RegionFeatureSource(obj)
    bad = tmp_path / "nan.npy"
    a = np.zeros((3, 36, 8), np.float32)
    a[1, 2, 3] = np.nan
    np.save(bad, a)
    with pytest.raises(InputError, match="NaN"):
        list(RegionFeatureSource(bad).batches())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .npy"):
        RegionFeatureSource(empty)


def test_region_source_never_unpickles(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # noqa: ANN204 - would run on unpickling
            return (exec, ("raise SystemExit('pickle executed')",))

    path = tmp_path / "evil.npy"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(InputError):
        RegionFeatureSource(path)


def _tok(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(t.split()) + 2 for t in texts], np.int64)
    toks = np.zeros((len(texts), int(lens.max())), np.int64)
    for i, n in enumerate(lens):
        toks[i, :n] = np.arange(1, n + 1)
    return toks, lens


def test_caption_source_tokenizes_the_sample(tmp_path: Path) -> None:
    caps = tmp_path / "train_caps.txt"
    caps.write_text("\n".join(f"caption number {i} " + "word " * (i % 5) for i in range(30)) + "\n\n")
    src = CaptionSource(caps, _tok, count=7, seed=2, batch_size=3)
    batches = list(src.batches())
    assert [b["tokens"].shape[0] for b in batches] == [3, 3, 1]
    assert set(batches[0]) == {"tokens", "lengths"}
    chosen = [src.captions[i] for i in sample_indices(30, 7, 2)]
    assert np.array_equal(np.concatenate([b["lengths"] for b in batches]), _tok(chosen)[1])
    assert src.digest() == CaptionSource(caps, _tok, count=7, seed=2, batch_size=3).digest()
    with pytest.raises(InputError, match="takes"):
        list(CaptionSource(caps, _tok, input_names=["tokens"], count=2).batches())


def test_caption_source_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        CaptionSource(tmp_path / "nope.txt", _tok)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(InputError, match="no captions"):
        CaptionSource(blank, _tok)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="UTF-8"):
        CaptionSource(binary, _tok)


def test_random_source_follows_specs() -> None:
    specs = [
        TensorSpec("tokens", "int64", ["batch", "seq"], [1, 2], [32, 16], [128, 64]),
        TensorSpec("lengths", "int64", ["batch"], [1], [32], [128]),
    ]
    src = RandomSource("text", specs, count=10, seed=0, batch_size=4, vocab_size=50, seq_len=9)
    batches = list(src.batches())
    assert [b["tokens"].shape for b in batches] == [(4, 9), (4, 9), (2, 9)]
    for b in batches:
        assert b["lengths"].max() <= 9 and b["lengths"].min() >= 2 and b["tokens"].max() < 50
        steps = np.arange(9)[None]
        assert np.all(b["tokens"][steps >= b["lengths"][:, None]] == 0)
    vis = RandomSource("visual", [TensorSpec("regions", "float32", ["batch", 36, 8])], count=3, batch_size=8)
    (b,) = list(vis.batches())
    assert b["regions"].shape == (3, 36, 8) and b["regions"].min() >= 0


def test_array_source_and_errors() -> None:
    src = ArraySource("x", {"a": np.arange(10), "b": np.arange(10) * 2}, batch_size=4)
    assert [len(b["a"]) for b in src.batches()] == [4, 4, 2]
    with pytest.raises(InputError, match="different lengths"):
        ArraySource("x", {"a": np.arange(3), "b": np.arange(4)})


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        ImageFolderSource(tmp_path / "none", tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no images"):
        ImageFolderSource(tmp_path / "imgs", tmp_path)


def test_recording_backend_keeps_copies() -> None:
    class Echo:
        name = "echo"
        inputs: list = []
        outputs: list = []

        def run(self, feeds):  # noqa: ANN001, ANN202
            feeds["x"][...] = -1  # a backend that scribbles on its input must not change the record
            return {"y": feeds["x"]}

    rec = _RecordingBackend(Echo())
    rec.run({"x": np.ones(3)})
    assert np.array_equal(rec.calls[0]["x"], np.ones(3)) and rec.name == "echo"
