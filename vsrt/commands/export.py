"""``vsrt export``: model directory → parity-checked FP32 ONNX per stage."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export each stage to ONNX and check it against PyTorch",
        description=(
            "Export every stage of MODEL_DIR (visual reasoner, text encoder, detector graphs when present) to "
            "onnx/<stage>.fp32.onnx with the TorchScript exporter, validate the graph (onnx.checker, GRU "
            "attributes), compare ONNX Runtime with the original PyTorch computation on random inputs and record "
            "max abs error and min cosine in manifest.json. Fails (exit 3, nothing written) if FP32 min cosine < "
            "0.99999."
        ),
    )
    p.add_argument("model_dir", help="model directory made by `vsrt convert` or `vsrt train`")
    p.add_argument("--stage", action="append", help="export only this stage (repeatable)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from vsrt.export.model_export import export_model

    console = Console()
    with console.status("exporting…") as status:

        def on_stage(name: str, parity: dict) -> None:
            status.update(f"exported {name}; continuing…")

        results = export_model(args.model_dir, args.stage, args.opset, on_stage=on_stage)
    t = Table(title=f"ONNX export of {args.model_dir} (ONNX Runtime CPU vs PyTorch, fp32)")
    for col in ("stage", "max abs err", "min cosine", "cases"):
        t.add_column(col)
    for name, p in results.items():
        t.add_row(name, f"{p.get('max_abs_err', float('nan')):.3g}", f"{p.get('min_cosine', float('nan')):.8f}",
                  str(p.get("cases", "")))
    console.print(t)
    return 0
