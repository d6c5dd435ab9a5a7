"""VSR++ ("Improving Visual Semantic Reasoning for Fine-Grained Image-Text Matching", ICPR 2020) (torch).

No public code or weights exist; this is vsrt's implementation of the paper's description (see ``docs/models.md``):

* image side = VSRN's (``fc → 4×Rs_GCN → GRU``, identical module and parameter names, both dataset variants),
  giving the global ``v_G`` and the relation-enhanced regions ``V_L = GCN output`` — l2-normalised **per region**
  here (SCAN's region normalisation; VSRN's own ``GCN_img_emd`` is normalised over the region axis);
* text side = embedding → **Bi-GRU** (SCAN's ``EncoderText`` with ``bi_gru``: the two directions' outputs are
  averaged) giving word features ``W`` (l2-normalised per word) and the global ``t_G`` = l2-normalised average of the
  two directions' final states (forward at ``length-1``, backward at 0) — the paper does not say how ``t_G`` is
  pooled; this is vsrt's choice;
* score ``S = S_G + μ·S_L`` with ``S_G = v_G·t_G`` (cacheable) and ``S_L`` = SCAN text-to-image cross attention
  between ``V_L`` and ``W`` (:mod:`vsrt.models.scan_attention`, pairwise), ``μ = 2``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from vsrt.models.bigru import packed_gru
from vsrt.models.common import gather_last_valid, l2norm, length_mask
from vsrt.models.scan_attention import AGG_FUNCS, PairScorer, t2i_score_matrix
from vsrt.models.vsrn import VARIANTS, VSRNConfig, VSRNImageEncoder

#: SCAN's epsilon for per-region / per-word l2 normalisation
EPS = 1e-8


@dataclass
class VSRPPConfig:
    """Hyper-parameters of a VSR++ model (the fields its checkpoint ``opt`` carries that inference needs)."""

    vocab_size: int
    img_dim: int = 2048
    embed_size: int = 2048
    word_dim: int = 300
    num_layers: int = 1
    num_regions: int = 36
    variant: str = "coco"
    bi_gru: bool = True
    lambda_softmax: float = 9.0
    lambda_lse: float = 6.0
    agg_func: str = "LogSumExp"
    mu: float = 2.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"VSR++ variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.agg_func not in AGG_FUNCS:
            raise ValueError(f"VSR++ agg_func must be one of {AGG_FUNCS}, got {self.agg_func!r}")
        if self.num_layers != 1:
            raise ValueError("VSR++'s text GRU has one layer; other values are unsupported")
        if self.lambda_lse <= 0 or self.lambda_softmax <= 0:
            raise ValueError("lambda_lse and lambda_softmax must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VSRPPConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})

    def vsrn_config(self) -> VSRNConfig:
        """The VSRN config of the (identical) image encoder."""
        return VSRNConfig(vocab_size=self.vocab_size, img_dim=self.img_dim, embed_size=self.embed_size,
                          word_dim=self.word_dim, num_regions=self.num_regions, variant=self.variant)


class VSRPPImageEncoder(VSRNImageEncoder):
    """VSRN's ``EncoderImagePrecompAttn`` (same parameters) returning ``(v_G (B, D), V_L (B, R, D))``.

    ``V_L`` is the GCN output l2-normalised per region (over features).
    """

    def __init__(self, cfg: VSRPPConfig) -> None:
        super().__init__(cfg.vsrn_config())
        self.vsrpp_cfg = cfg

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat, gcn = super().forward(images)
        return feat, l2norm(gcn, dim=2, eps=EPS)


def text_outputs(out: torch.Tensor, lengths: torch.Tensor, hidden: int, bi_gru: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU outputs ``(B, T, H or 2H)`` (zero beyond lengths) → ``(t_G (B, H), W (B, T, H))``.

    Bi-GRU: ``W`` = per-word l2norm of the direction average; ``t_G`` = l2norm of the average of the forward
    output at ``length-1`` and the backward output at 0. Uni-GRU: ``W`` = per-word l2norm, ``t_G`` = l2norm of the
    last valid output.
    """
    mask = length_mask(lengths, out.size(1)).unsqueeze(-1).to(out.dtype)
    if bi_gru:
        fwd, bwd = out[..., :hidden], out[..., hidden:]
        words = (fwd + bwd) / 2
        glob = (gather_last_valid(fwd, lengths) + bwd[:, 0]) / 2
    else:
        words = out
        glob = gather_last_valid(out, lengths)
    return l2norm(glob, dim=1), l2norm(words, dim=2, eps=EPS) * mask


class VSRPPTextEncoder(nn.Module):
    """``embed`` → ``rnn`` (Bi-GRU, packed, as SCAN's ``EncoderText``) → ``(t_G (B, D), W (B, T, D))``.

    Parameter names equal SCAN's text encoder: ``embed.weight``, ``rnn.{weight,bias}_{ih,hh}_l0[_reverse]``.
    :meth:`forward` is the original packed computation; the export module replaces packing by
    :class:`vsrt.models.bigru.UnpackedBiGRU`.
    """

    def __init__(self, cfg: VSRPPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        self.rnn = nn.GRU(cfg.word_dim, cfg.embed_size, cfg.num_layers, batch_first=True, bidirectional=cfg.bi_gru)
        with torch.no_grad():
            self.embed.weight.uniform_(-0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens (B, T)`` int64, ``lengths (B,)`` (each ≥ 1) → ``(t_G, W)``; ``W`` is zero beyond each length."""
        out = packed_gru(self.rnn, self.embed(tokens), lengths)
        return text_outputs(out, lengths, self.cfg.embed_size, self.cfg.bi_gru)


def build(cfg: VSRPPConfig) -> dict[str, nn.Module]:
    """Stage modules with weights: ``{"visual", "text"}``. The third stage, ``pair_scorer``, has no parameters
    (:func:`pair_scorer`)."""
    return {"visual": VSRPPImageEncoder(cfg), "text": VSRPPTextEncoder(cfg)}


def pair_scorer(cfg: VSRPPConfig) -> PairScorer:
    """The local scorer ``S_L`` with the config's ``λ_softmax``, ``λ_lse`` and aggregation."""
    return PairScorer(cfg.lambda_softmax, cfg.lambda_lse, cfg.agg_func)


def local_score_matrix(cfg: VSRPPConfig, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor
                       ) -> torch.Tensor:
    """``S_L`` of every image (``V_L (N_i, R, D)``) with every caption (``W (N_c, L, D)``) → ``(N_i, N_c)``."""
    return t2i_score_matrix(regions, words, lengths, cfg.lambda_softmax, cfg.lambda_lse, cfg.agg_func)


def fused_scores(cfg: VSRPPConfig, global_scores: torch.Tensor, local_scores: torch.Tensor) -> torch.Tensor:
    """``S = S_G + μ·S_L``."""
    return global_scores + cfg.mu * local_scores
