"""``vsrt detect``: images → bottom-up-attention region features in the precomputed layout (``[N, K, 2048]``)."""

from __future__ import annotations

import argparse

#: file name endings taken from a folder given as IMAGES (files given by name are read whatever their ending)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jp2", ".pgm", ".ppm", ".pbm")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="run the model's detector on images and write region features [N, K, 2048] (.npy)",
        description=(
            "Detect regions in IMAGES (files, or folders of images, read in name order) with the model directory's "
            "bottom-up-attention detector and write their features as one float32 array [N, K, F] in the "
            "precomputed layout ({split}_ims.npy) that `vsrt index` and the SCAN/VSRN data loaders read. "
            "K is fixed: --boxes N sets min = max = N boxes (VSRN-family models take 36); without it K is the "
            "detector's max_boxes, and images with fewer regions are padded with zero rows (the real count of "
            "each image is written to --boxes-json). Writes are atomic."
        ),
    )
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--model", required=True, help="model directory with a detector (`vsrt convert-detector`)")
    p.add_argument("-o", "--output", required=True, help="output .npy of region features [N, K, F]")
    p.add_argument("--boxes", type=int, metavar="N", help="fixed number of boxes per image (min = max = N, e.g. 36)")
    p.add_argument(
        "--boxes-json",
        metavar="PATH",
        help="also write per-image boxes (original pixels), counts, labels and scores as JSON",
    )
    p.add_argument("--backend", default="auto", help="inference backend (auto, onnxruntime, ort-cuda, tensorrt…)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="model precision")
    p.set_defaults(func=run)


def expand_images(items: list[str]) -> list[str]:
    """Files as given; folders → their image files (by ending) in name order. Missing paths are an error."""
    from pathlib import Path

    from vsrt.errors import InputError

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{p}: folder has no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.exists():
            out.append(str(p))
        else:
            raise InputError(f"{p}: image file not found")
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vsrt.errors import InputError
    from vsrt.io import atomic_path, atomic_write_json
    from vsrt.modeldir import open_manifest
    from vsrt.runtime.detector import Detector, stack_features

    console = Console(stderr=True)
    images = expand_images(args.images)
    manifest = open_manifest(args.model)
    det = Detector.from_model_dir(args.model, manifest, args.backend, args.precision)
    if args.boxes is not None and not 1 <= args.boxes <= det.cfg.num_rois:
        raise InputError(f"--boxes must be within 1…{det.cfg.num_rois} (the detector's RoIs), got {args.boxes}")
    cfg = det.config_for(args.boxes)
    k = cfg.max_boxes
    if cfg.min_boxes != cfg.max_boxes:
        console.print(
            f"[yellow]note[/]: the detector keeps {cfg.min_boxes}–{cfg.max_boxes} boxes; features are "
            f"padded to K={k} with zero rows"
            + ("" if args.boxes_json else " (pass --boxes-json to record each image's count)")
        )
    columns = (TextColumn("[bold]detecting[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("images", total=len(images))
        dets = det.detect(images, num_boxes=args.boxes, progress=lambda done, total: bar.update(task, completed=done))
    feats, counts = stack_features(dets, k, det.feature_dim)
    with atomic_path(args.output) as tmp, open(tmp, "wb") as f:
        np.save(f, feats, allow_pickle=False)
    if args.boxes_json:
        atomic_write_json(
            args.boxes_json,
            {
                "features": str(args.output),
                "shape": list(feats.shape),
                "num_boxes_fixed": k,
                "padding": "zero rows after num_boxes",
                "images": [d.to_json() for d in dets],
            },
        )
    lo, hi = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    console.print(
        f"wrote {args.output}: {feats.shape[0]} images × {k} regions × {feats.shape[2]} "
        f"(real regions per image {lo}–{hi})"
    )
    return 0
