"""Pairwise (VSR++-style) scoring at run time: the ``pair_scorer`` stage on a shortlist, the fused score
``S = S_G + μ·S_L`` and two-stage retrieval (global top-k, then fused re-ranking). numpy + the model's backends;
no torch.

``S_G`` (cosine of the cached global embeddings) ranks every candidate with one matrix product; the local score
``S_L`` needs a cross-attention pass per (image, caption) pair, so it is computed only for the ``k`` best candidates
by ``S_G``. Re-ranking returns exactly the fused ranking whenever the fused top results lie inside the global top-k;
``benchmarks/rerank.py`` measures recall and latency against ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vsrt.errors import InputError
from vsrt.runtime.model import RetrievalModel

PAIR_STAGE = "pair_scorer"
#: added to re-ranked entries in :func:`two_stage_matrix` so they rank above every candidate left out of the shortlist
SHORTLIST_OFFSET = 1.0e4


@dataclass
class ImageItems:
    """Cached per-image outputs of the ``visual`` stage: ``embeddings [N, D]`` (v_G), ``region_features [N, R, D]``
    (V_L)."""

    embeddings: np.ndarray
    region_features: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass
class CaptionItems:
    """Cached per-caption outputs of the ``text`` stage: ``embeddings [M, D]`` (t_G), ``word_features [M, L, D]``
    (W, zero-padded), ``lengths [M]``."""

    embeddings: np.ndarray
    word_features: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)

    def words(self, index: int) -> np.ndarray:
        """Word features of caption ``index`` cut to its length, ``[1, len, D]``."""
        n = int(self.lengths[index])
        return np.ascontiguousarray(self.word_features[index : index + 1, :n], dtype=np.float32)


@dataclass
class Reranked:
    """One query's two-stage result, best first: candidate ``indices`` with their fused, global and local scores."""

    indices: np.ndarray
    fused: np.ndarray
    global_scores: np.ndarray
    local_scores: np.ndarray


def encode_image_items(model: RetrievalModel, regions: np.ndarray, batch_size: int = 32) -> ImageItems:
    """Region features ``[N, R, F]`` → :class:`ImageItems` (both outputs of the ``visual`` stage)."""
    out = model.encode_regions_full(regions, batch_size)
    if "region_features" not in out:
        raise InputError(f"model '{model.family}' has no 'region_features' output in its visual stage")
    return ImageItems(out["embedding"], out["region_features"])


def encode_caption_items(model: RetrievalModel, captions: Sequence[str], batch_size: int = 128) -> CaptionItems:
    """Captions → :class:`CaptionItems` (both outputs of the ``text`` stage, and the token lengths)."""
    captions = list(captions)
    if not captions:
        raise InputError("no captions to encode")
    out = model.encode_texts_full(captions, batch_size)
    if "word_features" not in out:
        raise InputError(f"model '{model.family}' has no 'word_features' output in its text stage")
    lengths = np.concatenate([model.tokenize(captions[i : i + batch_size])[1]
                              for i in range(0, len(captions), batch_size)]).astype(np.int64)
    return CaptionItems(out["embedding"], out["word_features"], lengths)


class PairwiseScorer:
    """Runs a model's ``pair_scorer`` stage and fuses scores.

    Args:
        model: an opened model whose manifest has a ``pair_scorer`` stage (VSR++).
        mu: weight of the local score; default the model config's ``mu`` (2.0 for VSR++).
        chunk: most pairs per call; default the stage's TensorRT profile maximum (256).
    """

    def __init__(self, model: RetrievalModel, mu: float | None = None, chunk: int | None = None) -> None:
        if PAIR_STAGE not in model.manifest.stages:
            raise InputError(
                f"model family '{model.family}' has no '{PAIR_STAGE}' stage: it is a dual encoder, rank by the "
                "global similarity alone (or export the model first)"
            )
        self.model = model
        self.mu = float(model.info.config.get("mu", 2.0) if mu is None else mu)
        spec = model.manifest.stage(PAIR_STAGE).inputs[0]
        self.chunk = int(chunk or (spec.max[0] if spec.max else 256))
        if self.chunk < 1:
            raise InputError(f"chunk must be >= 1, got {self.chunk}")

    @staticmethod
    def _check_regions(region_features: np.ndarray) -> np.ndarray:
        r = np.asarray(region_features, dtype=np.float32)
        if r.ndim != 3:
            raise InputError(f"region_features must have shape [k, R, D], got {list(r.shape)}")
        return r

    def local_scores(self, region_features: np.ndarray, words: np.ndarray, length: int | None = None) -> np.ndarray:
        """``S_L`` of one caption against ``k`` images.

        Args:
            region_features: ``[k, R, D]`` (V_L of the candidates).
            words: the caption's word features, ``[L, D]`` or ``[1, L, D]``.
            length: valid words (default ``L``).
        """
        r = self._check_regions(region_features)
        w = np.asarray(words, dtype=np.float32)
        if w.ndim == 2:
            w = w[None]
        if w.ndim != 3 or w.shape[0] != 1:
            raise InputError(f"words must have shape [L, D] or [1, L, D], got {list(np.shape(words))}")
        n = int(w.shape[1] if length is None else length)
        if not 1 <= n <= w.shape[1]:
            raise InputError(f"caption length {n} is outside 1..{w.shape[1]}")
        w = np.ascontiguousarray(w[:, :n])
        lengths = np.array([n], np.int64)
        stage = self.model.stage(PAIR_STAGE)
        out = [stage.run({"region_features": np.ascontiguousarray(r[i : i + self.chunk]), "word_features": w,
                          "lengths": lengths})["score"] for i in range(0, len(r), self.chunk)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def caption_scores(self, region_features: np.ndarray, captions: CaptionItems, indices: Sequence[int]
                       ) -> np.ndarray:
        """``S_L`` of one image (``region_features [R, D]`` or ``[1, R, D]``) with the captions ``indices``: one
        ``pair_scorer`` call per caption (the graph scores one caption against k images)."""
        r = np.asarray(region_features, dtype=np.float32)
        if r.ndim == 2:
            r = r[None]
        if r.ndim != 3 or r.shape[0] != 1:
            raise InputError(
                f"region_features of one image must have shape [R, D], got {list(np.shape(region_features))}"
            )
        r = np.ascontiguousarray(r)
        stage = self.model.stage(PAIR_STAGE)
        out = np.empty(len(indices), np.float32)
        for j, c in enumerate(indices):
            n = int(captions.lengths[c])
            out[j] = stage.run({"region_features": r, "word_features": captions.words(int(c)),
                                "lengths": np.array([n], np.int64)})["score"][0]
        return out

    def fuse(self, global_scores: np.ndarray, local_scores: np.ndarray) -> np.ndarray:
        """``S_G + μ·S_L``."""
        return np.asarray(global_scores, np.float32) + np.float32(self.mu) * np.asarray(local_scores, np.float32)

    # ------------------------------------------------------------------ two-stage retrieval
    def rerank_images(self, captions: CaptionItems, index: int, images: ImageItems, k: int) -> Reranked:
        """Images for caption ``index``: the ``k`` best by ``S_G``, re-ranked by the fused score."""
        g = images.embeddings @ captions.embeddings[index]
        top = _top_k(g, k)
        loc = self.local_scores(images.region_features[top], captions.words(index))
        return _reranked(top, g[top], loc, self.fuse(g[top], loc))

    def rerank_captions(self, images: ImageItems, index: int, captions: CaptionItems, k: int) -> Reranked:
        """Captions for image ``index``: the ``k`` best by ``S_G``, re-ranked by the fused score."""
        g = captions.embeddings @ images.embeddings[index]
        top = _top_k(g, k)
        loc = self.caption_scores(images.region_features[index], captions, top)
        return _reranked(top, g[top], loc, self.fuse(g[top], loc))

    def local_matrix(self, images: ImageItems, captions: CaptionItems,
                     progress: Callable[[str, int, int], None] | None = None) -> np.ndarray:
        """``S_L`` of every image with every caption, ``[N_img, N_cap]`` (one ``pair_scorer`` pass per caption and
        chunk of images: the cost the shortlist avoids)."""
        out = np.empty((len(images), len(captions)), np.float32)
        for c in range(len(captions)):
            out[:, c] = self.local_scores(images.region_features, captions.words(c))
            if progress and ((c + 1) % 50 == 0 or c + 1 == len(captions)):
                progress("pairs", c + 1, len(captions))
        return out

    def fused_matrix(self, images: ImageItems, captions: CaptionItems,
                     progress: Callable[[str, int, int], None] | None = None) -> np.ndarray:
        """The full fused score matrix ``S_G + μ·S_L``, ``[N_img, N_cap]``."""
        return self.fuse(images.embeddings @ captions.embeddings.T, self.local_matrix(images, captions, progress))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _reranked(top: np.ndarray, g: np.ndarray, loc: np.ndarray, fused: np.ndarray) -> Reranked:
    order = np.argsort(-fused, kind="stable")
    return Reranked(top[order], fused[order], g[order], loc[order])


def two_stage_matrix(global_sims: np.ndarray, fused_sims: np.ndarray, k: int, axis: int) -> np.ndarray:
    """A score matrix that ranks like two-stage retrieval, for the standard metrics.

    For every query — a column (``axis=0``: captions querying images, text-to-image) or a row (``axis=1``: images
    querying captions) — its ``k`` best candidates by ``global_sims`` get ``SHORTLIST_OFFSET + fused`` and keep that
    order among themselves; the rest keep their global score below them. Float64: in float32 the offset would round
    the fused scores to ~1e-3 and break their order.
    """
    g = np.asarray(global_sims, np.float64)
    f = np.asarray(fused_sims, np.float64)
    if g.shape != f.shape or g.ndim != 2:
        raise InputError(f"global and fused matrices must have the same 2-D shape, got {g.shape} and {f.shape}")
    if axis not in (0, 1):
        raise InputError("axis must be 0 (text-to-image) or 1 (image-to-text)")
    n = g.shape[axis]
    k = max(1, min(k, n))
    top = np.argpartition(-g, k - 1, axis=axis)
    top = top[:k] if axis == 0 else top[:, :k]
    out = g.copy()
    vals = np.take_along_axis(f, top, axis=axis) + SHORTLIST_OFFSET
    np.put_along_axis(out, top, vals, axis=axis)
    return out
