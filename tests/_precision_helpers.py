"""Model directories for the precision / calibration / engine tests: real VSRN export of random weights, and a
small generic stage (Linear + Conv1d + GRU + l2norm, with Gemm/Conv biases) to exercise what VSRN lacks."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

WORDS = [f"w{i}" for i in range(60)] + ["a", "dog", "on", "the", "beach", ".", "red", "car", "man", "street"]


_EXPORTED: dict[tuple, Path] = {}


def _cached_copy(key: tuple, path: Path, make: Callable[[Path], Path]) -> Path:
    """``make(dir)`` once per test session for ``key``; every call gets its own copy at ``path``."""
    if key not in _EXPORTED:
        root = Path(tempfile.mkdtemp(prefix="vsrt-test-export-"))
        atexit.register(shutil.rmtree, root, True)
        _EXPORTED[key] = make(root / "model")
    if path.exists():
        shutil.rmtree(path)
    return Path(shutil.copytree(_EXPORTED[key], path))


def random_vsrn_dir(path: Path, embed_size: int = 32, img_dim: int = 64, word_dim: int = 32, seed: int = 0,
                    cache: bool = True) -> Path:
    """``vsrt convert``-style model directory of a random-weight VSRN, exported to FP32 ONNX (``vsrt export``).

    With ``cache``, exported once per test session for each set of arguments; each call gets a fresh copy.
    """
    if not cache:
        return _random_vsrn_dir(path, embed_size, img_dim, word_dim, seed)
    return _cached_copy(("vsrn", embed_size, img_dim, word_dim, seed), path,
                        lambda d: _random_vsrn_dir(d, embed_size, img_dim, word_dim, seed))


def _random_vsrn_dir(path: Path, embed_size: int, img_dim: int, word_dim: int, seed: int) -> Path:
    import torch

    from vsrt.export.model_export import export_model
    from vsrt.models.convert import write_model_dir
    from vsrt.models.vsrn import VSRNConfig, build
    from vsrt.text.vocab import Vocabulary

    torch.manual_seed(seed)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *WORDS])
    cfg = VSRNConfig(vocab_size=len(vocab), img_dim=img_dim, embed_size=embed_size, word_dim=word_dim)
    mods = build(cfg)
    with torch.no_grad():  # non-trivial GCN residual branches (BN gamma = 0 at init makes each Rs_GCN the identity)
        for m in mods["visual"].modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2.0)
    states = {k: m.state_dict() for k, m in mods.items()}
    write_model_dir(path, "vsrn", cfg, states, vocab, {"random_weights": seed}, force=True)
    export_model(path)
    return path


def generic_stage_onnx(path: Path, seed: int = 0) -> Path:
    """A stage ``feats`` [batch, 12, 16] → ``embedding`` [batch, 24], ``tokens_out`` with Gemm, Conv1d, GRU, l2norm.

    Exported with the TorchScript exporter like every vsrt stage.
    """
    import torch
    from torch import nn

    class Generic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(16, 32, 3, padding=1)
            self.gru = nn.GRU(32, 24, batch_first=True)
            self.fc = nn.Linear(24, 24)

        def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.relu(self.conv(feats.transpose(1, 2))).transpose(1, 2)
            out, h = self.gru(x)
            e = self.fc(h[0])
            e = e / e.pow(2).sum(dim=1, keepdim=True).sqrt()
            return e, out

    torch.manual_seed(seed)
    m = Generic().eval()
    x = torch.rand(2, 12, 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(m, (x,), str(path), input_names=["feats"], output_names=["embedding", "steps"],
                      dynamic_axes={"feats": {0: "batch"}, "embedding": {0: "batch"}, "steps": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return path


def generic_feeds(n: int, seed: int = 0, batch: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"feats": rng.random((batch, 12, 16), dtype=np.float32)} for _ in range(n)]


#: small configs (``config.json["config"]`` layout) of every registered family, each with all the parts of the
#: real one; a family missing here makes :func:`test_engine_build.test_every_family_every_stage_builds` fail
TINY_FAMILY_CONFIGS: dict[str, dict] = {
    "vsrn": {"vocab_size": len(WORDS) + 4, "img_dim": 32, "embed_size": 16, "word_dim": 16},
    "vsrpp": {"vocab_size": len(WORDS) + 4, "img_dim": 32, "embed_size": 16, "word_dim": 16, "num_regions": 12},
    "resg": {"vocab_size": len(WORDS) + 4, "img_dim": 32, "embed_size": 16, "word_dim": 16, "num_regions": 12},
    "dsran-gru": {"variant": "gru", "vocab_size": len(WORDS) + 4, "embed_size": 16, "img_dim": 64, "word_dim": 16,
                  "K": 1, "num_regions": 8, "cnn_layers": [1, 1, 1, 1], "cnn_width": 2, "image_size": 64},
    "dsran-bert": {"variant": "bert", "vocab_size": 0, "embed_size": 16, "img_dim": 64, "word_dim": 16, "K": 1,
                   "num_regions": 8, "cnn_layers": [1, 1, 1, 1], "cnn_width": 2, "image_size": 64,
                   "bert": {"vocab_size": 60, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 32, "max_position_embeddings": 40}},
}


def tiny_family_dir(path: Path, family: str, seed: int = 0) -> Path:
    """A random-weight model directory of ``family`` at the size of :data:`TINY_FAMILY_CONFIGS`, exported to FP32
    ONNX through the family's own registry entry (every stage it has)."""
    import torch

    from vsrt.export.model_export import export_model
    from vsrt.models.convert import write_model_dir
    from vsrt.models.registry import get_family
    from vsrt.text.vocab import Vocabulary

    fam = get_family(family)
    cfg = fam.config_from_dict(dict(TINY_FAMILY_CONFIGS[family]))
    torch.manual_seed(seed)
    mods = fam.build(cfg)
    with torch.no_grad():  # non-trivial norm statistics (BN gamma = 0 at init makes residual branches vanish)
        for m in mods.values():
            for x in m.modules():
                if isinstance(x, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    x.weight.uniform_(0.5, 1.5)
                    x.running_var.uniform_(0.5, 2.0)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *WORDS]) if fam.needs_vocab else None
    write_model_dir(path, family, cfg, {k: m.state_dict() for k, m in mods.items()}, vocab,
                    {"random_weights": seed}, force=True)
    export_model(path)
    return path
