"""Pairwise re-ranking hook: global top-k by embedding similarity, then a model's pairwise scorer on the shortlist.

Any model with a pairwise score slots in by implementing :class:`PairScorer` — ``score(query_item,
candidate_ids) -> local scores`` — and :func:`two_stage_search` ranks the shortlist by the fused score
``S = S_G + μ·S_L``. For VSR++ (:mod:`vsrt.runtime.pairwise`), :class:`PairwiseModelScorer` adapts its
``pair_scorer`` stage: the query item is a caption's word features, the candidates' region features come from the
gallery (indexed with ``--store-local``) or any array. No torch.

Two-stage retrieval returns exactly the fused ranking whenever the fused top results lie inside the global
shortlist; ``benchmarks/rerank.py`` measures recall and latency against the shortlist size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vsrt.errors import InputError


@runtime_checkable
class PairScorer(Protocol):
    """Scores one query against candidate gallery items with a pairwise (cross-attention) model."""

    def score(self, query_item: Any, candidate_ids: np.ndarray) -> np.ndarray:
        """Local scores ``S_L`` (float32, one per candidate id, same order)."""
        ...


@dataclass
class RerankResult:
    """Per query (rows), the re-ranked top-k: gallery ``indices`` and their ``fused``, ``global_scores`` and
    ``local_scores``, best fused first. Rows shorter than k are padded with index -1 and score -inf."""

    indices: np.ndarray
    fused: np.ndarray
    global_scores: np.ndarray
    local_scores: np.ndarray

    def to_json(self, keys: Sequence[str] | None = None) -> list[list[dict[str, Any]]]:
        out = []
        for q in range(len(self.indices)):
            row = []
            for r, i in enumerate(self.indices[q]):
                if i < 0:
                    continue
                hit = {"rank": r + 1, "index": int(i), "fused": float(self.fused[q, r]),
                       "global": float(self.global_scores[q, r]), "local": float(self.local_scores[q, r])}
                if keys is not None:
                    hit["key"] = keys[int(i)]
                row.append(hit)
            out.append(row)
        return out


def _shortlist(global_scores: Any, k_shortlist: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [M, K], indices [M, K])`` from a full ``[M, N]`` score matrix, a ``SearchResult`` or a
    ``(scores, indices)`` pair already sorted best first."""
    if hasattr(global_scores, "scores") and hasattr(global_scores, "indices"):
        s, i = np.asarray(global_scores.scores), np.asarray(global_scores.indices)
    elif isinstance(global_scores, tuple) and len(global_scores) == 2:
        s, i = np.asarray(global_scores[0]), np.asarray(global_scores[1])
    else:
        g = np.asarray(global_scores, np.float32)
        if g.ndim == 1:
            g = g[None]
        if g.ndim != 2:
            raise InputError(f"global scores must be a [M, N] matrix, got shape {list(g.shape)}")
        kk = min(k_shortlist, g.shape[1])
        part = np.argpartition(-g, kk - 1, axis=1)[:, :kk] if kk < g.shape[1] else np.tile(np.arange(kk), (len(g), 1))
        vals = np.take_along_axis(g, part, axis=1)
        order = np.stack([np.lexsort((p, -v)) for p, v in zip(part, vals)])  # best first, ties: lower index
        return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1).astype(np.int64)
    if s.shape != i.shape or s.ndim != 2:
        raise InputError(f"shortlist scores and indices must be [M, K] alike, got {s.shape} and {i.shape}")
    if s.shape[1] < k_shortlist:
        raise InputError(
            f"the global search returned {s.shape[1]} candidates per query, fewer than the shortlist {k_shortlist}: "
            "search with k >= k_shortlist"
        )
    return s[:, :k_shortlist].astype(np.float32), i[:, :k_shortlist].astype(np.int64)


def two_stage_search(
    global_scores: Any,
    k_shortlist: int,
    scorer: PairScorer,
    mu: float,
    query_items: Sequence[Any],
    k: int | None = None,
) -> RerankResult:
    """Global top-``k_shortlist`` per query, then ``scorer`` on the shortlist; ranked by ``S_G + mu·S_L``.

    Args:
        global_scores: ``[M, N]`` global similarities, or a global search result (``SearchResult`` or
            ``(scores, indices)`` with at least ``k_shortlist`` columns, best first).
        k_shortlist: candidates re-scored per query.
        scorer: the pairwise scorer (:class:`PairScorer`).
        mu: weight of the local score.
        query_items: one item per query row, handed to ``scorer.score`` (e.g. a caption's word features).
        k: results kept per query (default ``k_shortlist``).
    """
    if int(k_shortlist) < 1:
        raise InputError(f"k_shortlist must be >= 1, got {k_shortlist}")
    if not isinstance(scorer, PairScorer):
        raise InputError("scorer must have a score(query_item, candidate_ids) method")
    s, idx = _shortlist(global_scores, int(k_shortlist))
    if len(query_items) != len(s):
        raise InputError(f"{len(query_items)} query items for {len(s)} queries")
    k = int(k or k_shortlist)
    m = len(s)
    out = {name: np.full((m, k), fill, dtype) for name, fill, dtype in
           (("indices", -1, np.int64), ("fused", -np.inf, np.float32), ("global_scores", -np.inf, np.float32),
            ("local_scores", -np.inf, np.float32))}
    for q in range(m):
        valid = idx[q] >= 0
        cand, g = idx[q][valid], s[q][valid]
        if not len(cand):
            continue
        loc = np.asarray(scorer.score(query_items[q], cand), np.float32).reshape(-1)
        if loc.shape != cand.shape:
            raise InputError(f"pairwise scorer returned {loc.shape[0]} scores for {len(cand)} candidates")
        fused = g + np.float32(mu) * loc
        order = np.lexsort((cand, -fused))[:k]
        n = len(order)
        out["indices"][q, :n] = cand[order]
        out["fused"][q, :n] = fused[order]
        out["global_scores"][q, :n] = g[order]
        out["local_scores"][q, :n] = loc[order]
    return RerankResult(**out)


class PairwiseModelScorer:
    """:class:`PairScorer` for a model with a ``pair_scorer`` stage (VSR++): text query → image candidates.

    ``query_item`` is a caption's word features ``[L, D]`` (or ``(words, length)``); candidate region features
    come from ``local`` — a :class:`~vsrt.runtime.gallery.Gallery` indexed with local features, or an array
    ``[N, R, D]`` (memory-mapped is fine).

    Args:
        pairwise: a :class:`vsrt.runtime.pairwise.PairwiseScorer`.
        local: the candidates' local features.
    """

    def __init__(self, pairwise: Any, local: Any) -> None:
        self.pairwise = pairwise
        self.local = local
        self.mu = float(getattr(pairwise, "mu", 0.0))

    def _features(self, ids: np.ndarray) -> np.ndarray:
        if hasattr(self.local, "local_features"):
            return self.local.local_features(ids)
        return np.asarray(self.local[np.asarray(ids, np.int64)], np.float32)

    def score(self, query_item: Any, candidate_ids: np.ndarray) -> np.ndarray:
        words, length = (query_item if isinstance(query_item, tuple) else (query_item, None))
        return self.pairwise.local_scores(self._features(candidate_ids), words, length)
