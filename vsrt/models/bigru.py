"""Bidirectional GRU over right-padded batches without packing, for ONNX / TensorRT export (torch).

The original text encoders (SCAN, VSR++) run ``nn.GRU(bidirectional=True)`` on a ``pack_padded_sequence``: the
backward direction starts at each caption's own last word. Packing does not export to ONNX, and running the
bidirectional GRU on the padded batch would start the backward direction at the padding. The export-friendly form:

1. reverse every sequence *within its length* by an index gather (``x[b, len_b-1-t]`` for ``t < len_b``; padding stays
   where it is),
2. run a forward GRU with the ``*_reverse`` weights on it and a forward GRU with the ``*_l0`` weights on the input,
3. reverse the backward outputs back with the same gather.

Steps beyond a sequence's length never influence earlier steps of a forward GRU, so within each length the result
equals the packed original exactly (up to float rounding); outside it :func:`bigru_unpacked` returns zeros, as the
packed original does after ``pad_packed_sequence``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vsrt.models.common import length_mask

_PARAM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def reverse_index(lengths: torch.Tensor, max_len: int | torch.Tensor) -> torch.Tensor:
    """``(B, T)`` int64 index: ``len_b - 1 - t`` for ``t < len_b``, ``t`` beyond (padding stays in place).

    The permutation is its own inverse.
    """
    steps = torch.arange(max_len, device=lengths.device).unsqueeze(0)
    lens = lengths.long().unsqueeze(1)
    return torch.where(steps < lens, lens - 1 - steps, steps)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a right-padded ``(B, T, F)`` batch within its own length (an index gather)."""
    idx = reverse_index(lengths, x.size(1)).unsqueeze(-1).expand(-1, -1, x.size(2))
    return x.gather(1, idx)


def direction_gru(rnn: nn.GRU, reverse: bool) -> nn.GRU:
    """A unidirectional, single-layer ``nn.GRU`` holding a copy of one direction's weights of ``rnn``."""
    if rnn.num_layers != 1:
        raise ValueError("only single-layer GRUs are supported")
    gru = nn.GRU(rnn.input_size, rnn.hidden_size, 1, batch_first=True, bias=rnn.bias)
    suffix = "_reverse" if reverse else ""
    with torch.no_grad():
        for name in _PARAM_NAMES:
            if not rnn.bias and name.startswith("bias"):
                continue
            getattr(gru, name).copy_(getattr(rnn, name + suffix))
    return gru


class UnpackedBiGRU(nn.Module):
    """Export-friendly copy of a bidirectional single-layer ``nn.GRU`` (see the module docstring).

    Built from a trained ``nn.GRU(bidirectional=True, batch_first=True)``; later changes to that module are not seen.
    ``forward(x (B, T, F), lengths (B,))`` returns ``(B, T, 2H)`` = ``[forward | backward]`` outputs, zero beyond each
    length, like ``pad_packed_sequence`` of the packed original.
    """

    def __init__(self, rnn: nn.GRU) -> None:
        super().__init__()
        if not rnn.bidirectional or not rnn.batch_first:
            raise ValueError("UnpackedBiGRU needs an nn.GRU with bidirectional=True and batch_first=True")
        self.fwd = direction_gru(rnn, reverse=False)
        self.bwd = direction_gru(rnn, reverse=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out_f, _ = self.fwd(x)
        out_b, _ = self.bwd(reverse_within_length(x, lengths))
        out_b = reverse_within_length(out_b, lengths)
        mask = length_mask(lengths, x.size(1)).unsqueeze(-1).to(x.dtype)
        return torch.cat([out_f, out_b], dim=-1) * mask


def packed_gru(rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The original computation: ``pack_padded_sequence`` → ``rnn`` → ``pad_packed_sequence`` (padded to ``T``)."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return padded

