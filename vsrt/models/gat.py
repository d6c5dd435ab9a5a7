"""DSRAN's graph attention block (``GAT.py``): a BERT-style layer with BatchNorm instead of LayerNorm.

Names equal the original (``GAT.encoder.N.mha.{query,key,value}``, ``fc_in``, ``bn_in``, ``fc_int``, ``fc_out``,
``bn_out``), so original state dicts load unchanged. The original attends over every position with no mask; the
optional ``key_mask`` here is used only by vsrt's per-caption text convention (see :mod:`vsrt.models.dsran`), where
it makes a padded batch compute exactly what each caption alone would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: DSRAN's ``GATopt``: 8 heads, dropout 0.2 on attention probabilities and hidden states
NUM_HEADS = 8
DROPOUT = 0.2


class MultiHeadAttention(nn.Module):
    """Scaled dot-product self-attention over all nodes (``GAT.MultiHeadAttention``)."""

    def __init__(self, hidden_size: int, num_heads: int = NUM_HEADS, dropout: float = DROPOUT) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, D)`` → ``(B, N, D)``; ``key_mask (B, N)`` bool, False = position not attended to."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        probs = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return out.view(x.size(0), x.size(1), -1)


class GATLayer(nn.Module):
    """``MHA → fc_in → dropout → BN_in(· + x) → fc_int → ReLU → fc_out → dropout → BN_out(· + ·)``.

    BatchNorm1d runs over the channel axis of ``(B, D, N)`` as in the original.
    """

    def __init__(self, hidden_size: int, num_heads: int = NUM_HEADS, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.mha = MultiHeadAttention(hidden_size, num_heads, dropout)
        self.fc_in = nn.Linear(hidden_size, hidden_size)
        self.bn_in = nn.BatchNorm1d(hidden_size)
        self.dropout_in = nn.Dropout(dropout)
        self.fc_int = nn.Linear(hidden_size, hidden_size)
        self.fc_out = nn.Linear(hidden_size, hidden_size)
        self.bn_out = nn.BatchNorm1d(hidden_size)
        self.dropout_out = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        att = self.dropout_in(self.fc_in(self.mha(x, key_mask)))
        att = self.bn_in((att + x).permute(0, 2, 1)).permute(0, 2, 1)
        inter = self.dropout_out(self.fc_out(F.relu(self.fc_int(att))))
        return self.bn_out((inter + att).permute(0, 2, 1)).permute(0, 2, 1)


class GAT(nn.Module):
    """A stack of :class:`GATLayer` (``encoder.0`` … ; DSRAN always uses one layer)."""

    def __init__(self, hidden_size: int, num_layers: int = 1, num_heads: int = NUM_HEADS,
                 dropout: float = DROPOUT) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(GATLayer(hidden_size, num_heads, dropout) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.encoder:
            x = layer(x, key_mask)
        return x


def bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as a per-channel ``(scale, shift)``: ``bn(x) = x·scale + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class GATLayerForExport(nn.Module):
    """An eval-mode :class:`GATLayer` for export: one fused ``(D, 3D)`` Q/K/V product, BatchNorm folded into a
    per-channel affine on the token-major layout (no permutes). Equal to the original up to float rounding."""

    def __init__(self, layer: GATLayer) -> None:
        super().__init__()
        mha = layer.mha
        self.num_heads, self.head_size = mha.num_heads, mha.head_size
        with torch.no_grad():
            self.register_buffer("qkv_w", torch.cat([mha.query.weight, mha.key.weight, mha.value.weight]).t().clone())
            self.register_buffer("qkv_b", torch.cat([mha.query.bias, mha.key.bias, mha.value.bias]).clone())
            s_in, t_in = bn_affine(layer.bn_in)
            s_out, t_out = bn_affine(layer.bn_out)
            self.register_buffer("s_in", s_in.clone())
            self.register_buffer("t_in", t_in.clone())
            self.register_buffer("s_out", s_out.clone())
            self.register_buffer("t_out", t_out.clone())
        self.fc_in, self.fc_int, self.fc_out = layer.fc_in, layer.fc_int, layer.fc_out
        self.scale = 1.0 / math.sqrt(self.head_size)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, D)``; ``key_bias (B, 1, 1, N)`` additive (0 or -inf) attention bias, or None."""
        b, n, d = x.shape
        qkv = (torch.matmul(x, self.qkv_w) + self.qkv_b).view(b, n, 3, self.num_heads, self.head_size)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # 3, B, H, N, h
        scores = torch.matmul(qkv[0] * self.scale, qkv[1].transpose(-1, -2))
        if key_bias is not None:
            scores = scores + key_bias
        att = torch.matmul(torch.softmax(scores, dim=-1), qkv[2]).permute(0, 2, 1, 3).reshape(b, n, d)
        att = (self.fc_in(att) + x) * self.s_in + self.t_in
        inter = self.fc_out(F.relu(self.fc_int(att)))
        return (inter + att) * self.s_out + self.t_out


class GATForExport(nn.Module):
    """:class:`GAT` made of :class:`GATLayerForExport` layers."""

    def __init__(self, gat: GAT) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GATLayerForExport(layer) for layer in gat.encoder)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_bias)
        return x
