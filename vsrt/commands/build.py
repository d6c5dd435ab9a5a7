"""``vsrt build``: TensorRT engines (TensorRT 10 / 11 / TensorRT-RTX) from a model directory's ONNX files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build TensorRT engines for the model's stages",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build engines/<stage>_<precision>_trt<version>_sm<XY>.engine for each stage and register them in\n"
            "manifest.json (TensorRT version, compute capability, profile, SHA-256 of engine and ONNX).\n\n"
            "TensorRT 11 and TensorRT-RTX are strongly typed: --precision fp16/int8 builds the fp16 / Q/DQ ONNX from\n"
            "`vsrt calibrate`. TensorRT 10 builds those too (strongly typed) or, with only the FP32 ONNX or\n"
            "--mode implicit, uses the FP16/INT8 builder flags and the calibration cache. FP32 builds disable TF32.\n"
            "The optimization profile comes from the manifest's min/opt/max; override with --shape.\n"
            "TensorRT-RTX builds ahead of time without a GPU: give --compute-capability (e.g. 86).\n\n"
            "examples:\n"
            "  vsrt build my-model --precision fp16\n"
            "  vsrt build my-model --precision int8 --stage visual --shape regions:1x36x2048/8x36x2048/32x36x2048\n"
            "  vsrt build my-model --builder tensorrt_rtx --compute-capability 86 --compute-capability 89"
        ),
    )
    p.add_argument("model_dir", help="model directory with ONNX files")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32", help="engine precision")
    p.add_argument("--stage", action="append", help="only this stage (repeatable; default: every stage)")
    p.add_argument("--builder", choices=["auto", "tensorrt", "tensorrt_rtx"], default="auto",
                   help="TensorRT flavour (default: tensorrt if installed, else tensorrt_rtx)")
    p.add_argument("--mode", choices=["auto", "typed", "implicit"], default="auto",
                   help="typed: build the fp16/int8 ONNX; implicit (TensorRT 10 only): FP32 ONNX + builder flags")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:MIN/OPT/MAX",
                   help="profile override, e.g. tokens:1x2/32x16/128x64 (one shape = static)")
    p.add_argument("--workspace", type=int, default=2048, help="workspace limit in MiB (default 2048)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file (default engines/timing_<trt>.cache)")
    p.add_argument("--no-timing-cache", dest="use_timing_cache", action="store_false", help="do not use one")
    p.add_argument("--compute-capability", action="append", metavar="XY",
                   help="TensorRT-RTX target (repeatable): 75, 80, 86, 89, 120, 121 (default: this GPU)")
    p.add_argument("--dla-core", type=int, help="build for this DLA core (TensorRT 10 on Jetson; fp16/int8, static)")
    p.add_argument("--no-gpu-fallback", dest="gpu_fallback", action="store_false",
                   help="with --dla-core: fail instead of running unsupported layers on the GPU")
    p.add_argument("--calibration-cache", type=Path, help="TensorRT 10 implicit INT8 cache (default from calibrate)")
    p.add_argument("--opt-level", type=int, choices=range(6), help="builder optimization level 0-5")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose log")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from vsrt.export.engine_build import BuildOptions, build_model, parse_shape_override

    shapes = dict(parse_shape_override(s) for s in args.shape)
    opts = BuildOptions(
        precision=args.precision, builder=args.builder, shapes=shapes, workspace_mib=args.workspace,
        timing_cache=args.timing_cache, use_timing_cache=args.use_timing_cache,
        compute_capabilities=args.compute_capability, dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
        mode=args.mode, calibration_cache=args.calibration_cache, optimization_level=args.opt_level,
        verbose=args.verbose,
    )
    console = Console()
    with console.status("building…") as status:

        def log(msg: str) -> None:
            status.update(msg)
            console.print(f"[dim]{msg}[/]")

        entries = build_model(args.model_dir, args.stage, opts, log)
    t = Table(title=f"engines of {args.model_dir}")
    for col in ("engine", "typing", "MB", "build s", "profile"):
        t.add_column(col)
    for e in entries:
        prof = ", ".join(f"{k}: {'x'.join(map(str, v['min']))}…{'x'.join(map(str, v['max']))}"
                         for k, v in e["profile"].items())
        t.add_row(e["file"], e["typing"], f"{e['size_bytes'] / 1e6:.1f}", f"{e['build_seconds']:.1f}", prof)
    console.print(t)
    return 0
