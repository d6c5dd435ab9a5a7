"""``vsrt doctor``: what is installed and usable here, with the next step for each missing piece."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="check ONNX Runtime providers, TensorRT, CUDA, GPU, CUDA bindings, faiss (and Jetson L4T/power mode)",
        description=(
            "Report which inference pieces are installed and usable on this machine — ONNX Runtime and its "
            "execution providers, TensorRT / TensorRT-RTX, the NVIDIA driver, GPUs and their compute capability, "
            "pycuda / cuda-python, faiss, OpenCV, matplotlib; on a Jetson the L4T release, JetPack and power mode — "
            "and for each missing piece the concrete next step."
        ),
    )
    p.add_argument("--json", dest="json_out", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from vsrt.runtime.doctor import diagnose, summary

    checks = diagnose()
    if args.json_out:
        print(json.dumps(summary(checks), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    marks = {"ok": "[green]ok[/]", "missing": "[red]missing[/]", "info": "[yellow]–[/]"}
    table = Table(title="vsrt doctor", title_justify="left")
    for col in ("component", "status", "detail", "next step"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, marks.get(c.status, c.status), c.detail, c.next_step)
    console = Console()
    console.print(table)
    s = summary(checks)
    console.print(f"usable backends here: {', '.join(s['usable_backends']) or 'none'}")
    return 0
