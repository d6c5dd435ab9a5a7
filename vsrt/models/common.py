"""Small building blocks shared by the model families (torch)."""

from __future__ import annotations

import torch
from torch import nn


def l2norm(x: torch.Tensor, dim: int = 1, eps: float = 0.0) -> torch.Tensor:
    """L2-normalise ``x`` along ``dim``.

    VSRN's original ``l2norm`` reduces over ``dim=1`` with no epsilon; on ``(B, 36, D)`` region tensors that is the
    region axis (a quirk that we reproduce). SCAN adds ``1e-8`` to the norm, DSRAN uses ``1e-12``.
    """
    norm = x.pow(2).sum(dim=dim, keepdim=True).sqrt()
    if eps:
        norm = norm + eps
    return x / norm


def gather_last_valid(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``outputs[b, lengths[b] - 1]`` for ``outputs`` of shape ``(B, T, D)``: the last valid step of a right-padded
    sequence. Equal to the packed-sequence result for a unidirectional RNN (steps after ``len`` never influence
    earlier ones)."""
    idx = (lengths.long() - 1).clamp(min=0).view(-1, 1, 1).expand(outputs.size(0), 1, outputs.size(2))
    return outputs.gather(1, idx).squeeze(1)


def length_mask(lengths: torch.Tensor, max_len: int | torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, T)`` mask, True at valid positions ``t < lengths[b]``."""
    steps = torch.arange(max_len, device=lengths.device).unsqueeze(0)
    return steps < lengths.long().unsqueeze(1)


def xavier_linear_(fc: nn.Linear) -> None:
    """The Xavier-uniform init used by VSE++ / VSRN / SCAN for their ``fc`` layers, bias zero."""
    r = (6.0 / (fc.in_features + fc.out_features)) ** 0.5
    with torch.no_grad():
        fc.weight.uniform_(-r, r)
        fc.bias.zero_()
