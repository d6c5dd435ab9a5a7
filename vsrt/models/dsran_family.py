"""DSRAN's registry entries (``dsran-gru``, ``dsran-bert``): reading original checkpoints and describing stages.

Original layouts (``kywen1119/DSRAN`` ``train.py`` / ``train_bert.py``), both ``torch.save`` dicts with
``epoch, model, best_rsum, opt (argparse.Namespace), Eiters``:

* GRU: ``model = [DSRAN.state_dict()]`` — a list with one state dict, keys ``img_enc.cnn.*`` (torchvision
  ResNet-152 incl. its unused ``fc``), ``img_enc.fc.*``, ``rcnn_enc.fc_image.*``, ``txt_enc.{embed,rnn}.*``,
  ``gat_1/2/cap``, ``gat_cat_1..K``, ``fusion[,fusion2,fusion3]``.
* BERT: ``model = DataParallel(DSRAN).state_dict()`` — *not* wrapped in a list, every key prefixed ``module.``,
  plus ``txt_enc.bert.*`` (``pytorch_pretrained_bert`` names) and ``txt_enc.fc.0``.

Sizes are read from the weights (``K`` from the JSR graphs, ResNet depth from its blocks, BERT depth/width from
its matrices); the region count (100) and BERT's head count (``hidden/64`` = 12 for BERT-base) are not in the
weights and can be overridden with ``options`` (``num_regions``, ``bert_heads``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vsrt.errors import CheckpointError, InputError
from vsrt.export.dsran import stage_exports
from vsrt.models.checkpoints import check_state_dict, checkpoint_options
from vsrt.models.dsran import DSRANConfig, build, split_original_state
from vsrt.models.registry import Converted, Family
from vsrt.text.vocab import Vocabulary
from vsrt.training import dsran as _train

DP_PREFIX = "module."
WORDPIECE_VOCAB_NAME = "vocab.txt"


def _gru_state(ckpt: Any) -> dict[str, Any] | None:
    m = ckpt.get("model") if isinstance(ckpt, dict) else None
    if isinstance(m, (list, tuple)) and len(m) == 1 and isinstance(m[0], dict):
        return m[0]
    return None


def _bert_state(ckpt: Any) -> dict[str, Any] | None:
    m = ckpt.get("model") if isinstance(ckpt, dict) else None
    return m if isinstance(m, dict) else None


def looks_like_gru(ckpt: Any) -> bool:
    """An original DSRAN-GRU checkpoint: ``model`` = [state dict] with ResNet, GRU and graph keys."""
    sd = _gru_state(ckpt)
    return sd is not None and "img_enc.cnn.conv1.weight" in sd and "txt_enc.rnn.weight_ih_l0" in sd


def looks_like_bert(ckpt: Any) -> bool:
    """An original DSRAN-BERT checkpoint: ``model`` = DataParallel state dict with ``module.txt_enc.bert.*``."""
    sd = _bert_state(ckpt)
    return sd is not None and DP_PREFIX + "txt_enc.bert.embeddings.word_embeddings.weight" in sd \
        and DP_PREFIX + "img_enc.cnn.conv1.weight" in sd


def _shape(sd: dict[str, Any], key: str, what: str) -> tuple[int, ...]:
    if key not in sd or not hasattr(sd[key], "shape"):
        raise CheckpointError(f"DSRAN checkpoint lacks '{key}' ({what})")
    return tuple(int(x) for x in sd[key].shape)


def _cnn_layout(sd: dict[str, Any]) -> tuple[list[int], int]:
    width = _shape(sd, "img_enc.cnn.conv1.weight", "ResNet stem")[0]
    layers = []
    for i in range(1, 5):
        n = 0
        while f"img_enc.cnn.layer{i}.{n}.conv1.weight" in sd:
            n += 1
        if n == 0:
            raise CheckpointError(f"DSRAN checkpoint has no ResNet blocks img_enc.cnn.layer{i}.*")
        layers.append(n)
    return layers, width


def _bert_config(sd: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    p = "txt_enc.bert."
    vocab, hidden = _shape(sd, p + "embeddings.word_embeddings.weight", "BERT word embeddings")
    n_layers = 0
    while f"{p}encoder.layer.{n_layers}.attention.self.query.weight" in sd:
        n_layers += 1
    heads = int(options.get("bert_heads") or max(hidden // 64, 1))
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "intermediate_size": _shape(sd, p + "encoder.layer.0.intermediate.dense.weight", "BERT FFN")[0],
        "max_position_embeddings": _shape(sd, p + "embeddings.position_embeddings.weight", "BERT positions")[0],
        "type_vocab_size": _shape(sd, p + "embeddings.token_type_embeddings.weight", "BERT token types")[0],
    }


def config_from_state(sd: dict[str, Any], variant: str, options: dict[str, Any]) -> DSRANConfig:
    """Hyper-parameters of an original DSRAN state dict (without ``module.``)."""
    layers, width = _cnn_layout(sd)
    fc = "img_enc.fc.weight" if variant == "gru" else "img_enc.fc.0.weight"
    embed_size, img_dim = _shape(sd, fc, "grid projection")
    if variant == "gru":
        k = sum(f"gat_cat_{i}.encoder.0.mha.query.weight" in sd for i in range(1, 5))
    else:
        k = int("gat_cat.encoder.0.mha.query.weight" in sd) + sum(
            f"gat_cat_{i}.encoder.0.mha.query.weight" in sd for i in range(1, 4))
    kw: dict[str, Any] = {"variant": variant, "embed_size": embed_size, "img_dim": img_dim, "K": k,
                          "cnn_layers": layers, "cnn_width": width,
                          "num_regions": int(options.get("num_regions") or 100)}
    if variant == "gru":
        kw["vocab_size"], kw["word_dim"] = _shape(sd, "txt_enc.embed.weight", "word embedding")
    else:
        kw["bert"] = _bert_config(sd, options)
        kw["pos_dim"] = _shape(sd, "rcnn_enc.fc_pos.0.weight", "region box/class encoding")[1]
    try:
        return DSRANConfig(**kw)
    except ValueError as exc:
        raise CheckpointError(f"DSRAN checkpoint has an unsupported layout: {exc}") from None


def check_stage_states(cfg: DSRANConfig, stages: dict[str, dict[str, Any]], what: str) -> None:
    """Validate every stage state dict's keys and shapes against the modules ``cfg`` builds."""
    with torch.device("meta"):
        mods = build(cfg)
        expected = {n: {k: tuple(v.shape) for k, v in m.state_dict().items()} for n, m in mods.items()}
    names = {"grid": "ResNet img_enc.cnn.*", "visual": "image side", "text": "text side"}
    for name in ("grid", "visual", "text"):
        check_state_dict(stages[name], expected[name], f"{what} ({names[name]})")


def _convert(ckpt: Any, vocab: Vocabulary | None, options: dict[str, Any], variant: str) -> Converted:
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError("not a DSRAN checkpoint: expected a dict with a 'model' entry")
    if variant == "gru":
        sd = _gru_state(ckpt)
        if sd is None:
            raise CheckpointError("not a DSRAN-GRU checkpoint: 'model' must be a list [DSRAN.state_dict()]")
        fmt = "DSRAN-GRU torch.save dict (model=[DSRAN.state_dict()], opt)"
    else:
        raw = _bert_state(ckpt)
        if raw is None:
            raise CheckpointError("not a DSRAN-BERT checkpoint: 'model' must be the DataParallel state dict "
                                  "(keys 'module.…')")
        bad = [k for k in raw if not k.startswith(DP_PREFIX)]
        if bad:
            raise CheckpointError(f"DSRAN-BERT checkpoint keys must all start with 'module.' (DataParallel); "
                                  f"{len(bad)} do not, e.g. {bad[0]!r}")
        sd = {k[len(DP_PREFIX):]: v for k, v in raw.items()}
        fmt = "DSRAN-BERT torch.save dict (model=DataParallel(DSRAN).state_dict() with module. prefixes, opt)"
    opt = checkpoint_options(ckpt)
    # not in the original opt (nor in the weights); checkpoints written by `vsrt train` record them
    options = {**{k: opt[k] for k in ("num_regions", "bert_heads") if opt.get(k)}, **options}
    cfg = config_from_state(sd, variant, options)
    if "K" in opt and int(opt["K"]) != cfg.K:
        raise CheckpointError(f"checkpoint opt.K={opt['K']} but its weights have {cfg.K} JSR graphs")
    if vocab is not None and len(vocab) != cfg.vocab_size:
        raise CheckpointError(
            f"vocabulary has {len(vocab)} words but the checkpoint's embedding has {cfg.vocab_size} rows "
            "(txt_enc.embed.weight): wrong vocabulary file for this checkpoint?"
        )
    stages = split_original_state(sd)
    check_stage_states(cfg, stages, f"DSRAN-{variant.upper()} state dict")
    source = {
        "format": fmt,
        "epoch": ckpt.get("epoch"),
        "best_rsum": float(ckpt["best_rsum"]) if ckpt.get("best_rsum") is not None else None,
        "opt": opt,
    }
    return Converted(cfg, {k: dict(v) for k, v in stages.items()}, source)


def convert_gru(ckpt: Any, vocab: Vocabulary | None, options: dict[str, Any]) -> Converted:
    """Original DSRAN-GRU checkpoint (+ word vocabulary) → config and stage state dicts, every key checked."""
    return _convert(ckpt, vocab, options, "gru")


def convert_bert(ckpt: Any, vocab: Vocabulary | None, options: dict[str, Any]) -> Converted:
    """Original DSRAN-BERT checkpoint → config and stage state dicts, every key checked. The WordPiece
    ``vocab.txt`` is written by :func:`convert_bert_checkpoint`."""
    return _convert(ckpt, None, options, "bert")


def convert_bert_for_registry(ckpt: Any, vocab: Vocabulary | None, options: dict[str, Any]) -> Converted:
    """``Family.convert`` of ``dsran-bert``: refuses to produce a model directory without its WordPiece
    vocabulary (the generic writer does not copy ``vocab.txt``); :func:`convert_bert_checkpoint` does."""
    if not options.get("wordpiece_vocab"):
        raise InputError("DSRAN-BERT needs its WordPiece vocab.txt in the model directory: `vsrt convert CKPT "
                         "--family dsran-bert --vocab vocab.txt -o OUT` (or "
                         "vsrt.models.dsran_family.convert_bert_checkpoint(checkpoint, out_dir, vocab_txt))")
    return convert_bert(ckpt, vocab, options)


def convert_bert_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    vocab_path: str | Path,
    force: bool = False,
    options: dict[str, Any] | None = None,
) -> Path:
    """Original DSRAN-BERT checkpoint + BERT ``vocab.txt`` → model directory (with ``vocab.txt`` and a
    ``wordpiece`` tokenizer entry in ``config.json``), built in a temporary sibling and renamed into place."""
    from vsrt.io import sha256_file
    from vsrt.models.checkpoints import load_torch_checkpoint
    from vsrt.models.convert import write_model_dir
    from vsrt.text.wordpiece import read_wordpiece_vocab

    tokens = read_wordpiece_vocab(vocab_path)
    ckpt = load_torch_checkpoint(checkpoint)
    conv = convert_bert(ckpt, None, dict(options or {}))
    bert_vocab = int(conv.config.bert_config.vocab_size)
    if len(tokens) != bert_vocab:
        raise CheckpointError(f"{vocab_path} has {len(tokens)} WordPiece tokens but the checkpoint's BERT embeds "
                              f"{bert_vocab}: wrong vocab.txt for this checkpoint?")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"output directory {out} exists and is not empty (use --force to replace it)")
    digest = sha256_file(vocab_path)
    source = dict(conv.source)
    source["checkpoint"] = {"file": Path(checkpoint).name, "sha256": sha256_file(checkpoint)}
    source["vocab"] = {"file": Path(vocab_path).name, "sha256": digest}
    tokenizer = {"type": "wordpiece", "vocab": WORDPIECE_VOCAB_NAME, "sha256": digest, "lowercase": True,
                 "max_len": conv.config.max_len}
    out.parent.mkdir(parents=True, exist_ok=True)
    build_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".build", dir=out.parent))
    try:
        staged = write_model_dir(build_root / "model", "dsran-bert", conv.config, conv.stage_states, None, source,
                                 tokenizer=tokenizer)
        shutil.copyfile(vocab_path, staged / WORDPIECE_VOCAB_NAME)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staged.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staged.rename(out)
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    return out


FAMILY_GRU = Family(
    name="dsran-gru",
    description="DSRAN-GRU (TCSVT 2020): ResNet-152 grid + 100 regions, graph attention (SSR/JSR), GRU text",
    config_from_dict=DSRANConfig.from_dict,
    build=build,
    stage_exports=stage_exports,
    convert=convert_gru,
    looks_like=looks_like_gru,
    needs_vocab=True,
    default_config=_train.default_config_gru,
    make_trainable=_train.make_trainable,
    save_trained=_train.save_trained,
)

FAMILY_BERT = Family(
    name="dsran-bert",
    description="DSRAN-BERT (TCSVT 2020): grid + regions with box/class encodings, BERT text (32 WordPiece ids)",
    config_from_dict=DSRANConfig.from_dict,
    build=build,
    stage_exports=stage_exports,
    convert=convert_bert_for_registry,
    looks_like=looks_like_bert,
    needs_vocab=False,
    default_config=_train.default_config_bert,
    make_trainable=_train.make_trainable,
    save_trained=_train.save_trained,
)

#: the registry reads ``FAMILY``; ``dsran-bert`` is registered through :mod:`vsrt.models.dsran_bert_family`
FAMILY = FAMILY_GRU
