"""``vsrt train``: train any registered family on a precomputed (SCAN-layout) dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.data.precomp import load_precomp
from vsrt.errors import InputError
from vsrt.io import atomic_write_json
from vsrt.models.registry import get_family
from vsrt.text.tokenize import encode_batch
from vsrt.text.vocab import load_vocab
from vsrt.training.batches import CaptionBatches
from vsrt.training.trainer import TrainConfig, fit


def find_vocab(data_dir: Path) -> Path:
    """The dataset's vocabulary: ``vocab.pkl`` (original format) or ``vocab.json``."""
    for name in ("vocab.pkl", "vocab.json"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise InputError(f"no vocabulary in {data_dir} (expected vocab.pkl or vocab.json; `vsrt synth` writes one)")


def train(
    family: str,
    data_dir: str | Path,
    output: str | Path,
    train_cfg: TrainConfig,
    model_opts: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    max_dev_images: int = 1000,
) -> dict[str, Any]:
    """Train ``family`` on ``data_dir``'s train split, select on dev, save with the family's ``save_trained``.

    Returns a summary (best dev metrics, history, seconds, output path), also written to ``<output>.train.json``.
    """
    fam = get_family(family)
    if fam.make_trainable is None or fam.default_config is None or fam.save_trained is None:
        raise InputError(f"family '{family}' cannot be trained with vsrt")
    data_dir = Path(data_dir)
    vocab_path = find_vocab(data_dir)
    vocab = load_vocab(vocab_path)
    tr = load_precomp(data_dir, "train")
    dv = load_precomp(data_dir, "dev")
    n_dev = min(len(dv.images), max_dev_images)
    dev_images = np.asarray(dv.images[:n_dev], np.float32)
    dev_tokens, dev_lengths = encode_batch(dv.captions[: 5 * n_dev], vocab)
    cfg = fam.default_config(len(vocab), int(tr.images.shape[2]), num_regions=int(tr.images.shape[1]),
                             **(model_opts or {}))
    import torch

    torch.manual_seed(train_cfg.seed)  # the initial weights too, whatever ran before in this process
    model = fam.make_trainable(cfg, train_cfg)
    batches = CaptionBatches(tr.images, tr.captions, vocab, train_cfg.batch_size, seed=train_cfg.seed)
    result = fit(model, batches, (dev_images, dev_tokens, dev_lengths), train_cfg, on_epoch, on_step)
    summary: dict[str, Any] = {
        "family": family,
        "data": str(data_dir),
        "config": cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "best_rsum": result.best_rsum,
        "best_epoch": result.best_epoch,
        "seconds": result.seconds,
        "steps": len(batches) * train_cfg.epochs,
        "history": result.history,
    }
    out = fam.save_trained(model, cfg, train_cfg, output, data_dir, vocab_path, summary)
    summary["output"] = str(out)
    summary["output_is_checkpoint"] = fam.output_is_checkpoint
    atomic_write_json(Path(str(output) + ".train.json"), summary)
    return summary
