"""The SCAN precomputed-layout reader: a good split, and one clear error per bad case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vsrt.data.precomp import load_precomp
from vsrt.errors import InputError


def write_split(d: Path, split: str = "test", n: int = 3, regions: int = 4, dim: int = 6, caps: str | None = None,
                ids: str | None = None, dtype: type = np.float32) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(d / f"{split}_ims.npy", rng.random((n, regions, dim)).astype(dtype))
    if caps is None:
        caps = "".join(f"caption {c} of image {c // 5}\n" for c in range(5 * n))
    (d / f"{split}_caps.txt").write_text(caps, encoding="utf-8")
    if ids is not None:
        (d / f"{split}_ids.txt").write_text(ids, encoding="utf-8")
    return d


def test_good_split(tmp_path: Path) -> None:
    d = write_split(tmp_path, "dev", n=4, ids="".join(f"{100 + i}\n" for i in range(4)))
    sp = load_precomp(d, "dev")
    assert isinstance(sp.images, np.memmap) and not sp.images.flags.writeable
    assert sp.images.shape == (4, 4, 6) and sp.images.dtype == np.float32
    assert (sp.n_images, sp.n_captions, sp.num_regions, sp.feature_dim) == (4, 20, 4, 6)
    assert sp.captions[7] == "caption 7 of image 1"
    assert sp.ids == ["100", "101", "102", "103"]
    assert [sp.image_of_caption(c) for c in (0, 4, 5, 19)] == [0, 0, 1, 3]
    assert sp.captions_of_image(2) == [f"caption {c} of image 2" for c in range(10, 15)]
    with pytest.raises(IndexError):
        sp.image_of_caption(20)


def test_dev_is_not_truncated(tmp_path: Path) -> None:
    d = write_split(tmp_path, "dev", n=1001, regions=1, dim=1)
    sp = load_precomp(d, "dev")
    assert sp.n_images == 1001 and sp.n_captions == 5005


def test_strip_trailing_newline_crlf_and_bom(tmp_path: Path) -> None:
    caps = "\ufeff" + "".join(f"  cap {c}\t\r\n" for c in range(5))
    sp = load_precomp(write_split(tmp_path, n=1, caps=caps), "test")
    assert sp.captions == [f"cap {c}" for c in range(5)]
    no_final_newline = "\n".join(f"cap {c}" for c in range(5))
    sp = load_precomp(write_split(tmp_path / "b", n=1, caps=no_final_newline), "test")
    assert sp.captions[-1] == "cap 4"
    assert sp.ids is None


def test_ids_per_caption_accepted(tmp_path: Path) -> None:
    d = write_split(tmp_path, n=2, ids="".join(f"{i}\n" for i in range(10)))
    assert len(load_precomp(d, "test").ids or []) == 10


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset directory not found"):
        load_precomp(tmp_path / "nope", "test")
    d = write_split(tmp_path, "train")
    with pytest.raises(InputError) as e:
        load_precomp(d, "test")
    assert "test_ims.npy" in str(e.value) and "test_caps.txt" in str(e.value) and "train" in str(e.value)
    (d / "train_caps.txt").unlink()
    with pytest.raises(InputError, match="train_caps.txt"):
        load_precomp(d, "train")


def test_caption_count_mismatch_says_both_numbers(tmp_path: Path) -> None:
    d = write_split(tmp_path, n=3, caps="".join(f"c{i}\n" for i in range(14)))
    with pytest.raises(InputError) as e:
        load_precomp(d, "test")
    msg = str(e.value)
    assert "14 captions" in msg and "3 images" in msg and "15" in msg


def test_wrong_ndim_and_dtype(tmp_path: Path) -> None:
    d = write_split(tmp_path, n=2)
    np.save(d / "test_ims.npy", np.zeros((2, 36 * 6), np.float32))
    with pytest.raises(InputError, match="2-D.*3-D"):
        load_precomp(d, "test")
    np.save(d / "test_ims.npy", np.zeros((2, 4, 6), np.float64))
    with pytest.raises(InputError, match="dtype float64; expected float32"):
        load_precomp(d, "test")
    np.save(d / "test_ims.npy", np.zeros((0, 4, 6), np.float32))
    with pytest.raises(InputError, match="empty"):
        load_precomp(d, "test")


def test_not_an_npy_file(tmp_path: Path) -> None:
    d = write_split(tmp_path, n=2)
    (d / "test_ims.npy").write_bytes(b"this is not numpy")
    with pytest.raises(InputError, match="test_ims.npy"):
        load_precomp(d, "test")
    np.save(d / "test_ims.npy", np.array([{"a": 1}, None], dtype=object))  # a pickled object array
    with pytest.raises(InputError, match="not a plain .npy"):
        load_precomp(d, "test")
    full = d / "full.npy"
    np.save(full, np.zeros((2, 4, 6), np.float32))
    (d / "test_ims.npy").write_bytes(full.read_bytes()[:-40])  # truncated data
    with pytest.raises(InputError, match="test_ims.npy"):
        load_precomp(d, "test")


def test_empty_lines_are_refused_with_line_numbers(tmp_path: Path) -> None:
    lines = [f"c{i}" for i in range(10)]
    lines[3] = "   "
    lines[7] = ""
    d = write_split(tmp_path, n=2, caps="\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"empty lines \(line 4, 8\)"):
        load_precomp(d, "test")
    # a blank line at the end is an extra (empty) caption, not a terminator
    d2 = write_split(tmp_path / "b", n=1, caps="".join(f"c{i}\n" for i in range(5)) + "\n")
    with pytest.raises(InputError, match="line 6"):
        load_precomp(d2, "test")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    d = write_split(tmp_path, n=1)
    (d / "test_caps.txt").write_bytes(b"a\nb\nca\xe9f\xe9\nd\ne\n")  # latin-1 'café'
    with pytest.raises(InputError, match=r"not UTF-8: byte 0xe9 .*line 3"):
        load_precomp(d, "test")


def test_ids_of_wrong_length(tmp_path: Path) -> None:
    d = write_split(tmp_path, n=2, ids="1\n2\n3\n")
    with pytest.raises(InputError, match="3 lines; expected one id per image \\(2\\) or per caption \\(10\\)"):
        load_precomp(d, "test")
