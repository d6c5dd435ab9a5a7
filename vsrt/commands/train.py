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
            "released one; so are VSR++ (VSRN's layout with its local-branch fields in opt) and DSRAN (its GRU list / "
            "BERT DataParallel layouts). ReSG has no original format and is saved as a model directory. Family "
            "losses: VSR++ global + local (+ fused, + caption generation) triplet losses, ReSG triplet + center hinge "
            "+ positive-negative margin; set their weights with --loss KEY=VALUE."
        ),
    )
    p.add_argument("data_dir", help="dataset directory in the SCAN precomputed layout")
    p.add_argument("-o", "--output", required=True, help="checkpoint file (VSRN) or model directory to write")
    p.add_argument("--family", default="vsrn", help="model family: vsrn, vsrpp, resg, dsran-gru, dsran-bert "
                   "(default vsrn)")
    p.add_argument("--embed-size", type=int, default=2048, help="joint embedding size D (default 2048)")
    p.add_argument("--word-dim", type=int, default=300, help="word embedding size (default 300)")
    p.add_argument("--variant", choices=["coco", "f30k"], default="coco", help="VSRN dataset variant")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate (default 2e-4)")
    p.add_argument("--lr-update", type=int, default=8, help="decay lr ×0.1 every N epochs")
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--warmup-epochs", type=int, default=1, help="epochs before hardest negatives (default 1)")
    p.add_argument("--hard-lr-scale", type=float, default=1.0,
                   help="learning-rate factor once hardest negatives start (default 1.0; 0.3 keeps high-lr runs from "
                        "collapsing at the switch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--loss", action="append", default=[], metavar="KEY=VALUE",
                   help="family loss option, repeatable: VSR++ global_weight, local_weight, fused_weight, "
                   "caption_weight (caption generation, default 0); ReSG center_weight, center_margin, pn_weight, "
                   "pos_threshold, neg_threshold")
    p.add_argument("--bert-path", help="DSRAN-BERT: local BERT directory (config.json, weights, vocab.txt)")
    p.add_argument("--wordpiece-vocab", help="DSRAN-BERT: WordPiece vocab.txt (default: BERT dir or DATA_DIR)")
    p.add_argument("--ft-bert", action="store_true", help="DSRAN-BERT: fine-tune BERT (the original's ft_bert)")
    p.add_argument("--resnet-path", help="DSRAN: ResNet-152 weights stored in the checkpoint's grid encoder")
    p.add_argument("--K", type=int, help="DSRAN: JSR branches (1, 2 or 4; default 2)")
    p.set_defaults(func=run)


def parse_loss_options(items: list[str]) -> dict[str, float]:
    """``["key=value", …]`` → ``{key: float}``; a clear error for anything else."""
    from vsrt.errors import InputError

    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise InputError(f"--loss expects KEY=NUMBER, got {item!r}") from None
    return out


def _loss_keys(family: str) -> list[str]:
    """Loss options a family's trainer understands (``TrainConfig.extra``)."""
    if family == "vsrpp":
        from vsrt.training.vsrpp import LOSS_DEFAULTS
    elif family == "resg":
        from vsrt.training.resg import LOSS_DEFAULTS
    else:
        return []
    return sorted(LOSS_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vsrt.errors import InputError
    from vsrt.models.registry import get_family
    from vsrt.training.run import train
    from vsrt.training.trainer import TrainConfig

    get_family(args.family)  # unknown family → a clear error listing the known ones
    dsran = args.family.startswith("dsran")
    extra: dict = parse_loss_options(args.loss)
    if dsran:
        if extra:
            raise InputError("--loss options are for vsrpp and resg; DSRAN trains with its triplet loss only")
        extra = {k: v for k, v in (("bert_path", args.bert_path), ("ft_bert", args.ft_bert or None),
                                   ("resnet_path", args.resnet_path)) if v}
    elif args.bert_path or args.wordpiece_vocab or args.ft_bert or args.resnet_path or args.K:
        raise InputError("--bert-path, --wordpiece-vocab, --ft-bert, --resnet-path and --K are DSRAN options")
    if extra and not dsran:
        known = _loss_keys(args.family)
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise InputError(f"--loss {', '.join(unknown)}: not a {args.family} loss option "
                             f"(known: {', '.join(known) or 'none'})")
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, lr_update=args.lr_update,
        margin=args.margin, warmup_epochs=args.warmup_epochs, hard_negative_lr_scale=args.hard_lr_scale,
        seed=args.seed, threads=args.threads, extra=extra,
    )
    opts = {"embed_size": args.embed_size, "word_dim": args.word_dim, "variant": args.variant}
    if dsran:
        from vsrt.training.dsran import train as dsran_train

        train = dsran_train
        opts = {"embed_size": args.embed_size, "word_dim": args.word_dim, "K": args.K, "bert_path": args.bert_path,
                "wordpiece_vocab": args.wordpiece_vocab}
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
