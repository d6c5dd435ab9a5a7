"""Image–text retrieval metrics with the original protocol (VSE++ / SCAN / VSRN ``evaluation.py``). numpy only.

The similarity matrix is ``sims[N_img, 5·N_img]``: row ``i`` is image ``i``, column ``c`` is caption ``c``, and the
ground-truth captions of image ``i`` are ``5i … 5i+4`` (caption ``c`` belongs to image ``c // 5``).

* **i2t** (caption retrieval, image → text): the rank of image ``i`` is the best (smallest) position of any of its
  five captions in the row sorted by decreasing similarity.
* **t2i** (image retrieval, text → image): the rank of caption ``c`` is the position of image ``c // 5`` in the
  column sorted by decreasing similarity.
* ``R@K = 100 · mean(rank < K)`` for K ∈ {1, 5, 10}; ``medr = floor(median(rank)) + 1``; ``meanr = mean(rank) + 1``.
* ``rsum`` is the sum of the six recalls. (The original 5-fold code prints a mislabelled "rsum"; we do not copy it.)

**Tie rule.** The original code ranks with ``numpy.argsort(...)[::-1]`` whose order among exactly equal scores is
unspecified. Here positions are those of a *stable descending* sort — ``numpy.argsort(-row, kind="stable")`` — i.e.
among equal scores the lower index comes first. The position of item ``j`` in a row ``s`` is therefore
``#{k : s[k] > s[j]} + #{k < j : s[k] == s[j]}``, which is what the vectorised code counts (without sorting). Ties
never matter for real fp32 scores but can for fp16 / int8 similarities or synthetic matrices.

NaN scores are refused (:class:`~vsrt.errors.InputError`): they have no place in a ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vsrt.errors import InputError

if TYPE_CHECKING:
    from rich.table import Table

CAPTIONS_PER_IMAGE = 5
RECALL_KS = (1, 5, 10)
METRIC_KEYS = (
    "i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
    "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr",
    "rsum",
)
#: elements compared per block in the vectorised rank counting (bounds the temporary boolean arrays)
_BLOCK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class RecallResult:
    """Retrieval metrics in one direction plus the per-query ranks (0-based) and top-1 retrieved indices."""

    r1: float
    r5: float
    r10: float
    medr: float
    meanr: float
    ranks: np.ndarray  # int64 [queries]: 0-based position of the (best) ground truth
    top1: np.ndarray  # int64 [queries]: index of the item ranked first

    @classmethod
    def from_ranks(cls, ranks: np.ndarray, top1: np.ndarray) -> RecallResult:
        """Metrics of 0-based ``ranks`` exactly as the original code computes them."""
        ranks = np.asarray(ranks, dtype=np.int64)
        if ranks.size == 0:
            raise InputError("no queries to evaluate (empty similarity matrix)")
        r1, r5, r10 = (100.0 * float(np.mean(ranks < k)) for k in RECALL_KS)
        medr = float(np.floor(np.median(ranks)) + 1)
        meanr = float(ranks.mean() + 1)
        return cls(r1, r5, r10, medr, meanr, ranks, np.asarray(top1, dtype=np.int64))

    @property
    def recall_sum(self) -> float:
        """R@1 + R@5 + R@10 of this direction."""
        return self.r1 + self.r5 + self.r10

    def as_dict(self, prefix: str) -> dict[str, float]:
        """``{prefix_r1, prefix_r5, prefix_r10, prefix_medr, prefix_meanr}``."""
        return {f"{prefix}_r1": self.r1, f"{prefix}_r5": self.r5, f"{prefix}_r10": self.r10,
                f"{prefix}_medr": self.medr, f"{prefix}_meanr": self.meanr}


def check_sims(sims: Any, per_image: int = CAPTIONS_PER_IMAGE, what: str = "similarity matrix") -> np.ndarray:
    """``sims`` as a 2-D float array of shape ``[N, per_image·N]`` (N ≥ 1) without NaN, or :class:`InputError`."""
    s = np.asarray(sims)
    if s.ndim != 2:
        raise InputError(f"{what} must be 2-D [images, captions], got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
            raise InputError(f"{what} must hold real numbers, got dtype {s.dtype}")
        s = s.astype(np.float64)
    n_img, n_cap = s.shape
    if n_img == 0:
        raise InputError(f"{what} has no images (shape {s.shape})")
    if n_cap != per_image * n_img:
        raise InputError(
            f"{what} has shape {s.shape}: {n_cap} captions for {n_img} images, expected {per_image} captions per "
            f"image ({per_image * n_img} columns; caption c belongs to image c // {per_image})"
        )
    if np.isnan(s).any():
        raise InputError(f"{what} contains NaN scores ({int(np.isnan(s).sum())} of {s.size}); cannot rank them")
    return s


def _positions_in_rows(s: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Stable-descending position of ``s[r, cols[r]]`` within row ``r`` of ``s``, for every row."""
    n_rows, n_cols = s.shape
    out = np.empty(n_rows, dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    col_index = np.arange(n_cols)
    for a in range(0, n_rows, block):
        b = min(a + block, n_rows)
        rows = s[a:b]
        c = cols[a:b]
        target = rows[np.arange(b - a), c][:, None]
        greater = (rows > target).sum(axis=1)
        equal_before = ((rows == target) & (col_index[None, :] < c[:, None])).sum(axis=1)
        out[a:b] = greater + equal_before
    return out


def i2t(sims: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> RecallResult:
    """Caption retrieval: for image ``i`` the best position of its captions ``5i … 5i+4`` (see module docstring).

    The best-placed ground truth is the one with the highest score (lowest index among equal scores), so only its
    position is counted: ``O(N · 5N)`` comparisons, no sort.
    """
    s = check_sims(sims, per_image)
    n = s.shape[0]
    gt = s.reshape(n, n, per_image)[np.arange(n), np.arange(n)]  # [N, per_image]: scores of own captions
    best = per_image * np.arange(n) + np.argmax(gt, axis=1)  # argmax → first maximum = lowest index
    ranks = _positions_in_rows(s, best)
    return RecallResult.from_ranks(ranks, np.argmax(s, axis=1))


def _positions_in_columns(s: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Stable-descending position of ``s[rows[c], c]`` within column ``c`` of ``s``, for every column."""
    n_rows, n_cols = s.shape
    out = np.empty(n_cols, dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n_rows, 1))
    row_index = np.arange(n_rows)[:, None]
    for a in range(0, n_cols, block):
        b = min(a + block, n_cols)
        cols = s[:, a:b]
        r = rows[a:b]
        target = cols[r, np.arange(b - a)][None, :]
        greater = (cols > target).sum(axis=0)
        equal_before = ((cols == target) & (row_index < r[None, :])).sum(axis=0)
        out[a:b] = greater + equal_before
    return out


def t2i(sims: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> RecallResult:
    """Image retrieval: for caption ``c`` the position of image ``c // 5`` in its column (see module docstring)."""
    s = check_sims(sims, per_image)
    ranks = _positions_in_columns(s, np.arange(s.shape[1]) // per_image)
    return RecallResult.from_ranks(ranks, np.argmax(s, axis=0))


def metrics_dict(r_i2t: RecallResult, r_t2i: RecallResult) -> dict[str, float]:
    """The flat metric dict (keys :data:`METRIC_KEYS`) of two directions; ``rsum`` = sum of the six recalls."""
    out = {**r_i2t.as_dict("i2t"), **r_t2i.as_dict("t2i")}
    out["rsum"] = r_i2t.recall_sum + r_t2i.recall_sum
    return out


def evaluate(sims: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, float]:
    """All metrics of one similarity matrix ``[N, 5N]`` (all images ranked together, e.g. F30K 1K or COCO 5K).

    Returns floats under :data:`METRIC_KEYS`: ``i2t_r1 … i2t_meanr``, ``t2i_r1 … t2i_meanr`` and ``rsum``.
    """
    s = check_sims(sims, per_image)
    return metrics_dict(i2t(s, per_image), t2i(s, per_image))


def evaluate_5fold(
    sims: np.ndarray | Callable[[int], np.ndarray],
    folds: int = 5,
    per_image: int = CAPTIONS_PER_IMAGE,
) -> dict[str, Any]:
    """The COCO 1K protocol: metrics per fold and their mean (averaged over folds, never pooled ranks).

    ``sims`` is either the full ``[N, 5N]`` matrix with ``N`` divisible by ``folds`` — fold ``f`` is images
    ``f·n … (f+1)·n−1`` against captions ``5f·n … 5(f+1)·n−1`` with ``n = N / folds`` (COCO 5K → five 1000-image
    folds) — or a function ``fold -> [n, 5n]`` giving each fold's matrix (so the full matrix never has to exist).

    Returns ``{"folds": [metrics, …], "mean": metrics}`` where each ``metrics`` is an :func:`evaluate` dict; the
    mean's ``rsum`` equals the sum of its six mean recalls.
    """
    if folds < 1:
        raise InputError(f"number of folds must be at least 1, got {folds}")
    if callable(sims):
        per_fold = [evaluate(sims(f), per_image) for f in range(folds)]
    else:
        s = check_sims(sims, per_image)
        n_img = s.shape[0]
        if n_img % folds:
            raise InputError(f"{n_img} images cannot be split into {folds} equal folds")
        n = n_img // folds
        per_fold = [
            evaluate(s[f * n:(f + 1) * n, per_image * f * n:per_image * (f + 1) * n], per_image) for f in range(folds)
        ]
    mean = {k: float(np.mean([m[k] for m in per_fold])) for k in METRIC_KEYS}
    return {"folds": per_fold, "mean": mean}


def ensemble(sims_list: Sequence[np.ndarray]) -> np.ndarray:
    """Average of several similarity matrices of the same shape (the published VSRN / SCAN / DSRAN ensembles).

    The original scripts add the matrices (DSRAN) or average them (VSRN); both give the same ranking. The result is
    float64 if any input is, else float32.
    """
    if len(sims_list) == 0:
        raise InputError("ensemble needs at least one similarity matrix")
    arrays = [np.asarray(s) for s in sims_list]
    shape = arrays[0].shape
    for k, a in enumerate(arrays):
        if a.shape != shape:
            raise InputError(f"ensemble: similarity matrix {k} has shape {a.shape}, matrix 0 has {shape}")
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise InputError(f"ensemble: similarity matrix {k} has non-real dtype {a.dtype}")
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32
    out = np.array(arrays[0], dtype=dtype, copy=True)
    for a in arrays[1:]:
        out += a
    out /= len(arrays)
    return out


def _stable_topk_rows(s: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` indices of each row under the stable descending order, ``[rows, k]``."""
    out = np.empty((s.shape[0], k), dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(s.shape[1], 1))
    for a in range(0, s.shape[0], block):
        out[a:a + block] = np.argsort(-s[a:a + block], axis=1, kind="stable")[:, :k]
    return out


def rerank_i2t_topk(sims: np.ndarray, k1: int = 15, per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """DSRAN's mutual-rank i2t re-ranking (``rerank.py`` ``i2t_rerank``, from MTFN): the re-ordered shortlists.

    For image ``i``, take its top ``k1`` captions (stable descending order of ``sims[i]``); for each such caption
    ``t`` compute ``rank_t2i(i, t)`` = the stable-descending position of image ``i`` in column ``t``; re-sort the
    ``k1`` captions by that position, ascending (stable: equal positions keep their similarity order). Returns
    the re-ordered caption indices ``[N, min(k1, 5N)]``; positions from ``k1`` on are unchanged by the method.
    """
    s = check_sims(sims, per_image)
    n_img, n_cap = s.shape
    if k1 < 1:
        raise InputError(f"k1 must be at least 1, got {k1}")
    k = min(k1, n_cap)
    top = _stable_topk_rows(s, k)  # [N, k]
    # position of image i in column t = #{j : s[j,t] > s[i,t]} + #{j < i : s[j,t] == s[i,t]}
    address = np.empty((n_img, k), dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n_img * k, 1))
    img_index = np.arange(n_img)
    for a in range(0, n_img, block):
        b = min(a + block, n_img)
        rows = np.arange(a, b)
        cols = top[a:b]  # [B, k]
        target = s[rows[:, None], cols]  # [B, k]
        column = s[:, cols]  # [N, B, k]
        greater = (column > target[None]).sum(axis=0)
        equal_before = ((column == target[None]) & (img_index[:, None, None] < rows[None, :, None])).sum(axis=0)
        address[a:b] = greater + equal_before
    order = np.argsort(address, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def i2t_reranked(sims: np.ndarray, k1: int = 15, per_image: int = CAPTIONS_PER_IMAGE) -> RecallResult:
    """i2t metrics after :func:`rerank_i2t_topk`: the rank of image ``i`` is the best position of its captions in
    the re-ordered list (the re-sorted top ``k1`` followed by the unchanged rest, as ``acc_i2t2`` reads it).

    If no ground-truth caption is in the top ``k1`` the rank is the plain i2t rank (≥ k1); the top-1 is the first
    caption of the re-ordered list.
    """
    s = check_sims(sims, per_image)
    n_img = s.shape[0]
    order = rerank_i2t_topk(s, k1, per_image)
    plain = i2t(s, per_image)
    is_gt = (order // per_image) == np.arange(n_img)[:, None]  # [N, k]
    first_gt = np.argmax(is_gt, axis=1)
    ranks = np.where(is_gt.any(axis=1), first_gt, plain.ranks)
    return RecallResult.from_ranks(ranks, order[:, 0])


def mutual_rank_i2t(sims: np.ndarray, k1: int = 15, per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, float]:
    """Metrics with DSRAN's i2t mutual-rank re-ranking: an :func:`evaluate`-style dict whose ``i2t_*`` entries come
    from :func:`i2t_reranked` and whose ``t2i_*`` entries are the plain ones (DSRAN's t2i re-ranking is commented out
    in its ``rerank.py``, and its reported numbers use plain t2i); ``rsum`` sums the six. ``k1=15`` as in DSRAN.
    """
    s = check_sims(sims, per_image)
    return metrics_dict(i2t_reranked(s, k1, per_image), t2i(s, per_image))


def format_table(metrics: dict[str, Any], title: str | None = None) -> Table:
    """A rich table of an :func:`evaluate` dict (rows i2t / t2i; R@1, R@5, R@10, medr, meanr; rsum in the caption)
    or of an :func:`evaluate_5fold` result (one row pair per fold, then the mean)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("", "direction", "R@1", "R@5", "R@10", "medr", "meanr"):
        table.add_column(col, justify="left" if col in ("", "direction") else "right")

    def add(m: dict[str, Any], label: str, bold: bool = False) -> None:
        missing = [k for k in METRIC_KEYS if k not in m]
        if missing:
            raise InputError(f"metrics dict lacks {', '.join(missing)}")
        for d, name in (("i2t", "image→text"), ("t2i", "text→image")):
            row = [label if d == "i2t" else "", name, *(f"{m[f'{d}_r{k}']:.1f}" for k in RECALL_KS),
                   f"{m[f'{d}_medr']:g}", f"{m[f'{d}_meanr']:.1f}"]
            table.add_row(*row, style="bold" if bold else None)

    if "folds" in metrics and "mean" in metrics:
        for f, m in enumerate(metrics["folds"]):
            add(m, f"fold {f} (rsum {m['rsum']:.1f})")
        table.add_section()
        add(metrics["mean"], f"mean (rsum {metrics['mean']['rsum']:.1f})", bold=True)
        table.caption = f"rsum (mean over {len(metrics['folds'])} folds) = {metrics['mean']['rsum']:.1f}"
    else:
        add(metrics, "")
        table.caption = f"rsum = {metrics['rsum']:.1f}"
    return table
