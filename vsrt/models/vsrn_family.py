"""VSRN's registry entry: reading original checkpoints and describing its stages."""

from __future__ import annotations

from typing import Any

import torch

from vsrt.errors import CheckpointError
from vsrt.export.vsrn import stage_exports
from vsrt.models.checkpoints import check_state_dict, image_text_states
from vsrt.models.registry import Converted, Family
from vsrt.models.vsrn import VSRNConfig, VSRNImageEncoder, VSRNTextEncoder, build, variant_from_data_name
from vsrt.text.vocab import Vocabulary
from vsrt.training import vsrn as _train


def looks_like(ckpt: Any) -> bool:
    """An original VSRN checkpoint: ``model`` = [image sd, text sd] with ``Rs_GCN_1`` keys."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), (list, tuple)) or len(ckpt["model"]) != 2:
        return False
    img = ckpt["model"][0]
    if not (isinstance(img, dict) and "Rs_GCN_1.g.weight" in img and "img_rnn.weight_ih_l0" in img):
        return False
    from vsrt.models.vsrpp_family import looks_like as looks_like_vsrpp  # VSR++ extends VSRN's layout

    return not looks_like_vsrpp(ckpt)


def convert(ckpt: Any, vocab: Vocabulary | None, options: dict[str, Any]) -> Converted:
    """Original VSRN checkpoint (+ vocabulary) → config and stage state dicts, every key and shape validated.

    ``options`` may force ``variant`` (``coco``/``f30k``) when ``opt.data_name`` is absent.
    """
    img_sd, txt_sd, opt = image_text_states(ckpt, "VSRN")
    vocab_rows, word_dim = (int(x) for x in txt_sd["embed.weight"].shape)
    embed_size, img_dim = (int(x) for x in img_sd["fc.weight"].shape)
    if options.get("variant"):
        variant = options["variant"]
    elif "data_name" in opt:
        variant = variant_from_data_name(str(opt["data_name"]))
    else:
        variant = "f30k" if "bn.weight" in img_sd else "coco"
    cfg = VSRNConfig(
        vocab_size=vocab_rows,
        img_dim=img_dim,
        embed_size=embed_size,
        word_dim=word_dim,
        variant=variant,
        use_abs=bool(opt.get("use_abs", False)),
        no_imgnorm=bool(opt.get("no_imgnorm", False)),
    )
    if vocab is not None and len(vocab) != vocab_rows:
        raise CheckpointError(
            f"vocabulary has {len(vocab)} words but the checkpoint's embedding has {vocab_rows} rows "
            "(txt_enc embed.weight): wrong vocabulary file for this checkpoint?"
        )
    with torch.device("meta"):
        img_shapes = {k: tuple(v.shape) for k, v in VSRNImageEncoder(cfg).state_dict().items()}
        txt_shapes = {k: tuple(v.shape) for k, v in VSRNTextEncoder(cfg).state_dict().items()}
    hint = f" (variant '{variant}' from opt.data_name={opt.get('data_name')!r})"
    check_state_dict(img_sd, img_shapes, "image encoder state dict (model[0])" + hint)
    check_state_dict(txt_sd, txt_shapes, "text encoder state dict (model[1])")
    source = {
        "format": "VSRN torch.save dict (model=[img_enc, txt_enc], opt)",
        "epoch": ckpt.get("epoch"),
        "best_rsum": float(ckpt["best_rsum"]) if ckpt.get("best_rsum") is not None else None,
        "opt": opt,
    }
    return Converted(cfg, {"visual": dict(img_sd), "text": dict(txt_sd)}, source)


FAMILY = Family(
    name="vsrn",
    description="VSRN (ICCV 2019): region GCN reasoning + GRU, GRU text encoder; cosine of global embeddings",
    config_from_dict=VSRNConfig.from_dict,
    build=build,
    stage_exports=stage_exports,
    convert=convert,
    looks_like=looks_like,
    default_config=_train.default_config,
    make_trainable=_train.make_trainable,
    save_trained=_train.save_trained,
)
