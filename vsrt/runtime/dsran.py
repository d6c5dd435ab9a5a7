"""DSRAN at run time: images → (grid tokens, regions[, region encodings]) → embeddings; captions → embeddings
(GRU: word ids; BERT: 32 WordPiece ids). numpy + the model's backends; no torch.

A DSRAN image needs two inputs: 49 ResNet-152 grid tokens (the ``grid`` stage on 224² pixels, see
:mod:`vsrt.runtime.grid_preprocess`) and 100 region features. The released models were trained on VLP's Detectron
(X-101 FPN, Visual Genome, 1601 classes) regions; vsrt cannot run that detector, so on raw images the bottom-up
(BUTD) detector configured for 100 boxes stands in for it — a different feature distribution, so recall must be
re-measured. Precomputed features in the original layout remain the fidelity path.

Precomputed data (SCAN-like layout in ``DATA_DIR``): ``{split}_ims.npy`` regions ``[N, R, 2048]``,
``{split}_caps.txt`` (5 per image), and optionally ``{split}_grid.npy`` grid tokens ``[N, 49, 2048]`` and
``{split}_region_pos.npy`` ``[N, R, 1607]`` (BERT). Without a grid file the grid tokens are *derived from the
regions* (:func:`grid_from_regions`) — a convention for synthetic data only (it is what vsrt's DSRAN training on
pixel-less data uses); without a region-pos file the BERT variant gets zeros (what ``layer_norm`` of constant
encodings gives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import InputError, ManifestError
from vsrt.runtime.model import RetrievalModel

GRID_TOKENS = 49
POS_DIM = 6 + 1601


def grid_from_regions(regions: np.ndarray, grid_tokens: int = GRID_TOKENS) -> np.ndarray:
    """Deterministic stand-in grid tokens for pixel-less (synthetic) data: token ``j`` = region ``⌊j·R/49⌋``."""
    regions = np.asarray(regions)
    if regions.ndim != 3:
        raise InputError(f"regions must be [N, R, F], got shape {list(regions.shape)}")
    idx = (np.arange(grid_tokens) * regions.shape[1]) // grid_tokens
    return np.ascontiguousarray(regions[:, idx], dtype=np.float32)


def _layer_norm(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def region_pos_from_boxes(boxes: np.ndarray, scores: np.ndarray, cls_prob: np.ndarray) -> np.ndarray:
    """DSRAN-BERT's per-region encoding (``data_bert.py get_rcnn``) for one image.

    ``boxes [R, 4]`` (x1, y1, x2, y2, pixels), ``scores [R]`` (detection confidence), ``cls_prob [R, 1601]`` →
    ``[R, 1607]`` = ``layer_norm([x1/w, y1/h, x2/w, y2/h, rel_area, score])`` ‖ ``layer_norm(cls_prob)``, where the
    image size is *estimated* as the largest box coordinate (+1e-5), as the original does.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    cls_prob = np.asarray(cls_prob, np.float32)
    r = boxes.shape[0]
    if boxes.shape != (r, 4) or scores.shape != (r,) or cls_prob.ndim != 2 or cls_prob.shape[0] != r:
        raise InputError(f"region encodings need boxes [R, 4], scores [R], cls_prob [R, C]; got "
                         f"{list(boxes.shape)}, {list(scores.shape)}, {list(cls_prob.shape)}")
    if cls_prob.shape[1] != POS_DIM - 6:
        raise InputError(f"cls_prob must have {POS_DIM - 6} Visual Genome classes, got {cls_prob.shape[1]}")
    w = np.float32(boxes[:, [0, 2]].max() + 1e-5)
    h = np.float32(boxes[:, [1, 3]].max() + 1e-5)
    b = boxes / np.array([w, h, w, h], np.float32)
    area = np.maximum((b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0]), 0)
    pe = np.concatenate([b, area[:, None], scores[:, None]], axis=1)
    return np.concatenate([_layer_norm(pe), _layer_norm(cls_prob)], axis=1).astype(np.float32)


def _check_family(model: RetrievalModel) -> str:
    if not model.family.startswith("dsran"):
        raise InputError(f"{model.model_dir} is a '{model.family}' model, not DSRAN")
    return model.family


def _variant(model: RetrievalModel) -> str:
    return "bert" if _check_family(model) == "dsran-bert" else "gru"


def _visual_spec(model: RetrievalModel) -> dict[str, list]:
    return {s.name: s.shape for s in model.manifest.stage("visual").inputs}


def precomputed_visual_inputs(
    specs: dict[str, list], regions: np.ndarray, grid: np.ndarray | None = None, region_pos: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(grid, region_pos)`` for the ``visual`` stage (input ``specs``: name → shape) on precomputed ``regions``,
    with the documented substitutes (module docstring): ``grid`` None → :func:`grid_from_regions`; ``region_pos``
    None → zeros for DSRAN-BERT; ``region_pos`` is None for the GRU variant, which has no such input."""
    if grid is None:
        grid = grid_from_regions(regions, int(specs["grid"][1]))
    if "region_pos" not in specs:
        return grid, None
    if region_pos is None:
        region_pos = np.zeros((len(regions), int(specs["region_pos"][1]), int(specs["region_pos"][2])), np.float32)
    return grid, region_pos


def _check_array(name: str, a: np.ndarray, shape: list, n: int | None) -> np.ndarray:
    a = np.asarray(a)
    want = [int(d) for d in shape[1:]]
    if a.ndim != len(shape) or list(a.shape[1:]) != want or (n is not None and a.shape[0] != n):
        first = n if n is not None else "N"
        raise InputError(f"{name} must have shape [{first}, {', '.join(map(str, want))}], got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or Inf")
    return a


def encode_grid(model: RetrievalModel, images: Sequence[str | Path | np.ndarray], batch_size: int = 16
                ) -> np.ndarray:
    """Images (paths or H×W×3 BGR uint8 arrays) → grid tokens ``[N, 49, 2048]`` through the ``grid`` stage."""
    from vsrt.runtime.grid_preprocess import preprocess_batch

    _check_family(model)
    images = list(images)
    spec = model.manifest.stage("grid").inputs[0]
    crop = int(spec.shape[-1])
    out = []
    for i in range(0, len(images), batch_size):
        pixels = preprocess_batch(images[i : i + batch_size], crop=crop)
        out.append(np.asarray(model.stage("grid").run({spec.name: pixels})["grid"], np.float32))
    if not out:
        shape = model.manifest.stage("grid").outputs[0].shape
        return np.zeros((0, int(shape[1]), int(shape[2])), np.float32)
    return np.concatenate(out)


def encode_dsran_regions(
    model: RetrievalModel,
    grid: np.ndarray,
    regions: np.ndarray,
    region_pos: np.ndarray | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grid tokens ``[N, 49, 2048]`` + regions ``[N, R, 2048]`` (+ BERT: ``region_pos [N, R, 1607]``) → image
    embeddings ``[N, D]`` through the ``visual`` stage."""
    specs = _visual_spec(model)
    regions = _check_array("regions", regions, specs["regions"], None)
    grid = _check_array("grid tokens", grid, specs["grid"], len(regions))
    feeds_all = {"grid": grid, "regions": regions}
    if "region_pos" in specs:
        if region_pos is None:
            raise InputError("DSRAN-BERT needs region_pos [N, R, 1607] (box + class encodings; see "
                             "region_pos_from_boxes)")
        feeds_all["region_pos"] = _check_array("region_pos", region_pos, specs["region_pos"], len(regions))
    out = []
    for i in range(0, len(regions), batch_size):
        feeds = {k: np.ascontiguousarray(v[i : i + batch_size], np.float32) for k, v in feeds_all.items()}
        out.append(np.asarray(model.stage("visual").run(feeds)["embedding"], np.float32))
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


def encode_dsran_images(
    model: RetrievalModel,
    images: Sequence[str | Path | np.ndarray],
    regions: np.ndarray | None = None,
    region_pos: np.ndarray | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Raw images → image embeddings ``[N, D]``: pixels through the ``grid`` stage; regions precomputed
    (``regions [N, R, 2048]``, + ``region_pos`` for BERT) or, when ``regions`` is None, from the model's detector,
    which must be configured for R boxes and (BERT) give ``boxes``, ``scores`` and ``cls_prob`` per detection."""
    images = list(images)
    grid = encode_grid(model, images, batch_size)
    if regions is None:
        regions, pos = _detect_regions(model, images)
        region_pos = pos if region_pos is None else region_pos
    return encode_dsran_regions(model, grid, regions, region_pos, batch_size)


def _detect_regions(model: RetrievalModel, images: list) -> tuple[np.ndarray, np.ndarray | None]:
    r = int(_visual_spec(model)["regions"][1])
    dets = model.detector.detect(images)
    feats, pos = [], []
    for i, d in enumerate(dets):
        f = np.asarray(d.features, np.float32)
        if f.shape[0] != r:
            raise InputError(f"image {i}: the detector gave {f.shape[0]} regions, DSRAN takes exactly {r} "
                             f"(configure the detector for {r} boxes)")
        feats.append(f)
        if _variant(model) == "bert":
            for attr in ("boxes", "scores", "cls_prob"):
                if getattr(d, attr, None) is None:
                    raise InputError(f"DSRAN-BERT needs the detector's '{attr}' per region; this detector gives none")
            pos.append(region_pos_from_boxes(d.boxes, d.scores, d.cls_prob))
    regions = np.stack(feats) if feats else np.zeros((0, r, 2048), np.float32)
    return regions, (np.stack(pos) if pos else None)


def wordpiece_tokenizer(model: RetrievalModel):  # noqa: ANN201 - vsrt.text.wordpiece.WordPieceTokenizer
    """The BERT variant's tokenizer from the model directory's ``vocab.txt`` (its SHA-256 checked against
    ``config.json``)."""
    from vsrt.io import sha256_file
    from vsrt.text.wordpiece import WordPieceTokenizer

    tok: dict[str, Any] = model.info.tokenizer
    if tok.get("type") != "wordpiece":
        raise ManifestError(f"{model.model_dir}: config.json has no WordPiece tokenizer (got {tok.get('type')!r})")
    path = model.model_dir / str(tok.get("vocab", "vocab.txt"))
    if not path.is_file():
        raise ManifestError(f"{path} not found: the model directory lacks its WordPiece vocabulary")
    if tok.get("sha256") and sha256_file(path) != tok["sha256"]:
        raise ManifestError(f"{path} was changed after conversion (SHA-256 differs from config.json)")
    return WordPieceTokenizer(path, lowercase=bool(tok.get("lowercase", True)), max_len=int(tok.get("max_len", 32)))


def encode_dsran_texts(model: RetrievalModel, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """Captions → caption embeddings ``[N, D]``. GRU: original word tokenisation, each caption encoded alone
    (vsrt's per-caption convention, so batching does not change results); BERT: 32 WordPiece ids."""
    if isinstance(texts, str):
        raise InputError("encode_dsran_texts takes a list of captions, not a single string")
    texts = list(texts)
    bert = _variant(model) == "bert"
    tok = wordpiece_tokenizer(model) if bert else None
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        if tok is not None:
            feeds = {"input_ids": tok.encode(chunk)}
        else:
            tokens, lengths = model.tokenize(chunk)
            feeds = {"tokens": tokens, "lengths": lengths}
        out.append(np.asarray(model.stage("text").run(feeds)["embedding"], np.float32))
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


def load_dsran_extras(data_dir: str | Path, split: str, num_images: int) -> tuple[np.ndarray | None,
                                                                                  np.ndarray | None]:
    """``({split}_grid.npy, {split}_region_pos.npy)`` of a precomputed dataset, each None when absent
    (memory-mapped; first dimension checked against ``num_images``)."""
    out: list[np.ndarray | None] = []
    for suffix in ("grid", "region_pos"):
        p = Path(data_dir) / f"{split}_{suffix}.npy"
        if not p.is_file():
            out.append(None)
            continue
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{p} is not a plain .npy array ({exc})") from None
        if a.ndim != 3 or a.shape[0] != num_images:
            raise InputError(f"{p} must be [{num_images}, T, F] (one row per image), got {list(a.shape)}")
        out.append(a)
    return out[0], out[1]


def dsran_similarity_matrix(
    model: RetrievalModel,
    regions: np.ndarray,
    captions: list[str],
    grid: np.ndarray | None = None,
    region_pos: np.ndarray | None = None,
    batch_size: int = 128,
    progress: Callable[[str, int, int], None] | None = None,
) -> np.ndarray:
    """``[N_img, N_cap]`` cosine similarities of a DSRAN model on precomputed inputs. ``grid`` None → derived from
    the regions (synthetic-data convention); ``region_pos`` None for BERT → zeros (see the module docstring)."""
    regions = np.asarray(regions)
    grid, region_pos = precomputed_visual_inputs(_visual_spec(model), regions, grid, region_pos)
    img = []
    for i in range(0, len(regions), batch_size):
        pos = None if region_pos is None else region_pos[i : i + batch_size]
        img.append(encode_dsran_regions(model, grid[i : i + batch_size], regions[i : i + batch_size], pos, batch_size))
        if progress:
            progress("images", min(i + batch_size, len(regions)), len(regions))
    txt = []
    for i in range(0, len(captions), batch_size):
        txt.append(encode_dsran_texts(model, captions[i : i + batch_size], batch_size))
        if progress:
            progress("captions", min(i + batch_size, len(captions)), len(captions))
    im = np.concatenate(img) if img else np.zeros((0, model.embed_dim), np.float32)
    tx = np.concatenate(txt) if txt else np.zeros((0, model.embed_dim), np.float32)
    return RetrievalModel.similarity(im, tx)
