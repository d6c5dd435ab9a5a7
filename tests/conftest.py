"""Shared fixtures: small original-format VSRN checkpoints and vocabularies built in the test itself."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


class _OriginalVocabulary:
    """Same attributes as the original ``vocab.Vocabulary``; pickled under the name ``__main__.Vocabulary``."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: dict[int, str] = {}
        self.idx = 0

    def add_word(self, w: str) -> None:
        if w not in self.word2idx:
            self.word2idx[w] = self.idx
            self.idx2word[self.idx] = w
            self.idx += 1


_OriginalVocabulary.__module__ = "__main__"
_OriginalVocabulary.__name__ = "Vocabulary"
_OriginalVocabulary.__qualname__ = "Vocabulary"


def write_original_vocab(path: Path, words: list[str], protocol: int = 2) -> Path:
    """A vocabulary pickle exactly like VSRN's ``vocab/*.pkl`` (``__main__.Vocabulary``, protocol 2)."""
    import __main__

    v = _OriginalVocabulary()
    for w in ["<pad>", "<start>", "<end>", "<unk>", *words]:
        v.add_word(w)
    had = getattr(__main__, "Vocabulary", None)
    __main__.Vocabulary = _OriginalVocabulary  # pickle looks the class up by its module and name
    try:
        path.write_bytes(pickle.dumps(v, protocol=protocol))
    finally:
        if had is None:
            del __main__.Vocabulary
        else:
            __main__.Vocabulary = had
    return path


def original_vsrn_checkpoint(
    path: Path, vocab_size: int, embed_size: int = 64, img_dim: int = 48, variant: str = "coco",
    legacy: bool = False, seed: int = 0, randomize_bn: bool = True,
) -> Path:
    """An original-layout VSRN checkpoint: ``{'epoch', 'model': [img_sd, txt_sd], 'best_rsum', 'opt', 'Eiters'}``
    built by saving the original module structure (same names) and an ``argparse.Namespace``."""
    import torch

    from vsrt.models.vsrn import VSRNConfig, VSRNImageEncoder, VSRNTextEncoder
    from vsrt.training.vsrn import VSRNTrainable, original_opt

    torch.manual_seed(seed)
    cfg = VSRNConfig(vocab_size=vocab_size, img_dim=img_dim, embed_size=embed_size, variant=variant)
    img, txt = VSRNImageEncoder(cfg), VSRNTextEncoder(cfg)
    if randomize_bn:  # non-trivial BatchNorm statistics so BN handling is exercised
        with torch.no_grad():
            for m in img.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
    t = VSRNTrainable.__new__(VSRNTrainable)
    t.img, t.txt, t.cfg = img, txt, cfg
    opt = original_opt(cfg, {}, "data", "vocab")
    obj = {"epoch": 3, "model": t.state(), "best_rsum": 123.4, "opt": opt, "Eiters": 99}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture
def vocab_words() -> list[str]:
    return [f"w{i}" for i in range(40)] + ["a", "dog", "on", "the", "beach", ".", "red", "car"]


@pytest.fixture
def small_vsrn(tmp_path: Path, vocab_words: list[str]) -> tuple[Path, Path]:
    """``(checkpoint, vocab_pkl)`` of a small coco-variant VSRN in the original formats."""
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt = original_vsrn_checkpoint(tmp_path / "model_best.pth.tar", vocab_size=len(vocab_words) + 4)
    return ckpt, vocab


@pytest.fixture(scope="session")
def detector_full_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size BUTD detector (ResNet-101 C4, R=300, random O(1) weights) exported with parity on skimage's chelsea
    (600×902 after resizing); built once per session (~40 s) for tests/test_detector_export.py and
    tests/test_detector_precision.py."""
    import numpy as np

    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photograph")
    from vsrt.cli import main
    from vsrt.export.detector import export_detector_stages
    from vsrt.manifest import Manifest

    d = tmp_path_factory.mktemp("butd") / "det"
    assert main(["convert-detector", "--random-init", "--seed", "0", "-o", str(d)]) == 0
    m = Manifest.load(d)
    image = np.ascontiguousarray(data.chelsea()[:, :, ::-1])  # RGB → BGR
    export_detector_stages(d, m, image=image, image_name="skimage.data.chelsea (BGR)")
    m.save(d)
    return d


__all__ = ["argparse", "original_vsrn_checkpoint", "write_original_vocab"]
