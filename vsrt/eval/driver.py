"""``vsrt eval``: embed a precomputed split with a model (ONNX Runtime, TensorRT or PyTorch) and compute the
original retrieval metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.data.precomp import load_precomp
from vsrt.runtime.model import RetrievalModel


def open_for_eval(model_dir: str | Path, backend: str = "onnxruntime", precision: str = "fp32") -> RetrievalModel:
    """A :class:`RetrievalModel`; with ``backend="torch"`` its stages run the PyTorch computation instead."""
    if backend == "torch":
        from vsrt.export.torch_backend import torch_backends

        model = RetrievalModel(model_dir, "onnxruntime", "fp32")
        model.backends.update(torch_backends(str(model_dir)))
        model.backend_name = "torch"
        return model
    return RetrievalModel(model_dir, backend, precision)


def similarity_matrix(
    model: RetrievalModel,
    images: np.ndarray,
    captions: list[str],
    batch_size: int = 128,
    progress: Callable[[str, int, int], None] | None = None,
) -> np.ndarray:
    """``[N_img, N_cap]`` similarities: cosine of global embeddings (dual-encoder families), or the full fused score
    ``S_G + μ·S_L`` for families with a ``pair_scorer`` stage (VSR++; see :mod:`vsrt.runtime.pairwise`)."""
    if "pair_scorer" in model.manifest.stages:
        return _pairwise_similarity_matrix(model, images, captions, batch_size, progress)
    img = []
    for i in range(0, len(images), batch_size):
        img.append(model.encode_regions(np.asarray(images[i : i + batch_size], np.float32), batch_size))
        if progress:
            progress("images", min(i + batch_size, len(images)), len(images))
    txt = []
    for i in range(0, len(captions), batch_size):
        txt.append(model.encode_texts(captions[i : i + batch_size], batch_size))
        if progress:
            progress("captions", min(i + batch_size, len(captions)), len(captions))
    return RetrievalModel.similarity(np.concatenate(img), np.concatenate(txt))


def _pairwise_similarity_matrix(
    model: RetrievalModel,
    images: np.ndarray,
    captions: list[str],
    batch_size: int,
    progress: Callable[[str, int, int], None] | None,
) -> np.ndarray:
    """The full fused matrix of a pairwise family: every (image, caption) pair through ``pair_scorer``."""
    from vsrt.runtime.pairwise import PairwiseScorer, encode_caption_items, encode_image_items

    imgs = encode_image_items(model, np.asarray(images, np.float32), batch_size)
    if progress:
        progress("images", len(images), len(images))
    caps = encode_caption_items(model, captions, batch_size)
    if progress:
        progress("captions", len(captions), len(captions))
    return PairwiseScorer(model).fused_matrix(imgs, caps, progress)


def _dsran_similarity_matrix(
    model: RetrievalModel,
    data_dir: str | Path,
    split: str,
    images: np.ndarray,
    captions: list[str],
    progress: Callable[[str, int, int], None] | None,
) -> np.ndarray:
    """DSRAN's two visual inputs: the split's ``{split}_grid.npy`` / ``{split}_region_pos.npy`` when present, else
    the documented substitutes (grid tokens derived from the regions, zero region encodings; ``docs/dsran.md``)."""
    from vsrt.runtime.dsran import dsran_similarity_matrix, load_dsran_extras

    grid, region_pos = load_dsran_extras(data_dir, split, len(images))
    return dsran_similarity_matrix(model, images, captions, grid, region_pos, progress=progress)


def evaluate_split(
    model_dirs: list[str | Path],
    data_dir: str | Path,
    split: str = "test",
    backend: str = "onnxruntime",
    precision: str = "fp32",
    fold5: bool = False,
    rerank_i2t: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Metrics of one model, or of the ensemble (average similarity) of several, on a precomputed split."""
    from vsrt.eval.metrics import ensemble, evaluate, evaluate_5fold, mutual_rank_i2t

    data = load_precomp(data_dir, split)
    sims_list = []
    for md in model_dirs:
        model = open_for_eval(md, backend, precision)
        if model.family.startswith("dsran"):
            sims_list.append(_dsran_similarity_matrix(model, data_dir, split, data.images, data.captions, progress))
        else:
            sims_list.append(similarity_matrix(model, data.images, data.captions, progress=progress))
    sims = sims_list[0] if len(sims_list) == 1 else ensemble(sims_list)
    out: dict[str, Any] = {
        "models": [str(m) for m in model_dirs],
        "data": str(data_dir),
        "split": split,
        "backend": backend,
        "precision": precision,
        "images": int(sims.shape[0]),
        "captions": int(sims.shape[1]),
    }
    if fold5:
        out["fold5"] = evaluate_5fold(sims)
        out["metrics"] = out["fold5"]["mean"]
    else:
        out["metrics"] = evaluate(sims)
    if rerank_i2t:
        out["metrics_rerank_i2t"] = mutual_rank_i2t(sims)
    out["_sims"] = sims
    return out
