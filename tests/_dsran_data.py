"""A tiny DSRAN dataset in the SCAN layout (regions, captions, optional grid tokens and BERT region encodings),
shared by the DSRAN training and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_dsran_dataset(d: Path, grid: bool, bert: bool) -> None:
    """Write train (24 images) and dev (8) splits whose captions name the words planted in the first regions."""
    rng = np.random.default_rng(0)
    words = ["dog", "man", "horse", "red", "car", "beach", "ball", "snow"]
    for split, n in (("train", 24), ("dev", 8)):
        ims = rng.random((n, 10, 128), dtype=np.float32)
        caps = []
        for i in range(n):
            key = [words[(i + j) % 8] for j in range(3)]
            ims[i, :3, :8] += np.eye(8, dtype=np.float32)[[(i + j) % 8 for j in range(3)]] * 3
            caps += [f"a {' '.join(key)} number {k}" for k in range(5)]
        np.save(d / f"{split}_ims.npy", ims)
        (d / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
        if grid:
            np.save(d / f"{split}_grid.npy", rng.random((n, 49, 128), dtype=np.float32))
        if bert:
            np.save(d / f"{split}_region_pos.npy", rng.standard_normal((n, 10, 1607)).astype(np.float32))
