"""``vsrt index``: build or extend a gallery from images, precomputed region features or captions."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="add images / region features / captions to a gallery (append-only, crash-safe, resumable)",
        description=(
            "Embed SOURCE with the model and append it to the gallery G (created when missing). SOURCE is a folder "
            "of images (run through the model's detector; boxes are kept as metadata), a .npy of precomputed region "
            "features [N, 36, 2048] (e.g. DATA/test_ims.npy; ids from test_ids.txt when present) or a .txt of "
            "captions, one per line (a caption gallery, for image→text search). Items whose content is already in "
            "the gallery are skipped, so re-running the same command after an interruption (even kill -9) finishes "
            "the job and yields exactly the gallery of an uninterrupted run. Embeddings are stored as fp32, fp16 or "
            "int8 (per-vector scalar quantisation); for fp16/int8 the recall cost against fp32 is measured on the "
            "first segment and printed."
        ),
    )
    p.add_argument("source", help="folder of images, {split}_ims.npy of region features, or captions .txt")
    p.add_argument("--model", required=True, help="model directory (its manifest binds the gallery to the model)")
    p.add_argument("--gallery", "-g", required=True, help="gallery directory (created when missing)")
    p.add_argument("--storage", choices=["fp32", "fp16", "int8"],
                   help="embedding storage of a new gallery (default fp32; an existing gallery keeps its own)")
    p.add_argument("--backend", default="auto", help="inference backend (auto, onnxruntime, ort-cuda, tensorrt…)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="model precision")
    p.add_argument("--commit-every", type=int, default=1024, help="new items per committed segment (default 1024)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default 32)")
    p.add_argument("--store-local", action="store_true",
                   help="also store region features for pairwise re-ranking (VSR++-style models)")
    p.add_argument("--json", dest="json_out", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vsrt.runtime import open_model
    from vsrt.runtime.indexer import index_source, open_source

    console = Console(stderr=args.json_out)
    src = open_source(args.source)
    model = open_model(args.model, backend=args.backend, precision=args.precision)
    columns = (TextColumn("[bold]indexing[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("new {task.fields[added]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=args.json_out) as bar:
        task = bar.add_task(src.kind, total=src.total, added=0)

        def progress(done: int, total: int, added: int) -> None:
            bar.update(task, completed=done, added=added)

        report = index_source(src, model, args.gallery, args.storage, args.commit_every, args.batch_size,
                              args.store_local, progress)
    if args.json_out:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    console.print(
        f"{report.gallery}: {report.items} items ({report.added} added in {report.segments} segments, "
        f"{report.skipped} skipped as already indexed or duplicate content)"
    )
    if report.duplicates:
        console.print(f"duplicate content in the source: {len(report.duplicates)} (first: {report.duplicates[0]})")
    if report.storage_recall:
        r = report.storage_recall
        console.print(
            f"{r['storage']} storage vs fp32: recall@{r['k']} {r['recall_at_k']:.4f}, recall@1 {r['recall_at_1']:.4f}, "
            f"max score error {r['max_score_error']:.2e} (measured on {r['items']} items, {r['queries']} queries)"
        )
    return 0
