"""``vsrt eval``: retrieval metrics on a precomputed split, with the original protocol."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="R@1/5/10, medr, meanr, rsum on a precomputed split (original protocol)",
        description=(
            "Embed DATA/{split}_ims.npy and DATA/{split}_caps.txt (5 captions per image) with the model and "
            "compute image→text and text→image R@1/5/10, medr, meanr and rsum exactly as the original "
            "evaluation code (rsum = sum of the six recalls). --fold5 averages 5 folds of 1000 images (COCO 1K); "
            "without it all images are ranked together (COCO 5K with split testall). Several MODEL_DIRs are "
            "ensembled by averaging their similarity matrices, as the published VSRN numbers are."
        ),
    )
    p.add_argument("model_dir", nargs="+", help="model directory (two or more: ensemble)")
    p.add_argument("--data", required=True, help="dataset directory in the SCAN precomputed layout")
    p.add_argument("--split", default="test", help="split name: test, dev, testall, … (default test)")
    p.add_argument("--fold5", action="store_true", help="COCO 1K protocol: mean over 5 folds of 1000 images")
    p.add_argument("--backend", default="onnxruntime",
                   choices=["torch", "onnxruntime", "ort-cuda", "ort-tensorrt", "tensorrt", "auto"],
                   help="torch runs the original PyTorch computation; the others the exported graphs")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--rerank-i2t", action="store_true", help="also report DSRAN's mutual-rank i2t re-ranking")
    p.add_argument("--json", dest="json_out", help="write the metrics to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vsrt.eval.driver import evaluate_split
    from vsrt.eval.metrics import format_table
    from vsrt.io import atomic_write_json

    console = Console()
    with console.status("embedding…") as status:

        def progress(what: str, done: int, total: int) -> None:
            status.update(f"embedding {what}: {done}/{total}")

        res = evaluate_split(args.model_dir, args.data, args.split, args.backend, args.precision, args.fold5,
                             args.rerank_i2t, progress)
    res.pop("_sims", None)
    title = f"{', '.join(args.model_dir)} on {args.data} [{args.split}] ({args.backend}, {args.precision})"
    console.print(format_table(res["metrics"], title=title))
    if args.rerank_i2t:
        console.print(format_table(res["metrics_rerank_i2t"], title="with mutual-rank i2t re-ranking"))
    if args.json_out:
        atomic_write_json(args.json_out, res)
        console.print(f"metrics written to {args.json_out}")
    return 0
