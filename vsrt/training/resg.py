"""Training ReSG with its three losses (RECONSTRUCTED: the paper names them, the forms and weights are vsrt's):

1. **hard-negative triplet ranking** — VSE++'s hardest-negative triplet loss on ``S = v·tᵀ`` (margin ``margin``);
   other captions of the same image in the batch are not used as negatives;
2. **center hinge** — each matched group (an image and its captions in the batch) has a center
   ``c_g = l2norm(mean v_g + mean t_g)``; every image and caption embedding must be closer to its own center than to
   the nearest other center by ``center_margin``: ``Σ_e [m_c + max_{g'≠g} e·c_g' − e·c_g]₊``;
3. **positive–negative margin** — absolute thresholds that make scores comparable across queries: every positive
   pair above ``pos_threshold`` and every query's hardest negative below ``neg_threshold``:
   ``Σ_i [τ⁺ − s_ii]₊ + Σ_queries [max s⁻ − τ⁻]₊``.

Total ``= L_triplet + center_weight·L_center + pn_weight·L_pn``. ReSG has no original checkpoint format: the trained
model is written as a vsrt model directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vsrt.models.common import l2norm
from vsrt.models.resg import ReSGConfig, ReSGImageEncoder, ReSGTextEncoder
from vsrt.text.vocab import load_vocab
from vsrt.training.losses import same_image_mask, triplet_loss

if TYPE_CHECKING:
    from vsrt.training.batches import Batch

#: ``TrainConfig.extra`` keys understood here, with their defaults
LOSS_DEFAULTS: dict[str, float] = {"center_weight": 0.5, "center_margin": 0.2, "pn_weight": 0.5,
                                   "pos_threshold": 0.6, "neg_threshold": 0.3}


def center_hinge_loss(v: torch.Tensor, t: torch.Tensor, image_ids: torch.Tensor, margin: float) -> torch.Tensor:
    """Center hinge over the matched groups of a batch (``v``/``t``: ``(B, D)`` l2-normalised, pair ``i`` =
    ``(v_i, t_i)``, group = image id). Zero when the batch holds a single image."""
    groups, inv = torch.unique(image_ids, return_inverse=True)
    n_groups = groups.numel()
    if n_groups < 2:
        return v.sum() * 0
    counts = v.new_zeros(n_groups).index_add_(0, inv, v.new_ones(inv.numel()))[:, None]
    mean_v = v.new_zeros(n_groups, v.size(1)).index_add_(0, inv, v) / counts
    mean_t = t.new_zeros(n_groups, t.size(1)).index_add_(0, inv, t) / counts
    centers = l2norm(mean_v + mean_t, dim=1, eps=1e-8)
    members = torch.cat([v, t])  # 2B, D
    member_group = torch.cat([inv, inv])
    sims = members @ centers.t()  # 2B, G
    own = sims.gather(1, member_group[:, None]).squeeze(1)
    other = sims.masked_fill(torch.nn.functional.one_hot(member_group, n_groups).bool(), -2.0).max(1)[0]
    return (margin + other - own).clamp(min=0).sum()


def pos_neg_margin_loss(scores: torch.Tensor, positives: torch.Tensor, pos_threshold: float, neg_threshold: float
                        ) -> torch.Tensor:
    """Positives above ``pos_threshold``, each query's hardest negative (both directions) below ``neg_threshold``."""
    pos = (pos_threshold - scores.diag()).clamp(min=0).sum()
    neg_scores = scores.masked_fill(positives, -2.0)
    hard_i2t = neg_scores.max(1)[0]
    hard_t2i = neg_scores.max(0)[0]
    neg = (hard_i2t - neg_threshold).clamp(min=0).sum() + (hard_t2i - neg_threshold).clamp(min=0).sum()
    return pos + neg


class ReSGTrainable:
    """ReSG's encoders with the three losses above."""

    def __init__(self, cfg: ReSGConfig, margin: float = 0.2, center_weight: float = 0.5, center_margin: float = 0.2,
                 pn_weight: float = 0.5, pos_threshold: float = 0.6, neg_threshold: float = 0.3) -> None:
        if center_weight < 0 or pn_weight < 0:
            raise ValueError("ReSG loss weights must be >= 0")
        self.cfg = cfg
        self.margin = margin
        self.center_weight, self.center_margin = center_weight, center_margin
        self.pn_weight, self.pos_threshold, self.neg_threshold = pn_weight, pos_threshold, neg_threshold
        self.img = ReSGImageEncoder(cfg)
        self.txt = ReSGTextEncoder(cfg)
        self.last_terms: dict[str, float] = {}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.img.parameters(), *self.txt.parameters()]

    def train_mode(self, on: bool) -> None:
        self.img.train(on)
        self.txt.train(on)

    def loss(self, batch: Batch, max_violation: bool) -> torch.Tensor:
        v, _ = self.img(batch.regions)
        t, _ = self.txt(batch.tokens, batch.lengths)
        scores = v @ t.t()
        positives = same_image_mask(batch.image_ids)
        terms = {"triplet": triplet_loss(scores, self.margin, max_violation, positives=positives)}
        total = terms["triplet"]
        if self.center_weight:
            terms["center"] = center_hinge_loss(v, t, batch.image_ids, self.center_margin)
            total = total + self.center_weight * terms["center"]
        if self.pn_weight:
            terms["pos_neg"] = pos_neg_margin_loss(scores, positives, self.pos_threshold, self.neg_threshold)
            total = total + self.pn_weight * terms["pos_neg"]
        self.last_terms = {k: float(x.detach()) for k, x in terms.items()}
        return total

    def similarities(self, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Cosine of the explicit embeddings, ``[N_img, N_cap]``."""
        im = torch.cat([self.img(torch.from_numpy(np.array(images[i : i + 256], np.float32)))[0]
                        for i in range(0, len(images), 256)])
        caps = []
        for i in range(0, len(tokens), 512):
            ln = torch.from_numpy(lengths[i : i + 512].astype(np.int64))
            tk = torch.from_numpy(tokens[i : i + 512, : int(ln.max())].astype(np.int64))
            caps.append(self.txt(tk, ln)[0])
        return (im @ torch.cat(caps).t()).numpy()

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"visual": image encoder state dict, "text": text encoder state dict}`` (the model directory's stages)."""
        return {"visual": self.img.state_dict(), "text": self.txt.state_dict()}

    def load_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.img.load_state_dict(state["visual"])
        self.txt.load_state_dict(state["text"])


def default_config(vocab_size: int, img_dim: int, **opts: Any) -> ReSGConfig:
    """A ReSG config for training; ``opts`` may set ``embed_size``, ``word_dim``, ``num_regions``, ``graph_layers``,
    ``text_window``."""
    base = ReSGConfig(vocab_size=vocab_size, img_dim=img_dim)
    fields = {k: opts[k] for k in ("embed_size", "word_dim", "num_regions", "graph_layers", "text_window")
              if opts.get(k) is not None}
    return ReSGConfig.from_dict({**base.to_dict(), **fields})


def make_trainable(cfg: ReSGConfig, train_cfg: Any) -> ReSGTrainable:
    """Loss settings come from ``train_cfg.extra`` (:data:`LOSS_DEFAULTS`)."""
    extra = dict(getattr(train_cfg, "extra", {}) or {})
    unknown = set(extra) - set(LOSS_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown ReSG training options {sorted(unknown)} (known: {sorted(LOSS_DEFAULTS)})")
    w = {**LOSS_DEFAULTS, **extra}
    return ReSGTrainable(cfg, margin=train_cfg.margin, **{k: float(v) for k, v in w.items()})


def save_trained(
    model: ReSGTrainable, cfg: ReSGConfig, train_cfg: Any, output: str | Path, data_dir: str | Path,
    vocab_path: str | Path, summary: dict[str, Any],
) -> Path:
    """Write a vsrt model directory (config, vocabulary, safetensors weights, manifest); ``vsrt export`` it next."""
    from vsrt.models.convert import write_model_dir

    source = {
        "format": "vsrt training (ReSG has no original checkpoint format)",
        "data": str(data_dir),
        "train": train_cfg.to_dict(),
        "best_rsum": summary.get("best_rsum"),
        "best_epoch": summary.get("best_epoch"),
    }
    return write_model_dir(output, "resg", cfg, model.state(), load_vocab(vocab_path), source)
