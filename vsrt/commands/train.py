"""``vsrt train``: train a model family on region features in the SCAN layout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a precomputed dataset (e.g. from `vsrt synth`)",
        description=(
            "Train a model family on DATA_DIR ({split}_ims.npy, {split}_caps.txt, vocab.pkl) with its original "
            "losses (VSRN: VSE++ hardest-negative triplet loss, margin 0.2). VSRN is saved as an ORIGINAL-format "
            "checkpoint (torch.save dict with model=[img_enc, txt_enc] and opt) so `vsrt convert` reads it like a "
            "released one; families without an original format are saved as a model directory."
        ),
    )
    p.add_argument("data_dir", help="dataset directory in the SCAN precomputed layout")
    p.add_argument("-o", "--output", required=True, help="checkpoint file (VSRN) or model directory to write")
    p.add_argument("--family", default="vsrn", help="model family (default vsrn)")
    p.add_argument("--embed-size", type=int, default=2048, help="joint embedding size D (default 2048)")
    p.add_argument("--word-dim", type=int, default=300, help="word embedding size (default 300)")
    p.add_argument("--variant", choices=["coco", "f30k"], default="coco", help="VSRN dataset variant")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate (default 2e-4)")
    p.add_argument("--lr-update", type=int, default=8, help="decay lr ×0.1 every N epochs")
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--warmup-epochs", type=int, default=1, help="epochs before hardest negatives (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vsrt.training.run import train
    from vsrt.training.trainer import TrainConfig

    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, lr_update=args.lr_update,
        margin=args.margin, warmup_epochs=args.warmup_epochs, seed=args.seed, threads=args.threads,
    )
    opts = {"embed_size": args.embed_size, "word_dim": args.word_dim, "variant": args.variant}
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as prog:
        task = prog.add_task("epoch 1", total=args.epochs)

        def on_epoch(rec: dict) -> None:
            prog.update(task, advance=1, description=f"epoch {rec['epoch'] + 1}")
            console.print(f"epoch {rec['epoch']}: loss {rec['loss']:.3f}  dev rsum {rec['rsum']:.1f}  "
                          f"R@1 i2t {rec['i2t_r1']:.1f} t2i {rec['t2i_r1']:.1f}")

        summary = train(args.family, args.data_dir, args.output, cfg, opts, on_epoch=on_epoch)
    console.print(f"[green]saved[/] {summary['output']} (best dev rsum {summary['best_rsum']:.1f} at epoch "
                  f"{summary['best_epoch']}, {summary['seconds']:.0f} s)")
    return 0
