"""``vsrt calibrate``: FP16 and INT8 (Q/DQ) ONNX per stage, with the accuracy guard."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="make FP16 and INT8 ONNX graphs and check their retrieval accuracy against FP32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "For every stage with an FP32 ONNX file (or the --stage ones) write\n"
            "  onnx/<stage>.fp16.onnx  float16 weights/compute, float32 inputs/outputs, norms/reductions in float32\n"
            "  onnx/<stage>.int8.onnx  Q/DQ graph: symmetric int8 activations, per-channel int8 weights, float\n"
            "                          biases, GRUs left in float (what TensorRT 10/11/RTX accept)\n"
            "  calibration/<stage>.<method>.json   the activation statistics\n"
            "  calibration/<stage>.trt10.cache     TensorRT 10 implicit-INT8 cache from the same statistics\n"
            "and record parity vs FP32 in manifest.json.\n\n"
            "Accuracy guard: with --data DIR (SCAN layout: {split}_ims.npy, {split}_caps.txt) the model embeds the\n"
            "held-out --eval-split at FP32 and at each precision through ONNX Runtime CPU and compares embedding\n"
            "cosine and Recall@1/5/10 in both directions. If the worst R@1 drop exceeds --budget (points), the\n"
            "sensitivity pass returns the most harmful layers to higher precision until it holds; if it still does\n"
            "not, that precision is refused: its files are removed and the command exits with status 3.\n\n"
            "Calibration data: --data DIR's --calib-split feeds every stage the runtime feeds from such data:\n"
            "regions for visual (DSRAN: regions plus {split}_grid.npy / {split}_region_pos.npy when present),\n"
            "captions for text (word vocabulary or WordPiece, as the model tokenises), and for VSR++'s pair_scorer\n"
            "the relation-enhanced regions of each caption's global top-k and its word features, made by the FP32\n"
            "visual and text graphs. Stages that take pixels (DSRAN's grid encoder, the detector graphs) need\n"
            "--images (a folder, through the model's own preprocessing and detector). Also --features\n"
            "(.npy [N,36,2048] or a folder of [36,2048] files) and --captions (one per line). Sampling is\n"
            "deterministic (--count, --seed)."
        ),
    )
    p.add_argument("model_dir", help="model directory with FP32 ONNX files (`vsrt export`)")
    p.add_argument("--precision", action="append", choices=["fp16", "int8"],
                   help="precision to make (repeatable; default: fp16 and int8)")
    p.add_argument("--stage", action="append", help="only this stage (repeatable; default: every stage)")
    p.add_argument("--data", type=Path, help="dataset directory in the SCAN layout (calibration and eval splits)")
    p.add_argument("--calib-split", default="train", help="split used for calibration (default train)")
    p.add_argument("--eval-split", default="test", help="held-out split used by the accuracy guard (default test)")
    p.add_argument("--eval-images", type=int, help="evaluate on the first N images of the eval split (default all)")
    p.add_argument("--features", type=Path, help="region features (.npy or folder) to calibrate the visual stage")
    p.add_argument("--captions", type=Path, help="captions file (one a line) to calibrate the text stage")
    p.add_argument("--images", type=Path, help="folder of images, run through the model's detector")
    p.add_argument("--random-inputs", action="store_true",
                   help="calibrate on random inputs (random-weight benchmarks and smoke tests only)")
    p.add_argument("--count", type=int, default=256, help="calibration samples per stage (default 256)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="calibration batch size (default 16)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="INT8 range method (default minmax)")
    p.add_argument("--percentile", type=float, default=99.999, help="percentile for --method percentile")
    p.add_argument("--budget", type=float, default=1.0, help="largest allowed R@1 drop in points (default 1.0)")
    p.add_argument("--no-guard", dest="guard", action="store_false", help="skip the accuracy guard")
    p.add_argument("--no-sensitivity", dest="sensitivity", action="store_false",
                   help="refuse at once when over budget instead of returning layers to higher precision")
    p.add_argument("--max-fallback", type=int, help="return at most N layers to higher precision")
    p.add_argument("--trt-version", default="10.3.0",
                   help="TensorRT version written into the TensorRT 10 calibration cache header (default 10.3.0, "
                        "JetPack 6)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: its choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from vsrt.calibration.pipeline import CalibrateOptions, calibrate_model
    from vsrt.errors import AccuracyBudgetError

    opts = CalibrateOptions(
        precisions=tuple(args.precision or ("fp16", "int8")), stages=args.stage, data_dir=args.data,
        calib_split=args.calib_split, eval_split=args.eval_split, images=args.images, features=args.features,
        captions=args.captions, count=args.count, seed=args.seed, batch_size=args.batch_size, method=args.method,
        percentile=args.percentile, budget=args.budget, guard=args.guard, sensitivity=args.sensitivity,
        max_fallback=args.max_fallback, eval_images=args.eval_images, trt_version=args.trt_version,
        threads=args.threads, random_inputs=args.random_inputs,
    )
    console = Console()
    with console.status("calibrating…") as status:

        def log(msg: str) -> None:
            status.update(msg)
            console.print(f"[dim]{msg}[/]")

        try:
            results = calibrate_model(args.model_dir, opts, log)
        except AccuracyBudgetError:
            _print(console, Table, args.model_dir)
            raise
    _print(console, Table, args.model_dir)
    return 0 if results else 1


def _print(console, table_cls, model_dir) -> None:  # noqa: ANN001 - rich classes
    from vsrt.manifest import Manifest

    m = Manifest.load(model_dir)
    t = table_cls(title=f"precision vs fp32 ({model_dir})")
    for col in ("precision", "stage", "min cosine", "i2t R@1 Δ", "t2i R@1 Δ", "budget", "verdict"):
        t.add_column(col)
    for prec, entry in m.calibration.items():
        g = entry.get("guard", {})
        drop = g.get("drop_points", {})
        if entry.get("refused"):
            verdict = "refused"
        elif not g:
            verdict = "not checked (no --data)"
        else:
            verdict = "ok" if g.get("passed") else "over budget"
        for stage, s in entry.get("stages", {}).items():
            t.add_row(prec, stage, f"{s.get('min_cosine') or float('nan'):.6f}",
                      f"{-drop['i2t_r1']:+.2f}" if drop else "-", f"{-drop['t2i_r1']:+.2f}" if drop else "-",
                      f"{g.get('budget_r1_points', '-')}", verdict)
    console.print(t)
