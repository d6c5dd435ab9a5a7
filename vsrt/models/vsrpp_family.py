"""VSR++'s registry entry: its checkpoint layout, conversion, stages and training.

VSR++ has no public code, so its "original" layout is the one ``vsrt train --family vsrpp`` writes, modelled on
VSRN's (VSR++ extends VSRN): ``torch.save({'epoch', 'model': [img_sd, txt_sd], 'best_rsum', 'opt', 'Eiters'})``
where ``img_sd`` has VSRN's image-encoder keys, ``txt_sd`` SCAN's Bi-GRU text-encoder keys
(``embed.weight``, ``rnn.*_l0`` and ``rnn.*_l0_reverse``) and ``opt`` (``argparse.Namespace``) carries VSRN's fields
plus ``model='vsrpp'``, ``bi_gru``, ``lambda_softmax``, ``lambda_lse``, ``agg_func``, ``cross_attn``, ``mu``.
"""

from __future__ import annotations

from typing import Any

import torch

from vsrt.errors import CheckpointError
from vsrt.export.vsrpp import stage_exports
from vsrt.models.checkpoints import check_state_dict, checkpoint_options, image_text_states
from vsrt.models.registry import Converted, Family
from vsrt.models.vsrn import variant_from_data_name
from vsrt.models.vsrpp import VSRPPConfig, VSRPPImageEncoder, VSRPPTextEncoder, build
from vsrt.text.vocab import Vocabulary
from vsrt.training import vsrpp as _train

#: ``opt`` fields only VSR++ checkpoints have (VSRN's ``opt`` has none of them)
VSRPP_OPT_FIELDS = ("lambda_softmax", "lambda_lse", "agg_func", "mu")


def looks_like(ckpt: Any) -> bool:
    """A VSR++ checkpoint: VSRN's two-state-dict layout with VSRN image keys, and a Bi-GRU text encoder or the
    local-branch fields in ``opt``."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), (list, tuple)) or len(ckpt["model"]) != 2:
        return False
    img, txt = ckpt["model"]
    if not (isinstance(img, dict) and isinstance(txt, dict)):
        return False
    if "Rs_GCN_1.g.weight" not in img or "img_rnn.weight_ih_l0" not in img:
        return False
    try:
        opt = checkpoint_options(ckpt)
    except CheckpointError:
        return False
    return opt.get("model") == "vsrpp" or any(k in opt for k in VSRPP_OPT_FIELDS) or "rnn.weight_ih_l0_reverse" in txt


def convert(ckpt: Any, vocab: Vocabulary | None, options: dict[str, Any]) -> Converted:
    """VSR++ checkpoint (+ vocabulary) → config and stage state dicts, every key and shape validated.

    Sizes come from the weights; ``bi_gru`` from the presence of ``rnn.*_reverse`` keys (it must agree with
    ``opt.bi_gru``); the local-branch hyper-parameters from ``opt`` (``options`` may override ``mu``,
    ``lambda_softmax``, ``lambda_lse``, ``agg_func``, ``variant``).
    """
    img_sd, txt_sd, opt = image_text_states(ckpt, "VSR++")
    vocab_rows, word_dim = (int(x) for x in txt_sd["embed.weight"].shape)
    embed_size, img_dim = (int(x) for x in img_sd["fc.weight"].shape)
    bi_gru = "rnn.weight_ih_l0_reverse" in txt_sd
    if "bi_gru" in opt and bool(opt["bi_gru"]) != bi_gru:
        raise CheckpointError(
            f"checkpoint opt.bi_gru={opt['bi_gru']} but the text encoder weights are "
            f"{'bi' if bi_gru else 'uni'}directional"
        )
    if options.get("variant"):
        variant = options["variant"]
    elif "data_name" in opt:
        variant = variant_from_data_name(str(opt["data_name"]))
    else:
        variant = "f30k" if "bn.weight" in img_sd else "coco"
    defaults = VSRPPConfig(vocab_size=vocab_rows)
    hyper = {k: options.get(k, opt.get(k, getattr(defaults, k))) for k in VSRPP_OPT_FIELDS}
    try:
        cfg = VSRPPConfig(
            vocab_size=vocab_rows, img_dim=img_dim, embed_size=embed_size, word_dim=word_dim,
            num_regions=int(opt.get("num_regions", defaults.num_regions)), variant=variant, bi_gru=bi_gru,
            lambda_softmax=float(hyper["lambda_softmax"]), lambda_lse=float(hyper["lambda_lse"]),
            agg_func=str(hyper["agg_func"]), mu=float(hyper["mu"]),
        )
    except ValueError as exc:
        raise CheckpointError(f"VSR++ checkpoint has invalid settings: {exc}") from None
    if vocab is not None and len(vocab) != vocab_rows:
        raise CheckpointError(
            f"vocabulary has {len(vocab)} words but the checkpoint's embedding has {vocab_rows} rows "
            "(txt_enc embed.weight): wrong vocabulary file for this checkpoint?"
        )
    with torch.device("meta"):
        img_shapes = {k: tuple(v.shape) for k, v in VSRPPImageEncoder(cfg).state_dict().items()}
        txt_shapes = {k: tuple(v.shape) for k, v in VSRPPTextEncoder(cfg).state_dict().items()}
    hint = f" (variant '{variant}' from opt.data_name={opt.get('data_name')!r})"
    check_state_dict(img_sd, img_shapes, "image encoder state dict (model[0])" + hint)
    check_state_dict(txt_sd, txt_shapes, "text encoder state dict (model[1])")
    missing_hyper = [k for k in VSRPP_OPT_FIELDS if k not in opt and k not in options]
    source = {
        "format": "VSR++ torch.save dict (model=[img_enc, txt_enc], opt), vsrt's VSRN-like layout",
        "epoch": ckpt.get("epoch"),
        "best_rsum": float(ckpt["best_rsum"]) if ckpt.get("best_rsum") is not None else None,
        "opt": opt,
        "defaults_used": missing_hyper,
    }
    return Converted(cfg, {"visual": dict(img_sd), "text": dict(txt_sd)}, source)


FAMILY = Family(
    name="vsrpp",
    description="VSR++ (ICPR 2020, reconstructed): VSRN image side + Bi-GRU text; S = S_G + μ·S_L (SCAN t2i "
    "local score, re-ranks a global shortlist)",
    config_from_dict=VSRPPConfig.from_dict,
    build=build,
    stage_exports=stage_exports,
    convert=convert,
    looks_like=looks_like,
    default_config=_train.default_config,
    make_trainable=_train.make_trainable,
    save_trained=_train.save_trained,
)
