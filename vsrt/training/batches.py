"""Mini-batches of (regions, caption tokens) pairs from a precomputed split, as the original loaders make them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vsrt.text.tokenize import encode_batch
from vsrt.text.vocab import Vocabulary


@dataclass
class Batch:
    """One training batch: caption ``c`` is paired with image ``image_ids[c]``."""

    regions: torch.Tensor  # [B, R, F] float32
    tokens: torch.Tensor  # [B, T] int64
    lengths: torch.Tensor  # [B] int64
    image_ids: torch.Tensor  # [B] int64


class CaptionBatches:
    """Iterates over every caption once per epoch in a seeded random order (``len`` = batches per epoch).

    Captions are tokenised once, up front, with the original tokenisation.
    """

    def __init__(
        self,
        images: np.ndarray,
        captions: list[str],
        vocab: Vocabulary,
        batch_size: int,
        seed: int = 0,
        per_image: int = 5,
    ) -> None:
        if len(captions) != per_image * len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images (expected {per_image} each)")
        self.images = images
        self.batch_size = batch_size
        self.per_image = per_image
        self.rng = np.random.default_rng(seed)
        tokens, lengths = encode_batch(captions, vocab)
        self.tokens = tokens
        self.lengths = lengths

    def __len__(self) -> int:
        return (len(self.tokens) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = self.rng.permutation(len(self.tokens))
        for i in range(0, len(order), self.batch_size):
            idx = np.sort(order[i : i + self.batch_size])
            img_ids = idx // self.per_image
            lengths = self.lengths[idx]
            t = int(lengths.max())
            yield Batch(
                regions=torch.from_numpy(np.ascontiguousarray(self.images[img_ids], dtype=np.float32)),
                tokens=torch.from_numpy(self.tokens[idx, :t].astype(np.int64)),
                lengths=torch.from_numpy(lengths.astype(np.int64)),
                image_ids=torch.from_numpy(img_ids.astype(np.int64)),
            )
