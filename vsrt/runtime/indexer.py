"""Filling a gallery from a source: a folder of images (through the model's detector), precomputed region features
(``{split}_ims.npy``) or a caption file (one caption per line). Resumable; no torch.

Items are visited in a fixed order (sorted relative paths, array rows, file lines). Each item's content hash is
computed first; items already in the gallery (an earlier, interrupted run) or repeating earlier content are skipped.
The remaining *new* items are encoded and committed in segments of exactly ``commit_every`` items (the last one
shorter), so a run that was killed and re-started produces the same segments, in the same order, with the same
embeddings as one uninterrupted run (see :mod:`vsrt.runtime.gallery` for why nothing half-written survives).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import InputError
from vsrt.runtime.gallery import Gallery, content_hash, model_info_of
from vsrt.runtime.quantize import recall_cost

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: items used to measure a storage precision's recall cost on the first commit
RECALL_SAMPLE = 2000
RECALL_QUERIES = 200


@dataclass
class SourceItem:
    """One item to index: its key, content hash, metadata and payload (a path, a feature row or a caption)."""

    key: str
    sha256: str
    meta: dict[str, Any]
    payload: Any


@dataclass
class Source:
    """What a source holds: ``kind`` (``images`` | ``regions`` | ``captions``), item count and the item stream."""

    kind: str
    path: Path
    total: int
    items: Callable[[], Iterator[SourceItem]]

    @property
    def modality(self) -> str:
        return "text" if self.kind == "captions" else "image"


def _sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def open_source(path: str | Path) -> Source:
    """Recognise a source: a directory of images, a ``.npy`` of region features ``[N, R, F]``, or a ``.txt`` of
    captions (one per line)."""
    p = Path(path)
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise InputError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)})")

        def images() -> Iterator[SourceItem]:
            for f in files:
                rel = f.relative_to(p).as_posix()
                yield SourceItem(rel, _sha256_path(f), {"path": str(f.resolve())}, f)

        return Source("images", p, len(files), images)
    if p.suffix == ".npy" and p.is_file():
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{p} is not a readable .npy array: {exc}") from None
        if arr.ndim != 3:
            raise InputError(f"{p} must hold region features [N, regions, features], got shape {list(arr.shape)}")
        ids = _ids_beside(p, len(arr))

        def rows() -> Iterator[SourceItem]:
            for i in range(len(arr)):
                row = np.asarray(arr[i], np.float32)
                key = f"{p.name}#{ids[i] if ids else i}"
                meta = {"source": str(p.resolve()), "row": i, **({"id": ids[i]} if ids else {})}
                yield SourceItem(key, content_hash(row), meta, row)

        return Source("regions", p, len(arr), rows)
    if p.suffix == ".txt" and p.is_file():
        lines = p.read_text(encoding="utf-8-sig").splitlines()
        caps = [(i, ln.strip()) for i, ln in enumerate(lines) if ln.strip()]
        if not caps:
            raise InputError(f"{p} holds no captions")

        def captions() -> Iterator[SourceItem]:
            for i, c in caps:
                yield SourceItem(f"{p.name}#{i}", hashlib.sha256(c.encode("utf-8")).hexdigest(),
                                 {"caption": c, "line": i}, c)

        return Source("captions", p, len(caps), captions)
    if not p.exists():
        raise InputError(f"source not found: {p}")
    raise InputError(f"{p}: a source is a folder of images, a .npy of region features [N, R, F] or a .txt of captions")


def _ids_beside(npy: Path, n: int) -> list[str] | None:
    """``{split}_ids.txt`` beside ``{split}_ims.npy`` when it has one id per image."""
    name = npy.name
    if not name.endswith("_ims.npy"):
        return None
    f = npy.with_name(name[: -len("_ims.npy")] + "_ids.txt")
    if not f.is_file():
        return None
    ids = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return ids if len(ids) == n else None


@dataclass
class IndexReport:
    """What one indexing run did."""

    gallery: str
    source: str
    kind: str
    total: int
    added: int = 0
    skipped: int = 0
    segments: int = 0
    items: int = 0
    storage_recall: dict[str, Any] | None = None
    duplicates: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["duplicates"] = self.duplicates[:100]
        return d


def _require_detector(model: Any) -> None:
    if "backbone_rpn" not in getattr(getattr(model, "manifest", None), "stages", {"backbone_rpn": None}):
        raise InputError(
            f"model {getattr(model, 'model_dir', '')} has no detector, so it cannot index raw images: add one "
            "(`vsrt convert-detector`, `vsrt export`) or index precomputed region features ({split}_ims.npy)"
        )


def _encode(model: Any, kind: str, payloads: Sequence[Any], batch_size: int, local: bool
            ) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray | None]:
    """Embeddings (and per-item extra metadata, local features) of a list of payloads."""
    extra: list[dict[str, Any]] = [{} for _ in payloads]
    if kind == "captions":
        if local:
            raise InputError("--store-local applies to image galleries (region features of each image)")
        return np.asarray(model.encode_texts(list(payloads)), np.float32), extra, None
    if kind == "images":
        from vsrt.runtime.detector import stack_features

        _require_detector(model)
        # exactly the visual stage's region count per image (as RetrievalModel.encode_images): an image with fewer
        # boxes gets zero rows after its regions
        k = int(model.num_regions)
        dets = model.detector.detect([str(p) for p in payloads], num_boxes=k)
        regions, _ = stack_features(dets, k, int(np.asarray(dets[0].features).shape[1]))
        for e, d in zip(extra, dets):
            boxes = getattr(d, "boxes", None)
            if boxes is not None:
                e["boxes"] = np.round(np.asarray(boxes, np.float64), 2).tolist()
            for attr in ("image_size", "image_hw"):
                if getattr(d, attr, None) is not None:
                    e[attr] = [int(v) for v in getattr(d, attr)]
    else:
        regions = np.stack(payloads)
    if local:
        out = model.encode_regions_full(regions, batch_size)
        if "region_features" not in out:
            raise InputError(
                f"model '{model.family}' has no region_features output: nothing to store for --store-local")
        return out["embedding"], extra, out["region_features"]
    return np.asarray(model.encode_regions(regions, batch_size), np.float32), extra, None


def index_source(
    source: str | Path | Source,
    model: Any,
    gallery: str | Path,
    storage: str | None = None,
    commit_every: int = 1024,
    batch_size: int = 32,
    store_local: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> IndexReport:
    """Index ``source`` into the gallery at ``gallery`` (created when missing) with ``model``.

    ``storage`` applies to a new gallery (default ``fp32``); an existing gallery keeps its own (naming another is
    an error). ``progress(visited, total, added)`` is called after every item visited. Returns an
    :class:`IndexReport`.
    """
    if commit_every < 1 or batch_size < 1:
        raise InputError("--commit-every and --batch-size must be >= 1")
    src = source if isinstance(source, Source) else open_source(source)
    if src.kind == "images":
        _require_detector(model)
    info = model_info_of(model)
    gp = Path(gallery)
    if storage is None:
        storage = Gallery.open(gp).storage if (gp / "gallery.json").is_file() else "fp32"
    g = Gallery.create(gp, int(model.embed_dim), storage, info, src.modality, exist_ok=True)
    report = IndexReport(str(gp), str(src.path), src.kind, src.total)
    with g.writer():
        pending: list[SourceItem] = []
        seen: set[str] = set()

        def flush() -> None:
            emb, extra, local = _encode(model, src.kind, [it.payload for it in pending], batch_size, store_local)
            meta = [{**it.meta, **e} for it, e in zip(pending, extra)]
            commit_extra: dict[str, Any] = {}
            if len(g) == 0 and storage != "fp32" and len(emb) >= 20:
                sample = emb[:RECALL_SAMPLE]
                nq = max(1, min(RECALL_QUERIES, len(sample) // 10))
                rc = recall_cost(sample[nq:], sample[:nq], storage, k=min(10, len(sample) - nq))
                commit_extra["storage_recall"] = report.storage_recall = rc.to_json()
            res = g.add([it.key for it in pending], emb, meta, [it.sha256 for it in pending], local, commit_extra)
            report.added += res.added
            report.segments += 1 if res.segment else 0
            pending.clear()

        for visited, it in enumerate(src.items(), 1):
            if it.sha256 in seen or g.contains(it.sha256):
                report.skipped += 1
                if it.sha256 in seen:
                    report.duplicates.append(it.key)
            else:
                seen.add(it.sha256)
                pending.append(it)
                if len(pending) == commit_every:
                    flush()
            if progress:
                progress(visited, src.total, report.added + len(pending))
        if pending:
            flush()
    report.items = len(g)
    if report.storage_recall is None:
        for rec in g.commits()[:1]:
            report.storage_recall = rec.get("storage_recall")
    return report
