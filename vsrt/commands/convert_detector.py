"""``vsrt convert-detector``: a bottom-up-attention detector checkpoint (or random weights) → a model directory."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-detector",
        help="add the bottom-up-attention region detector to a model directory (MILVLG .pth, read safely)",
        description=(
            "Read a MILVLG/bottom-up-attention.pytorch caffe-mode checkpoint (ResNet-101 C4, attributes; "
            "{'model': state_dict} .pth) through a restricted loader that cannot run code, check every key and shape "
            "and the Caffe anchors, and write weights/detector.safetensors + config.json['detector'] into MODEL_DIR "
            "(an existing vsrt model directory gains the detector; otherwise a 'detector' directory is created). "
            "Then run `vsrt export MODEL_DIR` to write the ONNX graphs."
        ),
    )
    p.add_argument("checkpoint", nargs="?", help="MILVLG .pth checkpoint (omit with --random-init)")
    p.add_argument("-o", "--output", required=True, help="model directory to add the detector to (or create)")
    p.add_argument("--tiny", action="store_true", help="tiny test architecture (DetectorConfig.tiny())")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="random weights instead of a checkpoint — FOR TESTS AND BENCHMARKS ONLY: its regions are meaningless",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    p.add_argument("--force", action="store_true", help="replace a detector the directory already has")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vsrt.detector_config import DetectorConfig
    from vsrt.errors import InputError
    from vsrt.io import sha256_file
    from vsrt.models.detector import build_detector
    from vsrt.models.detector_checkpoint import add_detector, load_butd_checkpoint

    console = Console(stderr=True)
    if bool(args.checkpoint) == bool(args.random_init):
        raise InputError("give either a CHECKPOINT or --random-init (not both, not neither)")
    cfg = DetectorConfig.tiny() if args.tiny else DetectorConfig()
    with console.status("reading the detector weights…"):
        if args.random_init:
            state = build_detector(cfg, random_seed=args.seed).state_dict()
            source = {"random_init": True, "seed": args.seed, "note": "random weights: tests/benchmarks only"}
        else:
            state = load_butd_checkpoint(args.checkpoint, cfg)
            source = {
                "checkpoint": str(args.checkpoint),
                "sha256": sha256_file(args.checkpoint),
                "layout": "MILVLG bottom-up-attention.pytorch (caffe mode)",
            }
        out = add_detector(args.output, state, cfg, source, force=args.force)
    n = sum(int(v.numel()) for v in state.values())
    Console().print(
        f"[green]detector added[/] → {out} ({'tiny' if args.tiny else 'ResNet-101 C4'}, {n / 1e6:.1f} M parameters"
        f"{', RANDOM weights' if args.random_init else ''}); next: vsrt export {out}"
    )
    return 0
