"""VSRN's stages for export: ``visual`` (regions → embedding, region features) and ``text`` (tokens, lengths →
embedding, word features)."""

from __future__ import annotations

import torch
from torch import nn

from vsrt.export.spec import StageExport
from vsrt.manifest import TensorSpec
from vsrt.models.vsrn import VSRNConfig, VSRNImageEncoder, VSRNTextEncoder

#: TensorRT profile bounds used unless overridden
BATCH_MIN, BATCH_OPT, BATCH_MAX = 1, 32, 128
SEQ_MIN, SEQ_OPT, SEQ_MAX = 2, 16, 64


def random_regions(batch: int, seed: int, num_regions: int, img_dim: int) -> torch.Tensor:
    """Non-negative, sparse-ish features like bottom-up-attention's ReLU outputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, num_regions, img_dim, generator=g) * 2.0
    x = x * (torch.rand(batch, num_regions, img_dim, generator=g) < 0.5)
    return x


def random_captions(batch: int, seed: int, vocab_size: int, seq: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (``<start>`` … ``<end>``, pad 0) with varied lengths, the longest equal to ``seq``."""
    g = torch.Generator().manual_seed(seed)
    seq = seq or int(torch.randint(4, 20, (1,), generator=g))
    lengths = torch.randint(2, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    tokens = torch.randint(4, max(vocab_size, 5), (batch, seq), generator=g)
    steps = torch.arange(seq).unsqueeze(0)
    tokens[:, 0] = 1
    tokens = torch.where(steps == (lengths - 1).unsqueeze(1), torch.full_like(tokens, 2), tokens)
    tokens = torch.where(steps < lengths.unsqueeze(1), tokens, torch.zeros_like(tokens))
    return tokens, lengths


class _TextForExport(nn.Module):
    def __init__(self, enc: VSRNTextEncoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc(tokens, lengths)


class _VisualForExport(nn.Module):
    def __init__(self, enc: VSRNImageEncoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc(regions)


def visual_tensor_specs(cfg: VSRNConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """I/O of the ``visual`` stage (shared with other region-based families)."""
    r, d = cfg.num_regions, cfg.img_dim
    inputs = [
        TensorSpec("regions", "float32", ["batch", r, d], [BATCH_MIN, r, d], [BATCH_OPT, r, d], [BATCH_MAX, r, d])
    ]
    outputs = [
        TensorSpec("embedding", "float32", ["batch", cfg.embed_size]),
        TensorSpec("region_features", "float32", ["batch", r, cfg.embed_size]),
    ]
    return inputs, outputs


def text_tensor_specs(embed_size: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """I/O of a word-id ``text`` stage."""
    inputs = [
        TensorSpec(
            "tokens", "int64", ["batch", "seq"], [BATCH_MIN, SEQ_MIN], [BATCH_OPT, SEQ_OPT], [BATCH_MAX, SEQ_MAX]
        ),
        TensorSpec("lengths", "int64", ["batch"], [BATCH_MIN], [BATCH_OPT], [BATCH_MAX]),
    ]
    outputs = [
        TensorSpec("embedding", "float32", ["batch", embed_size]),
        TensorSpec("word_features", "float32", ["batch", "seq", embed_size]),
    ]
    return inputs, outputs


def stage_exports(cfg: VSRNConfig, modules: dict[str, nn.Module]) -> list[StageExport]:
    """Export descriptions of VSRN's two stages; the text stage's reference is the original packed GRU."""
    img: VSRNImageEncoder = modules["visual"]  # type: ignore[assignment]
    txt: VSRNTextEncoder = modules["text"]  # type: ignore[assignment]
    vin, vout = visual_tensor_specs(cfg)
    tin, tout = text_tensor_specs(cfg.embed_size)

    def text_reference(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return txt.forward_packed(tokens, lengths), None

    return [
        StageExport(
            "visual",
            _VisualForExport(img),
            vin,
            vout,
            lambda b, s, **_: (random_regions(b, s, cfg.num_regions, cfg.img_dim),),
            info={"family": "vsrn", "variant": cfg.variant},
        ),
        StageExport(
            "text",
            _TextForExport(txt),
            tin,
            tout,
            lambda b, s, seq=0, **_: random_captions(b, s, cfg.vocab_size, seq),
            reference=text_reference,
            parity_cases=[(1, {"seq": 5}), (4, {"seq": 12}), (8, {"seq": 40})],
            info={"family": "vsrn", "reference": "pack_padded_sequence GRU (original EncoderText)"},
        ),
    ]
