"""ReSG ("Learning Relationship-Enhanced Semantic Graph for Fine-Grained Image–Text Matching", IEEE TCYB 2024)
(torch). RECONSTRUCTED: no code or weights were published and the paper's exact layer definitions were not available;
this module implements the abstract's description with vsrt's own choices (all listed in ``docs/models.md``):

* **VReG** (visual relationship-enhanced graph): nodes = the ``R`` detector regions projected by ``fc``; edges =
  learned semantic affinities between every pair of regions (the SCAN-layout features carry no boxes, so there are
  no spatial edges);
* **TReG** (textual relationship-enhanced graph): nodes = Bi-GRU word features (directions averaged); edges = learned
  affinities between the valid words plus a learned bonus for words at most ``text_window`` apart (a parser-free
  stand-in for syntactic relations: no dependency parser is needed at run time);
* each :class:`RelationGraphLayer` refines every node by aggregating its context ``c_i = Σ_j a_ij x_j`` through a
  relation-aware message ``W_v c_i + W_r (x_i ⊙ c_i)`` (node–context interaction; the pairwise form
  ``Σ_j a_ij W_r(x_i ⊙ x_j)`` at the cost of one product), residual + LayerNorm;
* the embeddings are obtained explicitly (attention pooling over the nodes, l2-normalised), so ReSG is a dual
  encoder: ``S = v·t``, cacheable on both sides. Node features are exported too (``region_features``,
  ``word_features``, l2-normalised per node) for node-level inspection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from vsrt.models.bigru import packed_gru
from vsrt.models.common import l2norm, length_mask, xavier_linear_

EPS = 1e-8
#: logit of masked-out nodes before a softmax (exp underflows to 0 in FP32 and FP16)
MASKED_LOGIT = -1.0e4


@dataclass
class ReSGConfig:
    """ReSG hyper-parameters (vsrt's reconstruction; see the module docstring)."""

    vocab_size: int
    img_dim: int = 2048
    embed_size: int = 1024
    word_dim: int = 300
    num_regions: int = 36
    graph_layers: int = 2
    text_window: int = 1

    def __post_init__(self) -> None:
        if self.graph_layers < 1:
            raise ValueError("ReSG needs at least one graph layer")
        if self.text_window < 0:
            raise ValueError("text_window must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReSGConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def masked_softmax_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis with positions where ``mask`` is False excluded (``mask`` broadcasts)."""
    if mask is not None:
        logits = torch.where(mask, logits, torch.full_like(logits, MASKED_LOGIT))
    return torch.softmax(logits, dim=-1)


class RelationGraphLayer(nn.Module):
    """Contextual aggregation over a fully connected semantic graph with learned edge weights.

    ``a_ij = softmax_j(q(x_i)·k(x_j)/√D + prior_ij)`` over the valid nodes ``j``;
    ``c_i = Σ_j a_ij x_j``; ``x_i ← LayerNorm(x_i + value(c_i) + relation(x_i ⊙ c_i))``.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.relation = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.scale = d**-0.5

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, prior: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``x (B, N, D)``; ``mask (B, N)`` valid nodes or None; ``prior`` additive edge logits ``(B|1, N, N)``."""
        logits = torch.matmul(self.query(x), self.key(x).transpose(1, 2)) * self.scale
        if prior is not None:
            logits = logits + prior
        a = masked_softmax_logits(logits, None if mask is None else mask.unsqueeze(1))
        ctx = torch.matmul(a, x)
        out = self.norm(x + self.value(ctx) + self.relation(x * ctx))
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out


class AttentionPool(nn.Module):
    """``Σ_i softmax_i(w·x_i) x_i`` over the valid nodes."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.score = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.score(x).squeeze(-1)  # B, N
        a = masked_softmax_logits(logits, mask)
        return torch.matmul(a.unsqueeze(1), x).squeeze(1)


class ReSGImageEncoder(nn.Module):
    """VReG: ``regions (B, R, F)`` → ``(embedding (B, D), node features (B, R, D))``, both l2-normalised."""

    def __init__(self, cfg: ReSGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_size
        self.fc = nn.Linear(cfg.img_dim, d)
        xavier_linear_(self.fc)
        self.graph = nn.ModuleList(RelationGraphLayer(d) for _ in range(cfg.graph_layers))
        self.pool = AttentionPool(d)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.fc(images)
        for layer in self.graph:
            x = layer(x)
        emb = l2norm(self.pool(x), dim=1, eps=EPS)
        return emb, l2norm(x, dim=2, eps=EPS)


def window_prior(n: int | torch.Tensor, window: int, device: torch.device | None = None) -> torch.Tensor:
    """``(1, n, n)`` 0/1 matrix: 1 where ``0 < |i - j| <= window`` (the textual structural edges)."""
    steps = torch.arange(n, device=device)
    dist = (steps.unsqueeze(0) - steps.unsqueeze(1)).abs()
    return ((dist > 0) & (dist <= window)).to(torch.float32).unsqueeze(0)


class ReSGTextEncoder(nn.Module):
    """TReG: ``tokens (B, T)``, ``lengths (B,)`` → ``(embedding (B, D), word node features (B, T, D))``.

    :meth:`forward` runs the Bi-GRU packed (training, reference); :meth:`nodes_to_outputs` is shared with the
    export module, which runs the Bi-GRU unpacked.
    """

    def __init__(self, cfg: ReSGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        self.rnn = nn.GRU(cfg.word_dim, d, 1, batch_first=True, bidirectional=True)
        self.graph = nn.ModuleList(RelationGraphLayer(d) for _ in range(cfg.graph_layers))
        self.window_bias = nn.Parameter(torch.full((cfg.graph_layers,), 1.0))
        self.pool = AttentionPool(d)
        with torch.no_grad():
            self.embed.weight.uniform_(-0.1, 0.1)

    def nodes_to_outputs(self, out: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bi-GRU outputs ``(B, T, 2D)`` → graph refinement → ``(embedding, word node features)``."""
        d = self.cfg.embed_size
        mask = length_mask(lengths, out.size(1))
        x = (out[..., :d] + out[..., d:]) / 2 * mask.unsqueeze(-1).to(out.dtype)
        prior = window_prior(out.size(1), self.cfg.text_window, out.device).to(out.dtype)
        for i, layer in enumerate(self.graph):
            x = layer(x, mask, prior * self.window_bias[i])
        emb = l2norm(self.pool(x, mask), dim=1, eps=EPS)
        return emb, l2norm(x, dim=2, eps=EPS)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = packed_gru(self.rnn, self.embed(tokens), lengths)
        return self.nodes_to_outputs(out, lengths)


def build(cfg: ReSGConfig) -> dict[str, nn.Module]:
    """Stage modules: ``{"visual": VReG encoder, "text": TReG encoder}``."""
    return {"visual": ReSGImageEncoder(cfg), "text": ReSGTextEncoder(cfg)}
