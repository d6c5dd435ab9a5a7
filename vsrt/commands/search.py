"""``vsrt search``: query a gallery with text, an image or region features."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsrt.runtime.gallery import Gallery


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="top-k gallery items for a caption (text→image), an image or region features (image→text)",
        description=(
            "Embed the query with the gallery's model (recorded in the gallery; --model overrides, and a model that "
            "did not make the gallery is refused) and print the gallery's top-k items. Search is exact over the "
            "whole gallery, scanned in blocks (bounded memory); --faiss FACTORY uses a faiss index instead (built "
            "and cached beside the gallery; 'Flat' is exact, 'IVF1024,Flat' or 'HNSW32' approximate). --rerank K "
            "re-scores the global top-K with the model's pairwise scorer (VSR++; gallery indexed with --store-local)."
        ),
    )
    p.add_argument("query", nargs="*", help="caption(s) to search for (each argument is one query)")
    p.add_argument("--gallery", "-g", required=True, help="gallery directory")
    p.add_argument("--model", help="model directory (default: the one the gallery was built with)")
    p.add_argument("--image", action="append", default=[], help="query image file (repeatable; needs a detector)")
    p.add_argument("--regions", help="query region features: a .npy [N, R, F] (with --row) or [R, F]")
    p.add_argument("--row", type=int, action="append", default=[], help="row(s) of --regions to use (repeatable)")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--faiss", metavar="FACTORY", help="search a faiss index (e.g. Flat, IVF1024,Flat, HNSW32)")
    p.add_argument("--nprobe", type=int, help="IVF lists probed per query (faiss IVF indexes)")
    p.add_argument("--kernel", default="auto", choices=["auto", "native", "ort", "numpy"],
                   help="exact-search block kernel (default auto: the fused native scan where it was built)")
    p.add_argument("--check-exact", action="store_true",
                   help="with --faiss: also run exact search and report the faiss index's recall@k against it")
    p.add_argument("--rerank", type=int, metavar="K", help="re-rank the global top-K with the pairwise scorer")
    p.add_argument("--backend", default="auto", help="inference backend (auto, onnxruntime, ort-cuda, tensorrt…)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="model precision")
    p.add_argument("--json", dest="json_out", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def _queries(args: argparse.Namespace, model) -> tuple[list[str], object]:  # noqa: ANN001
    import numpy as np

    from vsrt.errors import InputError

    kinds = [bool(args.query), bool(args.image), bool(args.regions)]
    if sum(kinds) != 1:
        raise InputError("give exactly one kind of query: caption text, --image PATH, or --regions FILE.npy")
    if args.query:
        return list(args.query), model.encode_texts(list(args.query))
    if args.image:
        return list(args.image), model.encode_images(list(args.image))
    try:
        arr = np.load(args.regions, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read --regions {args.regions}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[None]
        rows = [0]
    else:
        rows = args.row or [0]
    if any(not 0 <= r < len(arr) for r in rows):
        raise InputError(f"--row must be within 0…{len(arr) - 1}")
    return [f"{args.regions}#{r}" for r in rows], model.encode_regions(np.stack([arr[r] for r in rows]))


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from vsrt.errors import InputError
    from vsrt.runtime import open_model
    from vsrt.runtime.gallery import Gallery
    from vsrt.runtime.search import FaissSearcher, SearchResult, recall_vs_exact

    if args.k < 1:
        raise InputError("-k must be >= 1")
    gallery = Gallery.open(args.gallery)
    model_dir = args.model or gallery.model.get("model_dir")
    if not model_dir:
        raise InputError(f"gallery {args.gallery} does not record its model directory: pass --model DIR")
    model = open_model(model_dir, backend=args.backend, precision=args.precision)
    gallery.check_model(model)
    recall = None
    t0 = time.perf_counter()
    names, q = _queries(args, model)
    t1 = time.perf_counter()
    k = max(args.k, args.rerank or 0)
    if args.faiss:
        searcher = FaissSearcher.load_or_build(gallery, args.faiss, args.nprobe)
        t1 = time.perf_counter()
        scores, idx = searcher.search(q, k)
        result = SearchResult(scores, idx, gallery)
        if args.check_exact:
            recall = recall_vs_exact(idx[:, : args.k], gallery.search(q, args.k, kernel=args.kernel).indices)
    else:
        result = gallery.search(q, k, kernel=args.kernel)
    t2 = time.perf_counter()
    engine = f"faiss {args.faiss}" if args.faiss else f"exact ({_kernel_name(args.kernel, gallery, len(q))})"
    rows = result.to_json(names)
    if args.rerank:
        rows = _rerank(args, model, gallery, result, names)
        engine += f" + pairwise re-rank of top {args.rerank}"
    t3 = time.perf_counter()
    timing = {"encode_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3, "rerank_ms": (t3 - t2) * 1e3}
    if args.json_out:
        print(json.dumps({"gallery": str(gallery.path), "items": len(gallery), "modality": gallery.modality,
                          "model": str(model_dir), "engine": engine, "k": args.k,
                          "results": [{"query": r["query"], "hits": r["hits"][: args.k]} for r in rows],
                          "timing": timing, **({"recall_vs_exact": recall} if recall is not None else {})},
                         indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for r in rows:
        table = Table(title=f"{r['query']}  ({engine}, {len(gallery)} {gallery.modality}s)", title_justify="left")
        for col in ("rank", "score", "key", "details"):
            table.add_column(col, justify="right" if col in ("rank", "score") else "left")
        for h in r["hits"][: args.k]:
            meta = h.get("meta", {})
            details = meta.get("caption") or meta.get("path") or (f"row {meta['row']}" if "row" in meta else "")
            if "boxes" in meta:
                details += f"  ({len(meta['boxes'])} boxes)"
            score = f"{h['score']:.4f}" if "score" in h else f"{h['fused']:.4f}"
            table.add_row(str(h["rank"]), score, str(h.get("key", h["index"])), str(details))
        console.print(table)
    console.print(f"encode {timing['encode_ms']:.1f} ms, search {timing['search_ms']:.1f} ms"
                  + (f", re-rank {timing['rerank_ms']:.1f} ms" if args.rerank else ""))
    if recall is not None:
        console.print(f"faiss {args.faiss} recall@{args.k} against exact search: {recall:.4f}")
    return 0


def _rerank(args: argparse.Namespace, model, gallery, result, names: list[str]) -> list[dict]:  # noqa: ANN001
    from vsrt.errors import InputError
    from vsrt.runtime.pairwise import PairwiseScorer, encode_caption_items
    from vsrt.runtime.rerank import PairwiseModelScorer, two_stage_search

    if not args.query:
        raise InputError("--rerank re-ranks images for caption queries (text→image)")
    if not gallery.has_local:
        raise InputError(f"gallery {gallery.path} stores no local features: re-index with --store-local to re-rank")
    pair = PairwiseScorer(model)
    caps = encode_caption_items(model, names)
    items = [caps.words(i) for i in range(len(caps))]
    rr = two_stage_search(result, args.rerank, PairwiseModelScorer(pair, gallery), pair.mu, items, k=args.k)
    out = []
    for name, hits in zip(names, rr.to_json()):
        for h in hits:
            it = gallery.item(h["index"])
            h["key"], h["meta"], h["score"] = it["key"], it["meta"], h["fused"]
        out.append({"query": name, "hits": hits})
    return out


def _kernel_name(kernel: str, gallery: Gallery, queries: int) -> str:
    """The block kernel an exact search used (``auto`` resolved as :func:`exact_search` resolves it)."""
    from vsrt.runtime.quantize import numpy_dtype
    from vsrt.runtime.search import auto_kernel

    name = auto_kernel(numpy_dtype(gallery.storage), queries) if kernel == "auto" else kernel
    return f"{name} kernel"
