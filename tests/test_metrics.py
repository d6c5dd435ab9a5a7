"""Retrieval metrics (vsrt.eval.metrics) against a brute-force port of the original argsort loops."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from vsrt.errors import InputError
from vsrt.eval import metrics as M


# ---------------------------------------------------------------------------------------- brute-force reference
def ref_i2t(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The original loop (``inds = argsort(S[i])[::-1]``, best of the 5 captions) with a stable descending sort."""
    n = s.shape[0]
    ranks, top1 = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        inds = np.argsort(-s[i], kind="stable")
        ranks[i] = min(int(np.where(inds == j)[0][0]) for j in range(5 * i, 5 * i + 5))
        top1[i] = inds[0]
    return ranks, top1


def ref_t2i(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_cap = s.shape[1]
    ranks, top1 = np.zeros(n_cap, np.int64), np.zeros(n_cap, np.int64)
    for c in range(n_cap):
        inds = np.argsort(-s[:, c], kind="stable")
        ranks[c] = int(np.where(inds == c // 5)[0][0])
        top1[c] = inds[0]
    return ranks, top1


def ref_metrics(ranks: np.ndarray) -> tuple[float, float, float, float, float]:
    r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    return r1, r5, r10, float(np.floor(np.median(ranks)) + 1), float(ranks.mean() + 1)


def ref_rerank_i2t_ranks(s: np.ndarray, k1: int) -> np.ndarray:
    """DSRAN ``rerank.py`` ``i2t_rerank`` + ``acc_i2t2``, written as loops (stable sorts)."""
    n = s.shape[0]
    sort_i2t = np.argsort(-s, axis=1, kind="stable")
    sort_t2i = np.argsort(-s, axis=0, kind="stable")
    out = sort_i2t.copy()
    for i in range(n):
        address = [int(np.where(sort_t2i[:, sort_i2t[i, j]] == i)[0][0]) for j in range(k1)]
        out[i, :k1] = sort_i2t[i, :k1][np.argsort(address, kind="stable")]
    ranks = np.array([min(int(np.where(out[i] == j)[0][0]) for j in range(5 * i, 5 * i + 5)) for i in range(n)])
    return ranks


def check_against_reference(s: np.ndarray) -> None:
    ri, ti = ref_i2t(s)
    rt, tt = ref_t2i(s)
    a, b = M.i2t(s), M.t2i(s)
    np.testing.assert_array_equal(a.ranks, ri)
    np.testing.assert_array_equal(a.top1, ti)
    np.testing.assert_array_equal(b.ranks, rt)
    np.testing.assert_array_equal(b.top1, tt)
    assert (a.r1, a.r5, a.r10, a.medr, a.meanr) == pytest.approx(ref_metrics(ri))
    assert (b.r1, b.r5, b.r10, b.medr, b.meanr) == pytest.approx(ref_metrics(rt))
    m = M.evaluate(s)
    assert m["rsum"] == pytest.approx(sum(ref_metrics(ri)[:3]) + sum(ref_metrics(rt)[:3]))
    assert set(m) == set(M.METRIC_KEYS)


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("n", [1, 3, 17, 60])
def test_random_matrices_match_bruteforce(n: int) -> None:
    rng = np.random.default_rng(n)
    # a signal on the ground-truth pairs so that ranks are spread over 0..N
    s = rng.standard_normal((n, 5 * n)).astype(np.float32)
    s[np.arange(5 * n) // 5, np.arange(5 * n)] += 1.5
    check_against_reference(s)


@pytest.mark.parametrize("levels", [2, 3, 5])
def test_ties_follow_stable_descending_order(levels: int) -> None:
    rng = np.random.default_rng(levels)
    s = rng.integers(0, levels, (40, 200)).astype(np.float64)  # massive ties
    check_against_reference(s)


def test_all_equal_scores_rank_by_index() -> None:
    s = np.zeros((4, 20), np.float32)
    a, b = M.i2t(s), M.t2i(s)
    np.testing.assert_array_equal(a.ranks, [0, 5, 10, 15])  # caption 5i is at position 5i
    np.testing.assert_array_equal(b.ranks, np.arange(20) // 5)  # image c//5 is at position c//5
    np.testing.assert_array_equal(a.top1, 0)
    np.testing.assert_array_equal(b.top1, 0)


def test_blocked_counting_equals_unblocked(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    s = np.round(rng.standard_normal((30, 150)), 1)
    full = M.evaluate(s)
    full_rr = M.rerank_i2t_topk(s, 15)
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 37)  # forces many small blocks in every vectorised loop
    assert M.evaluate(s) == full
    np.testing.assert_array_equal(M.rerank_i2t_topk(s, 15), full_rr)
    check_against_reference(s)


def test_perfect_and_known_metrics() -> None:
    n = 12
    s = np.full((n, 5 * n), -1.0)
    s[np.arange(5 * n) // 5, np.arange(5 * n)] = 1.0
    m = M.evaluate(s)
    assert m["i2t_r1"] == m["t2i_r1"] == 100.0 and m["rsum"] == 600.0
    assert m["i2t_medr"] == m["t2i_medr"] == 1.0 and m["i2t_meanr"] == m["t2i_meanr"] == 1.0
    # hand-computed: ranks [0, 1, 2, 3, 12, 20] → R@1 1/6, R@5 4/6, R@10 4/6, medr floor(2.5)+1 = 3, meanr 38/6 + 1
    r = M.RecallResult.from_ranks(np.array([0, 1, 2, 3, 12, 20]), np.zeros(6))
    assert (r.r1, r.r5, r.r10, r.medr, r.meanr) == pytest.approx((100 / 6, 400 / 6, 400 / 6, 3.0, 38 / 6 + 1))


def test_rsum_is_sum_of_six_recalls() -> None:
    rng = np.random.default_rng(3)
    s = rng.standard_normal((25, 125))
    m = M.evaluate(s)
    six = sum(m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert m["rsum"] == pytest.approx(six)


@pytest.mark.parametrize(("n", "folds"), [(50, 5), (12, 3), (10, 1)])
def test_5fold_is_mean_of_folds(n: int, folds: int) -> None:
    rng = np.random.default_rng(n)
    s = rng.standard_normal((n, 5 * n))
    s[np.arange(5 * n) // 5, np.arange(5 * n)] += 1.0
    res = M.evaluate_5fold(s, folds=folds)
    k = n // folds
    expect = [M.evaluate(s[f * k:(f + 1) * k, 5 * f * k:5 * (f + 1) * k]) for f in range(folds)]
    assert res["folds"] == expect
    for key in M.METRIC_KEYS:
        assert res["mean"][key] == pytest.approx(np.mean([e[key] for e in expect]))
    six = sum(res["mean"][f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert res["mean"]["rsum"] == pytest.approx(six)
    # per-fold matrices from a function give the same
    by_fn = M.evaluate_5fold(lambda f: s[f * k:(f + 1) * k, 5 * f * k:5 * (f + 1) * k], folds=folds)
    assert by_fn == res


def test_5fold_differs_from_pooled_ranking() -> None:
    # out-of-fold distractors hurt the pooled (5K) ranking but not the per-fold (1K) one
    n = 10
    s = np.zeros((n, 5 * n))
    s[np.arange(5 * n) // 5, np.arange(5 * n)] = 1.0
    s[: n // 2, 5 * (n // 2):] = 2.0  # fold-0 images love fold-1 captions
    assert M.evaluate_5fold(s, folds=2)["mean"]["i2t_r1"] == 100.0
    assert M.evaluate(s)["i2t_r1"] == 50.0


def test_5fold_bad_sizes() -> None:
    with pytest.raises(InputError, match="cannot be split into 5"):
        M.evaluate_5fold(np.zeros((12, 60)))
    with pytest.raises(InputError, match="at least 1"):
        M.evaluate_5fold(np.zeros((10, 50)), folds=0)


def test_bad_matrices_are_refused() -> None:
    with pytest.raises(InputError, match="2-D"):
        M.evaluate(np.zeros(10))
    with pytest.raises(InputError, match="expected 5 captions per image"):
        M.evaluate(np.zeros((4, 19)))
    with pytest.raises(InputError, match="NaN"):
        s = np.zeros((2, 10))
        s[1, 3] = np.nan
        M.evaluate(s)
    with pytest.raises(InputError, match="no images"):
        M.evaluate(np.zeros((0, 0)))


def test_ensemble_is_average() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 30)).astype(np.float32)
    b = rng.standard_normal((6, 30)).astype(np.float32)
    e = M.ensemble([a, b])
    assert e.dtype == np.float32
    np.testing.assert_allclose(e, (a + b) / 2, rtol=1e-6)
    assert M.evaluate(e) == M.evaluate(a + b)  # DSRAN sums, VSRN averages: same ranking
    np.testing.assert_array_equal(M.ensemble([a]), a)
    assert M.ensemble([a, b.astype(np.float64)]).dtype == np.float64
    with pytest.raises(InputError, match="shape"):
        M.ensemble([a, a[:, :25]])
    with pytest.raises(InputError, match="at least one"):
        M.ensemble([])


def test_mutual_rank_hand_made_case() -> None:
    # 2 images, 10 captions. Image 0's best caption is 5 (image 1's), its own caption 0 is second.
    # Column 5 ranks image 1 first (image 0 second); column 0 ranks image 0 first → re-ranking puts caption 0 first.
    s = np.zeros((2, 10))
    s[0] = [0.8, 0.1, 0.1, 0.1, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0]
    s[1] = [0.2, 0.0, 0.0, 0.0, 0.0, 0.95, 0.5, 0.5, 0.5, 0.5]
    assert M.i2t(s).ranks.tolist() == [1, 0]
    order = M.rerank_i2t_topk(s, k1=2)
    assert order.tolist() == [[0, 5], [5, 6]]  # image 1: caption 5 ranks it first, caption 6 too → stable
    rr = M.i2t_reranked(s, k1=2)
    assert rr.ranks.tolist() == [0, 0] and rr.top1.tolist() == [0, 5] and rr.r1 == 100.0
    # k1 = 1 cannot change anything
    assert M.i2t_reranked(s, k1=1).ranks.tolist() == [1, 0]
    m = M.mutual_rank_i2t(s, k1=2)
    plain = M.evaluate(s)
    assert m["i2t_r1"] == 100.0 and plain["i2t_r1"] == 50.0
    assert all(m[k] == plain[k] for k in M.METRIC_KEYS if k.startswith("t2i"))  # t2i is not re-ranked
    assert m["rsum"] == pytest.approx(sum(m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))


@pytest.mark.parametrize("k1", [1, 3, 15])
def test_mutual_rank_matches_loop_port(k1: int) -> None:
    rng = np.random.default_rng(k1)
    n = 20
    s = rng.standard_normal((n, 5 * n))
    s[np.arange(5 * n) // 5, np.arange(5 * n)] += 0.8
    np.testing.assert_array_equal(M.i2t_reranked(s, k1).ranks, ref_rerank_i2t_ranks(s, k1))
    s_ties = np.round(s, 0)
    np.testing.assert_array_equal(M.i2t_reranked(s_ties, k1).ranks, ref_rerank_i2t_ranks(s_ties, k1))


def test_format_table_renders_both_kinds() -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal((10, 50))
    con = Console(record=True, width=140)
    m = M.evaluate(s)
    con.print(M.format_table(m, title="plain"))
    text = con.export_text()
    assert "image→text" in text and "text→image" in text and f"rsum = {m['rsum']:.1f}" in text
    assert f"{m['i2t_r10']:.1f}" in text
    f = M.evaluate_5fold(s)
    con.print(M.format_table(f))
    text = con.export_text()
    assert "fold 4" in text and f"{f['mean']['rsum']:.1f}" in text
    with pytest.raises(InputError, match="lacks"):
        M.format_table({"rsum": 1.0})
