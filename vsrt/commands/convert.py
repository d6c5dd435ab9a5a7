"""``vsrt convert``: original checkpoint (+ vocabulary) → model directory."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="read an original checkpoint safely and write a vsrt model directory",
        description=(
            "Read an original checkpoint (e.g. VSRN's model_coco_1.pth.tar) and its vocabulary pickle through "
            "restricted loaders that cannot run code, validate every key and shape, and write MODEL_DIR with "
            "config.json, vocab.json, safetensors weights and manifest.json. Never writes a pickle."
        ),
    )
    p.add_argument("checkpoint", help="original checkpoint file (torch.save dict)")
    p.add_argument("--vocab", help="vocabulary: original .pkl (__main__.Vocabulary), SCAN .json or vocab.json; "
                   "DSRAN-BERT: BERT's WordPiece vocab.txt")
    p.add_argument("-o", "--output", required=True, help="model directory to create")
    p.add_argument("--family", help="model family (default: detected from the checkpoint)")
    p.add_argument("--variant", choices=["coco", "f30k"], help="VSRN dataset variant when opt.data_name is absent")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vsrt.manifest import Manifest
    from vsrt.modeldir import read_model_info
    from vsrt.models.convert import convert_checkpoint

    opts = {"variant": args.variant} if args.variant else {}
    if args.family == "dsran-bert" or (args.family is None and str(args.vocab or "").endswith(".txt")):
        # DSRAN-BERT: the model directory carries the WordPiece vocab.txt (BERT's), not a word vocabulary
        from vsrt.errors import InputError
        from vsrt.models.dsran_family import convert_bert_checkpoint

        if not args.vocab:
            raise InputError("dsran-bert needs its WordPiece vocabulary: pass --vocab vocab.txt (bert-base-uncased)")
        out = convert_bert_checkpoint(args.checkpoint, args.output, args.vocab, args.force, opts)
    else:
        out = convert_checkpoint(args.checkpoint, args.output, args.vocab, args.family, args.force, opts)
    info = read_model_info(out)
    m = Manifest.load(out)
    Console().print(
        f"[green]converted[/] {args.checkpoint} → {out} (family {info.family}, "
        f"{', '.join(f'{k}={v}' for k, v in info.config.items())}); source sha256 "
        f"{m.source.get('checkpoint', {}).get('sha256', '')[:12]}…"
    )
    return 0
