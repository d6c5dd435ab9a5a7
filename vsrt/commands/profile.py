"""``vsrt profile``: latency and throughput per stage, batch size and precision; JSON + PNG."""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got '{text}'")
    return vals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="where the time goes: latency percentiles and throughput per stage, batch and precision",
        description=(
            "Time every stage of MODEL_DIR — caption tokenisation, the visual reasoner, the text encoder, the "
            "pairwise scorer and the detector graphs and host steps when the model has them, and gallery search — "
            "for each batch size and precision: warm-up, then a timed duration; min/mean/median/p90/p95/p99/max "
            "and throughput, with H2D/compute/D2H for TensorRT engines. Prints a table and writes JSON (with device "
            "and software metadata) and a PNG plot (latency vs batch; stage breakdown)."
        ),
    )
    p.add_argument("model_dir", help="model directory")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, ort-cuda, ort-tensorrt, tensorrt")
    p.add_argument("--batch", type=_ints, default=[1, 8, 32], help="batch sizes, comma-separated (default 1,8,32)")
    p.add_argument("--precision", default="fp32",
                   help="precisions, comma-separated, of fp32/fp16/int8 (default fp32)")
    p.add_argument("--warmup", type=float, default=0.2, help="warm-up seconds per measurement (default 0.2)")
    p.add_argument("--duration", type=float, default=3.0, help="timed seconds per measurement (default 3)")
    p.add_argument("--min-iterations", type=int, default=10, help="timed runs at least (default 10)")
    p.add_argument("--stages", help="only these stages, comma-separated (e.g. visual,text,search)")
    p.add_argument("--gallery", help="search this gallery (default: a synthetic fp16 gallery)")
    p.add_argument("--gallery-size", type=int, default=100_000, help="items of the synthetic gallery (100000)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a symbolic input dimension without an opt shape (repeatable), e.g. seq=20")
    p.add_argument("-o", "--output", help="JSON path (default profile_<family>_<backend>.json)")
    p.add_argument("--plot", help="PNG path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from vsrt.errors import InputError
    from vsrt.io import atomic_write_json
    from vsrt.manifest import PRECISIONS
    from vsrt.runtime.profiler import plot, profile_model, table

    precisions = [v.strip() for v in args.precision.split(",") if v.strip()]
    bad = [v for v in precisions if v not in PRECISIONS]
    if bad or not precisions:
        raise InputError(f"--precision takes {', '.join(PRECISIONS)} (comma-separated), got '{args.precision}'")
    dims = {}
    for d in args.dim:
        name, sep, val = d.partition("=")
        if not sep or not val.isdigit():
            raise InputError(f"--dim takes NAME=N, got '{d}'")
        dims[name] = int(val)
    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough for the whole table
        console = Console(width=max(console.width, 150))
    with console.status("profiling…") as status:
        report = profile_model(
            args.model_dir, args.backend, precisions, args.batch, args.warmup, args.duration, args.min_iterations,
            [s.strip() for s in args.stages.split(",")] if args.stages else None, args.gallery, args.gallery_size,
            dims, progress=lambda msg: status.update(f"profiling {msg}"),
        )
    console.print(table(report))
    for s in report.skipped:
        console.print(f"skipped {s['stage']} ({s['precision']}"
                      + (f", batch {s['batch']}" if s["batch"] else "") + f"): {s['reason']}")
    out = Path(args.output or f"profile_{report.family}_{args.backend}.json")
    atomic_write_json(out, report.to_json())
    console.print(f"JSON: {out}")
    if not args.no_plot:
        png = plot(report, args.plot or out.with_suffix(".png"))
        if png:
            console.print(f"plot: {png}")
    return 0
