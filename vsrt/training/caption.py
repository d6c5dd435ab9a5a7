"""Training-only caption generation branch (VSRN / VSR++): generate the caption from the relation-enhanced region
features, so that they keep the semantics the words need (torch).

A compact form of VSRN's ``S2VTAttModel``: a GRU encoder over the regions, an attention GRU decoder fed with the
previous word (teacher forcing) and the attended encoder states, a linear layer to the vocabulary; loss = masked
cross-entropy of the next word (VSRN's ``LanguageModelCriterion``). It is never exported: VSRN's checkpoints do not
store it either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsrt.models.common import length_mask


class CaptionDecoder(nn.Module):
    """``loss(regions (B, R, F), tokens (B, T), lengths (B,))`` → mean next-word cross-entropy."""

    def __init__(self, feat_dim: int, vocab_size: int, hidden: int = 512, word_dim: int = 300,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = nn.GRU(feat_dim, hidden, batch_first=True)
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.attn_enc = nn.Linear(hidden, hidden)
        self.attn_dec = nn.Linear(hidden, hidden, bias=False)
        self.attn_v = nn.Linear(hidden, 1, bias=False)
        self.cell = nn.GRUCell(word_dim + hidden, hidden)
        self.out = nn.Linear(hidden, vocab_size)
        self.drop = nn.Dropout(dropout)

    def loss(self, regions: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        enc, h = self.encoder(regions)  # B,R,H ; 1,B,H
        h = h[0]
        keys = self.attn_enc(enc)
        steps = tokens.size(1) - 1
        targets = tokens[:, 1:]
        valid = length_mask(lengths - 1, steps)
        logits = []
        for t in range(steps):
            e = self.attn_v(torch.tanh(keys + self.attn_dec(h).unsqueeze(1))).squeeze(-1)
            ctx = torch.matmul(torch.softmax(e, dim=1).unsqueeze(1), enc).squeeze(1)
            h = self.cell(torch.cat([self.drop(self.embed(tokens[:, t])), ctx], dim=1), h)
            logits.append(self.out(self.drop(h)))
        ce = F.cross_entropy(torch.stack(logits, 1).flatten(0, 1), targets.flatten(), reduction="none")
        ce = ce.view_as(targets) * valid.to(ce.dtype)
        return ce.sum() / valid.sum().clamp(min=1)
