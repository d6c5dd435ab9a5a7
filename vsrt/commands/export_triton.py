"""``vsrt export-triton``: a Triton Inference Server model repository from a model directory."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-triton",
        help="write a Triton model repository (onnxruntime_onnx and tensorrt_plan configs per stage)",
        description=(
            "Scale out on Triton Inference Server: write REPO/<family>_<stage>_onnx (platform onnxruntime_onnx) and "
            "REPO/<family>_<stage>_trt (platform tensorrt_plan, one engine per GPU compute capability through "
            "cc_model_filenames) for every stage of MODEL_DIR, with config.pbtxt (names, shapes and types from the "
            "manifest; dynamic batching for batched stages) and the ONNX files / engines copied or linked. Clients "
            "tokenise captions themselves (vsrt.text) and send tokens/lengths; see docs/scale-out.md."
        ),
    )
    p.add_argument("model_dir", help="model directory")
    p.add_argument("-o", "--output", required=True, help="model repository directory (created)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="stage files to export")
    p.add_argument("--platform", action="append", choices=["onnxruntime_onnx", "tensorrt_plan"],
                   help="platforms to write (repeatable; default both)")
    p.add_argument("--stage", action="append", help="stages to export (repeatable; default all)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="max_batch_size for stages whose manifest has no profile maximum (default 32)")
    p.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batcher queue delay (default 100)")
    p.add_argument("--instances", type=int, default=1, help="model instances per GPU (default 1)")
    p.add_argument("--onnx-kind", default="KIND_GPU", choices=["KIND_GPU", "KIND_CPU", "KIND_AUTO"],
                   help="where Triton runs the ONNX models (default KIND_GPU)")
    p.add_argument("--link", default="copy", choices=["copy", "symlink", "hardlink"],
                   help="copy model files (default) or link them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vsrt.export.triton import PLATFORMS, SUMMARY, export_triton

    summary = export_triton(args.model_dir, args.output, args.precision, args.platform or PLATFORMS, args.stage,
                            args.max_batch, args.max_queue_delay_us, args.instances, args.onnx_kind, args.link)
    console = Console()
    for m in summary["models"]:
        extra = f" (compute capabilities {', '.join(m['compute_capabilities'])})" if "compute_capabilities" in m else ""
        console.print(f"{m['name']}: {m['platform']}{extra}")
    for s in summary["skipped"]:
        console.print(f"[yellow]skipped[/] {s['stage']} {s['platform']}: {s['reason']}")
    console.print(f"repository: {args.output} ({len(summary['models'])} models; summary in {SUMMARY})")
    return 0
