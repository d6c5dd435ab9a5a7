"""VSRN (Li et al., ICCV 2019): visual semantic reasoning over regions + GRU, and a GRU text encoder.

Module and parameter names equal the original ``KunpengLi1994/VSRN`` code (``EncoderImagePrecompAttn``,
``Rs_GCN``, ``EncoderText``), so original state dicts load unchanged. Two dataset variants exist in the original
history and are selected by ``opt.data_name``:

* ``coco`` (``coco_precomp``): ``l2norm`` after ``fc`` (over the region axis), no final BatchNorm.
* ``f30k`` (``f30k_precomp``): no ``l2norm`` after ``fc``, ``bn = BatchNorm1d(D)`` on the final GRU state.

Both ``l2norm`` calls on region tensors reduce over ``dim=1`` — the region axis, not the feature axis — exactly
as in the original; the final embedding is normalised over features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vsrt.models.common import gather_last_valid, l2norm, length_mask, xavier_linear_

VARIANTS = ("coco", "f30k")


@dataclass
class VSRNConfig:
    """Hyper-parameters of a VSRN model (what the original ``opt`` holds that inference needs)."""

    vocab_size: int
    img_dim: int = 2048
    embed_size: int = 2048
    word_dim: int = 300
    num_layers: int = 1
    num_regions: int = 36
    variant: str = "coco"
    use_abs: bool = False
    no_imgnorm: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"VSRN variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.num_layers != 1:
            raise ValueError("VSRN's text GRU has num_layers=1 in every released model; other values are unsupported")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VSRNConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def variant_from_data_name(data_name: str) -> str:
    """``opt.data_name`` of an original checkpoint → ``"coco"`` or ``"f30k"``."""
    return "f30k" if data_name.startswith("f30k") or data_name.startswith("f8k") else "coco"


class RsGCN(nn.Module):
    """Rs_GCN: a non-local block without softmax. ``R = θ(v)ᵀφ(v) / N``, ``out = W(R·g(v)) + v``."""

    def __init__(self, in_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.g = nn.Conv1d(in_channels, inter_channels, kernel_size=1)
        self.W = nn.Sequential(nn.Conv1d(inter_channels, in_channels, kernel_size=1), nn.BatchNorm1d(in_channels))
        nn.init.constant_(self.W[1].weight, 0.0)
        nn.init.constant_(self.W[1].bias, 0.0)
        self.theta = nn.Conv1d(in_channels, inter_channels, kernel_size=1)
        self.phi = nn.Conv1d(in_channels, inter_channels, kernel_size=1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """``v``: ``(B, C, N)`` → ``(B, C, N)``."""
        g_v = self.g(v).permute(0, 2, 1)  # B,N,C'
        theta_v = self.theta(v).permute(0, 2, 1)  # B,N,C'
        phi_v = self.phi(v)  # B,C',N
        r = torch.matmul(theta_v, phi_v)
        r = r / r.size(-1)
        y = torch.matmul(r, g_v).permute(0, 2, 1)  # B,C',N
        return self.W(y) + v


class VSRNImageEncoder(nn.Module):
    """``EncoderImagePrecompAttn``: fc → 4×Rs_GCN → GRU over regions → (BN) → l2norm.

    ``forward(images (B, R, img_dim))`` returns ``(embedding (B, D), region_features (B, R, D))`` where
    ``region_features`` is the original ``GCN_img_emd`` (l2-normalised over the region axis).
    """

    def __init__(self, cfg: VSRNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_size
        self.fc = nn.Linear(cfg.img_dim, d)
        xavier_linear_(self.fc)
        self.img_rnn = nn.GRU(d, d, 1, batch_first=True)
        self.Rs_GCN_1 = RsGCN(d, d)
        self.Rs_GCN_2 = RsGCN(d, d)
        self.Rs_GCN_3 = RsGCN(d, d)
        self.Rs_GCN_4 = RsGCN(d, d)
        if cfg.variant == "f30k":
            self.bn = nn.BatchNorm1d(d)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.fc(images)
        if self.cfg.variant == "coco":
            x = l2norm(x, dim=1)  # region axis, as the original
        v = x.permute(0, 2, 1)
        v = self.Rs_GCN_4(self.Rs_GCN_3(self.Rs_GCN_2(self.Rs_GCN_1(v))))
        gcn = l2norm(v.permute(0, 2, 1), dim=1)  # region axis again
        _, h = self.img_rnn(gcn)
        feat = h[0]
        if self.cfg.variant == "f30k":
            feat = self.bn(feat)
        if not self.cfg.no_imgnorm:
            feat = l2norm(feat, dim=1)
        if self.cfg.use_abs:
            feat = feat.abs()
        return feat, gcn


class VSRNTextEncoder(nn.Module):
    """``EncoderText``: word embedding → unidirectional GRU → output at the last valid step → l2norm.

    :meth:`forward` is the export-friendly form (no packing: the GRU runs over the right-padded batch and the
    output at ``length - 1`` is gathered — identical for a unidirectional GRU). :meth:`forward_packed` is the
    original packed form, kept as the parity reference.
    """

    def __init__(self, cfg: VSRNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        self.rnn = nn.GRU(cfg.word_dim, cfg.embed_size, cfg.num_layers, batch_first=True)
        with torch.no_grad():
            self.embed.weight.uniform_(-0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens (B, T)`` int64, ``lengths (B,)`` → ``(embedding (B, D), word_features (B, T, D))``.

        ``word_features`` are the GRU outputs per step, zero beyond each caption's length (for re-ranking).
        """
        out, _ = self.rnn(self.embed(tokens))
        feat = gather_last_valid(out, lengths)
        feat = l2norm(feat, dim=1)
        if self.cfg.use_abs:
            feat = feat.abs()
        mask = length_mask(lengths, tokens.size(1)).unsqueeze(-1).to(out.dtype)
        return feat, out * mask

    def forward_packed(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The original forward with ``pack_padded_sequence`` (reference for parity tests)."""
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        idx = (lengths.long() - 1).view(-1, 1, 1).expand(x.size(0), 1, self.cfg.embed_size)
        feat = torch.gather(padded, 1, idx).squeeze(1)
        feat = l2norm(feat, dim=1)
        if self.cfg.use_abs:
            feat = feat.abs()
        return feat


def build(cfg: VSRNConfig) -> dict[str, nn.Module]:
    """The stage modules of a VSRN model: ``{"visual": image encoder, "text": text encoder}``."""
    return {"visual": VSRNImageEncoder(cfg), "text": VSRNTextEncoder(cfg)}


def contrastive_loss(
    im: torch.Tensor, s: torch.Tensor, margin: float = 0.2, max_violation: bool = True
) -> torch.Tensor:
    """VSE++ hinge-based triplet loss (hardest negatives with ``max_violation``), as VSRN trains with."""
    scores = im @ s.t()
    diagonal = scores.diag().view(-1, 1)
    cost_s = (margin + scores - diagonal).clamp(min=0)
    cost_im = (margin + scores - diagonal.t()).clamp(min=0)
    eye = torch.eye(scores.size(0), dtype=torch.bool, device=scores.device)
    cost_s = cost_s.masked_fill(eye, 0)
    cost_im = cost_im.masked_fill(eye, 0)
    if max_violation:
        return cost_s.max(1)[0].sum() + cost_im.max(0)[0].sum()
    return cost_s.sum() + cost_im.sum()
