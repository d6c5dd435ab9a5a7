"""``vsrt demo``: the whole pipeline on synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="synth → train → convert → export → eval (PyTorch vs ONNX Runtime) → query",
        description=(
            "Run the whole vsrt path on a synthetic dataset: generate it, train a small model (cached), convert "
            "the original-format checkpoint, export parity-checked ONNX, evaluate with PyTorch and ONNX Runtime "
            "side by side, and answer a text query. Needs the export extra (torch)."
        ),
    )
    p.add_argument("--model", default="vsrn", help="model family: vsrn, vsrpp, resg, dsran-gru (default vsrn)")
    p.add_argument("--workdir", default=".vsrt-cache/demo", help="where data, checkpoint and model go")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--embed-size", type=int, default=256)
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3: fast from scratch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--query", help="text query for the last step (default: the first test caption)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vsrt.demo import DemoConfig, run_demo

    run_demo(DemoConfig(family=args.model, workdir=Path(args.workdir), seed=args.seed, epochs=args.epochs,
                        embed_size=args.embed_size, train_images=args.train_images, learning_rate=args.lr,
                        query=args.query))
    return 0
