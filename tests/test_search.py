"""Exact blocked search equals brute force; batch queries; text→image / image→text; faiss; pairwise re-ranking."""

from __future__ import annotations

import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _retrieval_helpers import FakeModel, unit

from vsrt.errors import InputError
from vsrt.runtime.gallery import Gallery
from vsrt.runtime.rerank import PairwiseModelScorer, two_stage_search
from vsrt.runtime.search import (
    DEFAULT_NATIVE_BLOCK_BYTES,
    NATIVE_BLOCKS_PER_THREAD,
    FaissSearcher,
    SearchResult,
    brute_force,
    default_block_rows,
    exact_search,
    native_kernel_info,
    recall_vs_exact,
    search_texts,
)

D = 48
_NATIVE = native_kernel_info()
#: every block kernel; the native one only where it was built (tests/test_scan_kernel.py fails CI if it was not)
KERNELS = [pytest.param("native", marks=pytest.mark.skipif(not _NATIVE["available"],
                                                           reason=f"native kernel not built: {_NATIVE.get('error')}")),
           "ort", "numpy"]


def _gallery(path: Path, storage: str, n: int = 3000, seg: int = 700, seed: int = 0) -> tuple[Gallery, np.ndarray]:
    x = unit(np.random.default_rng(seed), n, D)
    g = Gallery.create(path, D, storage, FakeModel(D))
    for i in range(0, n, seg):
        g.add([f"k{j}" for j in range(i, min(n, i + seg))], x[i : i + seg])
    return Gallery.open(path), x


@pytest.mark.parametrize("storage", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_exact_search_equals_brute_force(tmp_path: Path, storage: str, kernel: str) -> None:
    g, _ = _gallery(tmp_path / "g", storage)
    stored = g.embeddings()  # what the gallery holds (dequantised): brute force over exactly these numbers
    q = unit(np.random.default_rng(1), 17, D)
    ref_s, ref_i = brute_force(stored, q, 25)
    for block_rows, threads in [(None, None), (64, 1), (333, 2), (5000, 3)]:
        res = g.search(q, 25, kernel=kernel, block_rows=block_rows, threads=threads)
        assert res.indices.shape == (17, 25)
        assert np.array_equal(res.indices, ref_i), (block_rows, threads)
        assert np.allclose(res.scores, ref_s, atol=1e-5)
    one = g.search(q[3], 5, kernel=kernel)  # a single query as a vector
    assert np.array_equal(one.indices[0], ref_i[3, :5])


def test_native_blocks_are_large_but_spread_over_the_threads() -> None:
    cap = DEFAULT_NATIVE_BLOCK_BYTES // (2048 * 2)
    assert default_block_rows(2048, np.float16, "native") == cap  # no gallery size given: the byte cap
    assert default_block_rows(2048, np.float16, "native", 1_000_000, 2) == cap  # 1M rows: capped, 16 blocks
    assert default_block_rows(2048, np.float32, "native", 1_000_000, 2) == cap // 2
    assert default_block_rows(2048, np.int8, "native", 1_000_000, 2) == cap * 2
    for total, threads in [(100_000, 2), (60_000, 3), (20_000, 2), (9_999, 4)]:
        rows = default_block_rows(2048, np.float16, "native", total, threads)
        assert rows <= cap and -(-total // rows) >= threads * NATIVE_BLOCKS_PER_THREAD, (total, threads, rows)
    assert default_block_rows(2048, np.float16, "native", 300, 2) == 256  # never below 256 rows per call
    assert default_block_rows(2048, np.float16, "ort", 1_000_000, 2) == default_block_rows(2048, np.float16, "ort")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_search_works_in_a_forked_child_after_the_parent_searched() -> None:
    """The block-scanning pool is process-wide; a forked child (no worker threads) must start its own, not hang."""
    codes = unit(np.random.default_rng(3), 5000, D).astype(np.float16)
    q = unit(np.random.default_rng(4), 3, D)
    ref = exact_search([(0, codes, None)], q, 5, block_rows=256, threads=2)  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_search_into, args=(out, codes, q))
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a process that has threads
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("search in a forked child did not finish within 60 s")
    assert child.exitcode == 0
    got = out.get(timeout=5)
    assert np.array_equal(got, ref[1])


def _search_into(out: Any, codes: np.ndarray, q: np.ndarray) -> None:
    out.put(exact_search([(0, codes, None)], q, 5, block_rows=256, threads=2)[1])


def test_ties_break_by_index_whatever_the_blocks() -> None:
    codes = np.zeros((50, 4), np.float32)
    codes[:, 0] = 1.0  # every item scores the same
    codes[[7, 30], 0] = 2.0
    q = np.array([[1, 0, 0, 0]], np.float32)
    for kernel in ("native", "ort", "numpy") if _NATIVE["available"] else ("ort", "numpy"):
        for rows in (3, 7, 50):
            s, i = exact_search([(0, codes, None)], q, 6, block_rows=rows, kernel=kernel)
            assert i[0].tolist() == [7, 30, 0, 1, 2, 3], (kernel, rows)


def test_edge_cases(tmp_path: Path) -> None:
    g, x = _gallery(tmp_path / "g", "fp16", n=5, seg=5)
    res = g.search(x[:2], 10)
    assert res.indices.shape == (2, 5) and res.indices[0, 0] == 0 and res.indices[1, 0] == 1
    empty = Gallery.create(tmp_path / "e", D, "fp32")
    assert empty.search(x[:1], 3).indices.shape == (1, 0)
    with pytest.raises(InputError, match="k must be"):
        g.search(x[:1], 0)
    with pytest.raises(InputError, match="NaN"):
        g.search(np.full((1, D), np.nan, np.float32), 3)
    with pytest.raises(InputError, match="unknown search kernel"):
        g.search(x[:1], 3, kernel="cuda")


def test_search_result_hits_and_json(tmp_path: Path) -> None:
    g, x = _gallery(tmp_path / "g", "fp32", n=30, seg=30)
    res = g.search(x[[4, 9]], 3)
    hits = res.hits(1)
    assert hits[0]["key"] == "k9" and hits[0]["rank"] == 1 and abs(hits[0]["score"] - 1.0) < 1e-5
    js = res.to_json(["q4", "q9"])
    assert js[0]["query"] == "q4" and js[0]["hits"][0]["key"] == "k4"


def test_text_to_image_and_image_to_text(tmp_path: Path) -> None:
    model = FakeModel(D)
    regions = np.random.default_rng(0).random((40, 36, 8), dtype=np.float32)
    images = Gallery.create(tmp_path / "img", D, "fp16", model)
    images.add([f"im{i}" for i in range(40)], model.encode_regions(regions))
    captions = ["a dog on the beach", "a red car", "a cat on a sofa"]
    texts = Gallery.create(tmp_path / "txt", D, "fp32", model, modality="text")
    texts.add(captions, model.encode_texts(captions))
    t2i = search_texts(images, model, ["a red car"], k=5)
    ref = np.argsort(-(images.embeddings() @ model.encode_texts(["a red car"])[0]), kind="stable")[:5]
    assert t2i.indices[0].tolist() == ref.tolist()
    from vsrt.runtime.search import search_regions

    i2t = search_regions(texts, model, regions[:2], k=3)
    ref = np.argsort(-(model.encode_texts(captions) @ model.encode_regions(regions[:2]).T), axis=0, kind="stable").T
    assert i2t.indices.tolist() == ref.tolist()
    with pytest.raises(InputError, match="not comparable"):
        search_texts(images, FakeModel(D, family="other", sha="1" * 64), ["x"])


def test_faiss_flat_equals_exact_and_ivf_recall_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu (test extra) is not installed")
    g, x = _gallery(tmp_path / "g", "fp32", n=4000, seg=1000)
    rng = np.random.default_rng(2)
    q = x[rng.choice(4000, 50, replace=False)] + 0.3 * unit(rng, 50, D)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = g.search(q, 10)
    flat = FaissSearcher.build(g, "Flat")
    s, i = flat.search(q, 10)
    assert np.array_equal(i, exact.indices) and np.allclose(s, exact.scores, atol=1e-5)
    ivf = FaissSearcher.build(g, "IVF64,Flat", nprobe=1)
    r1 = recall_vs_exact(ivf.search(q, 10)[1], exact.indices)
    ivf.set_nprobe(64)
    r64 = recall_vs_exact(ivf.search(q, 10)[1], exact.indices)
    assert 0.0 < r1 < r64 and r64 == 1.0  # probing every list is exact; one list is not
    # the cached index is reused while the gallery is unchanged and rebuilt after it grows
    c1 = FaissSearcher.load_or_build(g, "Flat")
    ipath, _ = FaissSearcher.cache_paths(g, "Flat")
    mtime = ipath.stat().st_mtime_ns
    assert FaissSearcher.load_or_build(g, "Flat").index.ntotal == c1.index.ntotal == 4000
    assert ipath.stat().st_mtime_ns == mtime
    g.add(["new"], unit(rng, 1, D))
    assert FaissSearcher.load_or_build(g, "Flat").index.ntotal == 4001
    # a damaged cache file (same size) is never read back: it does not match its recorded SHA-256, so it is rebuilt
    data = bytearray(ipath.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ipath.write_bytes(bytes(data))
    rebuilt = FaissSearcher.load_or_build(g, "Flat")
    assert np.array_equal(rebuilt.search(q, 10)[1], g.search(q, 10).indices)
    assert ipath.read_bytes() != bytes(data)


class _TableScorer:
    """Local score = a fixed table lookup, so the expected fused ranking is computable by hand."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.seen: list[int] = []

    def score(self, query_item: int, candidate_ids: np.ndarray) -> np.ndarray:
        self.seen.append(len(candidate_ids))
        return self.table[query_item, candidate_ids]


def test_two_stage_search_reranks_the_shortlist() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((4, 100)).astype(np.float32)
    local = rng.standard_normal((4, 100)).astype(np.float32)
    scorer = _TableScorer(local)
    res = two_stage_search(g, 10, scorer, mu=2.0, query_items=[0, 1, 2, 3], k=5)
    assert scorer.seen == [10, 10, 10, 10]  # only the shortlist is scored
    for q in range(4):
        short = np.argsort(-g[q], kind="stable")[:10]
        fused = g[q, short] + 2.0 * local[q, short]
        want = short[np.argsort(-fused, kind="stable")][:5]
        assert res.indices[q].tolist() == want.tolist()
        assert np.allclose(res.fused[q], g[q, want] + 2.0 * local[q, want])
    full = two_stage_search(g, 100, _TableScorer(local), mu=2.0, query_items=[0, 1, 2, 3], k=100)
    assert full.indices[0].tolist() == np.argsort(-(g[0] + 2 * local[0]), kind="stable").tolist()


def test_two_stage_search_on_a_gallery_result(tmp_path: Path) -> None:
    gal, x = _gallery(tmp_path / "g", "fp32", n=200, seg=200)
    res = gal.search(x[:3], 20)
    local = np.random.default_rng(1).standard_normal((3, 200)).astype(np.float32)
    rr = two_stage_search(res, 20, _TableScorer(local), 0.5, [0, 1, 2], k=10)
    assert rr.indices.shape == (3, 10) and set(rr.indices[0]) <= set(res.indices[0])
    with pytest.raises(InputError, match="fewer than the shortlist"):
        two_stage_search(res, 50, _TableScorer(local), 0.5, [0, 1, 2])
    assert isinstance(res, SearchResult)


def test_pairwise_model_scorer_adapter(tmp_path: Path) -> None:
    class FakePairwise:
        mu = 2.0

        def local_scores(self, region_features: np.ndarray, words: np.ndarray, length: int | None = None):
            return region_features.mean(axis=(1, 2)) * float(np.asarray(words).sum())

    regions = np.random.default_rng(0).standard_normal((10, 4, 6)).astype(np.float32)
    sc = PairwiseModelScorer(FakePairwise(), regions)
    got = sc.score(np.ones((3, 6), np.float32), np.array([4, 1]))
    assert np.allclose(got, regions[[4, 1]].mean(axis=(1, 2)) * 18.0) and sc.mu == 2.0


def test_shard_results_merge_to_the_global_top_k(tmp_path: Path) -> None:
    from vsrt.runtime.search import merge_topk

    g, x = _gallery(tmp_path / "g", "fp16", n=1000, seg=1000)
    q = unit(np.random.default_rng(4), 6, D)
    full = g.search(q, 10)
    parts = []
    for lo, hi in ((0, 300), (300, 650), (650, 1000)):  # three "machines", each with its own slice
        shard = Gallery.create(tmp_path / f"s{lo}", D, "fp16", FakeModel(D))
        shard.add([str(i) for i in range(lo, hi)], x[lo:hi])
        r = shard.search(q, 10)
        parts.append((r.scores, r.indices + lo))
    s, i = merge_topk(parts, 10)
    assert np.array_equal(i, full.indices) and np.allclose(s, full.scores)
