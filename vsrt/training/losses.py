"""Ranking losses on a batch score matrix (torch). Row ``i`` is the image of caption ``i``: ``scores[i, i]`` are the
matching pairs."""

from __future__ import annotations

import torch


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` True where captions ``i`` and ``j`` describe the same image (including ``i == j``)."""
    return image_ids.unsqueeze(0) == image_ids.unsqueeze(1)


def triplet_loss(
    scores: torch.Tensor,
    margin: float = 0.2,
    max_violation: bool = True,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """VSE++ hinge-based triplet loss on a ``(B, B)`` score matrix, summed over the batch.

    With ``max_violation`` only the hardest negative per query counts (VSE++ / VSRN ``--max_violation``), else every
    violating negative. ``positives`` (``(B, B)`` bool) marks further pairs that must not be used as negatives, e.g.
    another caption of the same image (the original code, without it, treats those as negatives); ``None`` is the
    original behaviour, equal to VSRN's ``ContrastiveLoss``.
    """
    diagonal = scores.diag().view(-1, 1)
    cost_s = (margin + scores - diagonal).clamp(min=0)  # image i as query, caption j as negative
    cost_im = (margin + scores - diagonal.t()).clamp(min=0)  # caption j as query, image i as negative
    exclude = torch.eye(scores.size(0), dtype=torch.bool, device=scores.device)
    if positives is not None:
        exclude = exclude | positives
    cost_s = cost_s.masked_fill(exclude, 0)
    cost_im = cost_im.masked_fill(exclude, 0)
    if max_violation:
        return cost_s.max(1)[0].sum() + cost_im.max(0)[0].sum()
    return cost_s.sum() + cost_im.sum()
