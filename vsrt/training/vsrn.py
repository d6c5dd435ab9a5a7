"""Training VSRN and saving the result in the original checkpoint format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vsrt.io import atomic_path
from vsrt.models.vsrn import VSRNConfig, VSRNImageEncoder, VSRNTextEncoder, contrastive_loss

if TYPE_CHECKING:
    from vsrt.training.batches import Batch


class VSRNTrainable:
    """VSRN's two encoders with the VSE++ hardest-negative triplet loss (the caption-generation branch of the
    original, which is training-only and not stored in its checkpoints, is not trained here)."""

    def __init__(self, cfg: VSRNConfig, margin: float = 0.2) -> None:
        self.cfg = cfg
        self.margin = margin
        self.img = VSRNImageEncoder(cfg)
        self.txt = VSRNTextEncoder(cfg)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.img.parameters(), *self.txt.parameters()]

    def train_mode(self, on: bool) -> None:
        self.img.train(on)
        self.txt.train(on)

    def loss(self, batch: Batch, max_violation: bool) -> torch.Tensor:
        im, _ = self.img(batch.regions)
        s, _ = self.txt(batch.tokens, batch.lengths)
        return contrastive_loss(im, s, self.margin, max_violation)

    def similarities(self, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        im = torch.cat([self.img(torch.from_numpy(np.array(images[i : i + 256], np.float32)))[0]
                        for i in range(0, len(images), 256)])
        caps = []
        for i in range(0, len(tokens), 512):
            ln = torch.from_numpy(lengths[i : i + 512].astype(np.int64))
            tk = torch.from_numpy(tokens[i : i + 512, : int(ln.max())].astype(np.int64))
            caps.append(self.txt(tk, ln)[0])
        return (im @ torch.cat(caps).t()).numpy()

    def state(self) -> list[dict[str, torch.Tensor]]:
        """``[img_enc.state_dict(), txt_enc.state_dict()]`` — the original ``VSRN.state_dict()`` layout."""
        return [self.img.state_dict(), self.txt.state_dict()]

    def load_state(self, state: list[dict[str, torch.Tensor]]) -> None:
        self.img.load_state_dict(state[0])
        self.txt.load_state_dict(state[1])


def original_opt(cfg: VSRNConfig, train: dict[str, Any], data_path: str, vocab_path: str) -> argparse.Namespace:
    """An ``argparse.Namespace`` with the fields of VSRN's ``train.py`` (what original checkpoints carry)."""
    return argparse.Namespace(
        data_path=data_path,
        data_name="f30k_precomp" if cfg.variant == "f30k" else "coco_precomp",
        vocab_path=vocab_path,
        margin=train.get("margin", 0.2),
        num_epochs=train.get("epochs", 30),
        batch_size=train.get("batch_size", 128),
        word_dim=cfg.word_dim,
        embed_size=cfg.embed_size,
        grad_clip=train.get("grad_clip", 2.0),
        crop_size=224,
        num_layers=cfg.num_layers,
        learning_rate=train.get("learning_rate", 2e-4),
        lr_update=train.get("lr_update", 15),
        workers=0,
        log_step=10,
        val_step=500,
        logger_name="runs/vsrt",
        resume="",
        max_violation=train.get("max_violation", True),
        img_dim=cfg.img_dim,
        finetune=False,
        cnn_type="vgg19",
        use_restval=False,
        measure="cosine",
        use_abs=cfg.use_abs,
        no_imgnorm=cfg.no_imgnorm,
        reset_train=False,
        dim_vid=cfg.img_dim,
        dim_hidden=512,
        bidirectional=0,
        input_dropout_p=0.2,
        rnn_type="gru",
        rnn_dropout_p=0.5,
        dim_word=300,
        max_len=60,
        vocab_size=cfg.vocab_size,
    )


def save_original_checkpoint(
    path: str | Path, model: VSRNTrainable, opt: argparse.Namespace, epoch: int, best_rsum: float, eiters: int
) -> Path:
    """Write ``{'epoch', 'model': [img_sd, txt_sd], 'best_rsum', 'opt', 'Eiters'}`` with ``torch.save`` — the
    original VSRN checkpoint layout, so ``vsrt convert`` is exercised on it. (This is the one place vsrt writes a
    pickle-based file: it reproduces the original format on purpose; vsrt's own artifacts are safetensors.)"""
    obj = {"epoch": epoch, "model": model.state(), "best_rsum": best_rsum, "opt": opt, "Eiters": eiters}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def default_config(vocab_size: int, img_dim: int, **opts: Any) -> VSRNConfig:
    """A VSRN config for training from scratch (``embed_size``, ``word_dim``, ``variant`` from ``opts``)."""
    return VSRNConfig(
        vocab_size=vocab_size,
        img_dim=img_dim,
        embed_size=int(opts.get("embed_size") or 2048),
        word_dim=int(opts.get("word_dim") or 300),
        num_regions=int(opts.get("num_regions") or 36),
        variant=opts.get("variant") or "coco",
    )


def make_trainable(cfg: VSRNConfig, train_cfg: Any) -> VSRNTrainable:
    return VSRNTrainable(cfg, margin=train_cfg.margin)


def save_trained(
    model: VSRNTrainable, cfg: VSRNConfig, train_cfg: Any, output: str | Path, data_dir: str | Path,
    vocab_path: str | Path, summary: dict[str, Any],
) -> Path:
    """Save as an original VSRN checkpoint (convert it with ``vsrt convert``)."""
    opt = original_opt(cfg, train_cfg.to_dict(), str(data_dir), str(vocab_path))
    steps = int(summary.get("steps", 0))
    return save_original_checkpoint(output, model, opt, summary["best_epoch"], summary["best_rsum"], steps)
