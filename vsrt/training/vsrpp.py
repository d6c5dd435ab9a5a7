"""Training VSR++ and saving it in its checkpoint layout (VSRN's, with the local-branch fields in ``opt``).

Loss (vsrt's reading of the paper's "learning strategy balancing" global and local alignment; weights in
``TrainConfig.extra``): ``global_weight·L(S_G) + local_weight·L(S_L) + fused_weight·L(S_G + μ·S_L)`` with ``L`` the
VSE++ hardest-negative triplet loss on the batch score matrix, plus ``caption_weight`` × the caption-generation loss
on ``V_L`` (off by default; :class:`~vsrt.training.caption.CaptionDecoder`, training-only, not saved).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vsrt.models.vsrpp import (
    VSRPPConfig,
    VSRPPImageEncoder,
    VSRPPTextEncoder,
    fused_scores,
    local_score_matrix,
)
from vsrt.training.caption import CaptionDecoder
from vsrt.training.losses import triplet_loss
from vsrt.training.vsrn import original_opt as vsrn_original_opt
from vsrt.training.vsrn import save_original_checkpoint

if TYPE_CHECKING:
    from vsrt.training.batches import Batch

#: ``TrainConfig.extra`` keys understood here, with their defaults
#: (global + fused: on the synthetic benchmark, global + local stayed at chance level after 100 steps, global + fused
#: learned — benchmarks/results/family_recall.json, docs/models.md)
LOSS_DEFAULTS: dict[str, float] = {"global_weight": 1.0, "local_weight": 0.0, "fused_weight": 1.0,
                                   "caption_weight": 0.0}


class VSRPPTrainable:
    """VSR++'s encoders (+ the optional training-only caption decoder) with their losses."""

    def __init__(self, cfg: VSRPPConfig, margin: float = 0.2, global_weight: float = 1.0, local_weight: float = 0.0,
                 fused_weight: float = 1.0, caption_weight: float = 0.0) -> None:
        if min(global_weight, local_weight, fused_weight, caption_weight) < 0:
            raise ValueError("VSR++ loss weights must be >= 0")
        if global_weight + local_weight + fused_weight == 0:
            raise ValueError("at least one of global_weight, local_weight, fused_weight must be positive")
        self.cfg = cfg
        self.margin = margin
        self.weights = {"global": global_weight, "local": local_weight, "fused": fused_weight}
        self.caption_weight = caption_weight
        self.img = VSRPPImageEncoder(cfg)
        self.txt = VSRPPTextEncoder(cfg)
        self.caption = CaptionDecoder(cfg.embed_size, cfg.vocab_size) if caption_weight > 0 else None
        self.last_terms: dict[str, float] = {}

    def parameters(self) -> list[torch.nn.Parameter]:
        params = [*self.img.parameters(), *self.txt.parameters()]
        if self.caption is not None:
            params += list(self.caption.parameters())
        return params

    def train_mode(self, on: bool) -> None:
        self.img.train(on)
        self.txt.train(on)
        if self.caption is not None:
            self.caption.train(on)

    def loss(self, batch: Batch, max_violation: bool) -> torch.Tensor:
        v, regions = self.img(batch.regions)
        t, words = self.txt(batch.tokens, batch.lengths)
        s_g = v @ t.t()
        terms: dict[str, torch.Tensor] = {}
        if self.weights["global"]:
            terms["global"] = triplet_loss(s_g, self.margin, max_violation)
        if self.weights["local"] or self.weights["fused"]:
            s_l = local_score_matrix(self.cfg, regions, words, batch.lengths)
            if self.weights["local"]:
                terms["local"] = triplet_loss(s_l, self.margin, max_violation)
            if self.weights["fused"]:
                terms["fused"] = triplet_loss(fused_scores(self.cfg, s_g, s_l), self.margin, max_violation)
        total = sum(self.weights[k] * v_ for k, v_ in terms.items())
        if self.caption is not None:
            terms["caption"] = self.caption.loss(regions, batch.tokens, batch.lengths)
            total = total + self.caption_weight * terms["caption"]
        self.last_terms = {k: float(v_.detach()) for k, v_ in terms.items()}
        return total  # type: ignore[return-value]

    # ------------------------------------------------------------------ evaluation
    def encode_images(self, images: np.ndarray, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Region features ``[N, R, F]`` → ``(v_G [N, D], V_L [N, R, D])``."""
        outs = [self.img(torch.from_numpy(np.array(images[i : i + chunk], np.float32)))
                for i in range(0, len(images), chunk)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def similarity_parts(self, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray,
                         img_chunk: int = 64, cap_chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """``(S_G, S_L)``, each ``[N_img, N_cap]``."""
        v, regions = self.encode_images(images)
        s_g, s_l = [], []
        for i in range(0, len(tokens), cap_chunk):
            ln = torch.from_numpy(lengths[i : i + cap_chunk].astype(np.int64))
            tk = torch.from_numpy(tokens[i : i + cap_chunk, : int(ln.max())].astype(np.int64))
            t, words = self.txt(tk, ln)
            s_g.append(v @ t.t())
            s_l.append(torch.cat([local_score_matrix(self.cfg, regions[j : j + img_chunk], words, ln)
                                  for j in range(0, len(regions), img_chunk)]))
        return torch.cat(s_g, 1).numpy(), torch.cat(s_l, 1).numpy()

    def similarities(self, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The fused score ``S_G + μ·S_L`` of every image with every caption."""
        s_g, s_l = self.similarity_parts(images, tokens, lengths)
        return s_g + self.cfg.mu * s_l

    # ------------------------------------------------------------------ state
    def state(self) -> list[dict[str, torch.Tensor]]:
        """``[img_enc.state_dict(), txt_enc.state_dict()]`` (VSRN's layout; the caption decoder is not kept)."""
        return [self.img.state_dict(), self.txt.state_dict()]

    def load_state(self, state: list[dict[str, torch.Tensor]]) -> None:
        self.img.load_state_dict(state[0])
        self.txt.load_state_dict(state[1])


def original_opt(cfg: VSRPPConfig, train: dict[str, Any], data_path: str, vocab_path: str) -> argparse.Namespace:
    """VSRN's ``opt`` fields plus VSR++'s: ``bi_gru``, ``lambda_softmax``, ``lambda_lse``, ``agg_func``,
    ``cross_attn``, ``raw_feature_norm`` (SCAN's names), ``mu``, the loss weights and ``model='vsrpp'``."""
    opt = vsrn_original_opt(cfg.vsrn_config(), train, data_path, vocab_path)
    extra = {**LOSS_DEFAULTS, **{k: v for k, v in train.get("extra", {}).items() if k in LOSS_DEFAULTS}}
    for k, v in {
        "model": "vsrpp",
        "bi_gru": cfg.bi_gru,
        "lambda_softmax": cfg.lambda_softmax,
        "lambda_lse": cfg.lambda_lse,
        "agg_func": cfg.agg_func,
        "cross_attn": "t2i",
        "raw_feature_norm": "clipped_l2norm",
        "mu": cfg.mu,
        **extra,
    }.items():
        setattr(opt, k, v)
    return opt


def default_config(vocab_size: int, img_dim: int, **opts: Any) -> VSRPPConfig:
    """A VSR++ config for training from scratch; ``opts`` may set ``embed_size``, ``word_dim``, ``num_regions``,
    ``variant``, ``bi_gru``, ``lambda_softmax``, ``lambda_lse``, ``agg_func``, ``mu``."""
    base = VSRPPConfig(vocab_size=vocab_size, img_dim=img_dim)
    fields = {k: opts[k] for k in ("embed_size", "word_dim", "num_regions", "variant", "bi_gru", "lambda_softmax",
                                   "lambda_lse", "agg_func", "mu") if opts.get(k) is not None}
    return VSRPPConfig.from_dict({**base.to_dict(), **fields})


def make_trainable(cfg: VSRPPConfig, train_cfg: Any) -> VSRPPTrainable:
    """Loss weights come from ``train_cfg.extra`` (:data:`LOSS_DEFAULTS`)."""
    extra = dict(getattr(train_cfg, "extra", {}) or {})
    unknown = set(extra) - set(LOSS_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown VSR++ training options {sorted(unknown)} (known: {sorted(LOSS_DEFAULTS)})")
    w = {**LOSS_DEFAULTS, **extra}
    return VSRPPTrainable(cfg, margin=train_cfg.margin, **{k: float(v) for k, v in w.items()})


def save_trained(
    model: VSRPPTrainable, cfg: VSRPPConfig, train_cfg: Any, output: str | Path, data_dir: str | Path,
    vocab_path: str | Path, summary: dict[str, Any],
) -> Path:
    """Save in VSR++'s checkpoint layout (``{'epoch', 'model': [img_sd, txt_sd], 'best_rsum', 'opt', 'Eiters'}``);
    ``vsrt convert`` reads it."""
    opt = original_opt(cfg, train_cfg.to_dict(), str(data_dir), str(vocab_path))
    steps = int(summary.get("steps", 0))
    return save_original_checkpoint(output, model, opt, summary["best_epoch"], summary["best_rsum"], steps)  # type: ignore[arg-type]
