"""SCAN-style text-to-image cross attention (Lee et al., ECCV 2018), the local branch S_L of VSR++ (torch).

For one caption (words ``w_1..w_L``, l2-normalised) and one image (regions ``v_1..v_R``, l2-normalised):

1. ``s_rl = v_r · w_l`` (raw dot products), ``a_rl = LeakyReLU_0.1(s_rl)`` l2-normalised over the words
   ("clipped_l2norm", SCAN's default ``raw_feature_norm``),
2. ``α_lr = softmax_r(λ_softmax · a_rl)`` (attention of word ``l`` over the regions),
3. ``r_l = cos(w_l, Σ_r α_lr v_r)``,
4. ``S_L = log(Σ_l exp(λ_lse · r_l)) / λ_lse`` (``LogSumExp``) or ``mean_l r_l`` (``Mean``).

The log-sum-exp here subtracts the maximum before ``exp`` (exactly equal; cannot overflow in FP16, where
``exp(λ_lse · r)`` with SCAN's COCO ``λ_lse = 20`` would). Padded word positions are masked by ``lengths``, so a
batch of right-padded captions scores exactly like SCAN's per-caption loop over ``words[:length]``
(:func:`t2i_reference`, kept as the parity reference).

Three forms:

* :func:`t2i_pair_scores` — explicit pairs with broadcasting (the exported ``pair_scorer`` graph);
* :func:`t2i_score_matrix` — all images × all captions at once (training, dev evaluation); it never forms the
  attended vectors: ``w·Σα v = Σ α s`` and ``|Σα v|² = αᵀ(V Vᵀ)α``;
* :func:`t2i_reference` — SCAN's original per-caption loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsrt.models.common import l2norm, length_mask

AGG_FUNCS = ("LogSumExp", "Mean")
#: SCAN's epsilon (added to norms in ``l2norm``, clamp in ``cosine_similarity``)
EPS = 1e-8
#: logit given to padded words before the log-sum-exp: exp(-1e4 - max) is 0 in FP32 and FP16
MASKED_LOGIT = -1.0e4


def check_agg(agg_func: str) -> str:
    """Validate an aggregation name (``LogSumExp`` or ``Mean``, as SCAN's ``--agg_func``)."""
    if agg_func not in AGG_FUNCS:
        raise ValueError(f"agg_func must be one of {AGG_FUNCS}, got {agg_func!r}")
    return agg_func


def aggregate(r: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, agg_func: str, lambda_lse: float
              ) -> torch.Tensor:
    """Per-word similarities ``r (..., L)`` → one score per row, over the valid words only (``mask``).

    ``LogSumExp`` is computed as ``m + log Σ exp(z - m)`` with ``z = λ_lse·r`` and ``m = max z`` (max-subtracted).
    """
    if agg_func == "LogSumExp":
        z = torch.where(mask, r * lambda_lse, torch.full_like(r, MASKED_LOGIT))
        m = z.max(dim=-1, keepdim=True).values
        return (m.squeeze(-1) + torch.log(torch.exp(z - m).sum(dim=-1))) / lambda_lse
    if agg_func == "Mean":
        return torch.where(mask, r, torch.zeros_like(r)).sum(dim=-1) / lengths.to(r.dtype)
    raise ValueError(f"agg_func must be one of {AGG_FUNCS}, got {agg_func!r}")


def t2i_pair_scores(
    regions: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
    agg_func: str = "LogSumExp",
) -> torch.Tensor:
    """S_L of explicit (image, caption) pairs.

    Args:
        regions: ``(k_r, R, D)`` region features (l2-normalised per region).
        words: ``(k_w, L, D)`` word features (l2-normalised per word); positions ``>= lengths`` are ignored.
        lengths: ``(k_w,)`` caption lengths.

    ``k_r`` and ``k_w`` are equal (pair ``i`` = region set ``i`` with caption ``i``) or one of them is 1 and is
    broadcast against the other (one caption against ``k`` images, or one image against ``k`` captions).

    Returns:
        ``(max(k_r, k_w),)`` scores.
    """
    mask = length_mask(lengths, words.size(1))  # k_w, L
    words = words * mask.unsqueeze(-1).to(words.dtype)
    attn = torch.matmul(regions, words.transpose(1, 2))  # k, R, L
    attn = l2norm(F.leaky_relu(attn, 0.1), dim=2, eps=EPS)  # over words
    attn = torch.softmax(attn.transpose(1, 2) * lambda_softmax, dim=2)  # k, L, R: over regions
    attended = torch.matmul(attn, regions)  # k, L, D
    w12 = (words * attended).sum(dim=-1)
    w1 = words.pow(2).sum(dim=-1).sqrt()
    w2 = attended.pow(2).sum(dim=-1).sqrt()
    r = w12 / (w1 * w2).clamp(min=EPS)  # k, L
    return aggregate(r, mask, lengths, agg_func, lambda_lse)


def t2i_score_matrix(
    regions: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
    agg_func: str = "LogSumExp",
) -> torch.Tensor:
    """S_L of every image with every caption: ``regions (N_i, R, D)``, ``words (N_c, L, D)`` → ``(N_i, N_c)``.

    Memory is ``O(N_i·N_c·R·L)``: call it on chunks.
    """
    mask = length_mask(lengths, words.size(1))  # Nc, L
    words = words * mask.unsqueeze(-1).to(words.dtype)
    s = torch.einsum("ird,cld->icrl", regions, words)  # Ni, Nc, R, L
    a = l2norm(F.leaky_relu(s, 0.1), dim=3, eps=EPS)
    a = torch.softmax(a * lambda_softmax, dim=2)  # over regions
    num = (a * s).sum(dim=2)  # Ni, Nc, L  = w · attended
    gram = torch.matmul(regions, regions.transpose(1, 2))  # Ni, R, R
    ag = torch.einsum("icrl,irs->icsl", a, gram)
    att_norm = (ag * a).sum(dim=2).clamp(min=1e-16).sqrt()  # |attended|
    w1 = words.pow(2).sum(dim=-1).sqrt()  # Nc, L
    r = num / (w1.unsqueeze(0) * att_norm).clamp(min=EPS)
    return aggregate(r, mask.unsqueeze(0), lengths.unsqueeze(0), agg_func, lambda_lse)


def t2i_reference(
    regions: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
    agg_func: str = "LogSumExp",
) -> torch.Tensor:
    """SCAN's ``xattn_score_t2i`` / ``func_attention`` loop, as written in the original (no masking, no max
    subtraction): ``(N_i, R, D)`` × ``(N_c, L, D)`` → ``(N_i, N_c)``."""
    check_agg(agg_func)
    n_img = regions.size(0)
    sims = []
    for i in range(words.size(0)):
        n_word = int(lengths[i])
        cap = words[i, :n_word].unsqueeze(0).repeat(n_img, 1, 1)  # Ni, n, D
        attn = torch.bmm(regions, cap.transpose(1, 2))  # Ni, R, n
        attn = F.leaky_relu(attn, 0.1)
        attn = attn / (attn.pow(2).sum(dim=2, keepdim=True).sqrt() + EPS)
        attn = attn.transpose(1, 2).contiguous()
        attn = torch.softmax(attn.view(n_img * n_word, -1) * lambda_softmax, dim=1).view(n_img, n_word, -1)
        weighted = torch.bmm(regions.transpose(1, 2), attn.transpose(1, 2)).transpose(1, 2)  # Ni, n, D
        w12 = (cap * weighted).sum(2)
        w1, w2 = cap.norm(2, 2), weighted.norm(2, 2)
        row = w12 / (w1 * w2).clamp(min=EPS)
        if agg_func == "LogSumExp":
            row = torch.log(torch.exp(row * lambda_lse).sum(dim=1)) / lambda_lse
        else:
            row = row.mean(dim=1)
        sims.append(row)
    return torch.stack(sims, dim=1)


class PairScorer(nn.Module):
    """The ``pair_scorer`` stage: ``(region_features, word_features, lengths) → score`` (:func:`t2i_pair_scores`).

    No parameters; the hyper-parameters are fixed in the graph.
    """

    def __init__(self, lambda_softmax: float = 9.0, lambda_lse: float = 6.0, agg_func: str = "LogSumExp") -> None:
        super().__init__()
        self.lambda_softmax = float(lambda_softmax)
        self.lambda_lse = float(lambda_lse)
        self.agg_func = check_agg(agg_func)

    def forward(self, region_features: torch.Tensor, word_features: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor]:
        """``region_features (k, R, D)``, ``word_features (1, L, D)``, ``lengths (1,)`` → ``(score (k,),)``: one
        caption against ``k`` images (explicit pairs, ``(k, L, D)`` words, work too, but the exported graph fixes the
        caption batch to 1; see :mod:`vsrt.export.vsrpp`)."""
        return (t2i_pair_scores(region_features, word_features, lengths, self.lambda_softmax, self.lambda_lse,
                                self.agg_func),)
