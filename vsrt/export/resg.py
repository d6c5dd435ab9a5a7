"""ReSG's stages for export (torch): ``visual`` (regions → embedding, region node features) and ``text`` (tokens,
lengths → embedding, word node features). ReSG is a dual encoder here, so there is no ``pair_scorer``."""

from __future__ import annotations

import torch
from torch import nn

from vsrt.export.spec import StageExport
from vsrt.export.vsrn import random_captions, random_regions, text_tensor_specs, visual_tensor_specs
from vsrt.models.bigru import UnpackedBiGRU
from vsrt.models.resg import ReSGConfig, ReSGImageEncoder, ReSGTextEncoder


class TextExport(nn.Module):
    """ReSG's text encoder with the Bi-GRU unpacked (:class:`~vsrt.models.bigru.UnpackedBiGRU`)."""

    def __init__(self, enc: ReSGTextEncoder) -> None:
        super().__init__()
        self.enc = enc
        self.birnn = UnpackedBiGRU(enc.rnn)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc.nodes_to_outputs(self.birnn(self.enc.embed(tokens), lengths), lengths)


class VisualExport(nn.Module):
    """ReSG's image encoder as is (no packing, no data-dependent control flow)."""

    def __init__(self, enc: ReSGImageEncoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc(regions)


def stage_exports(cfg: ReSGConfig, modules: dict[str, nn.Module]) -> list[StageExport]:
    """Export descriptions of ReSG's two stages; the text reference is the packed Bi-GRU."""
    img: ReSGImageEncoder = modules["visual"]  # type: ignore[assignment]
    txt: ReSGTextEncoder = modules["text"]  # type: ignore[assignment]
    vin, vout = visual_tensor_specs(cfg)  # type: ignore[arg-type]
    tin, tout = text_tensor_specs(cfg.embed_size)
    common = {"family": "resg", "reconstructed": "ReSG has no public code; see docs/models.md",
              "graph_layers": cfg.graph_layers}

    def text_reference(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return txt(tokens, lengths)

    return [
        StageExport(
            "visual", VisualExport(img), vin, vout,
            lambda b, s, **_: (random_regions(b, s, cfg.num_regions, cfg.img_dim),),
            info={**common, "reference": "the PyTorch module itself"},
        ),
        StageExport(
            "text", TextExport(txt), tin, tout,
            lambda b, s, seq=0, **_: random_captions(b, s, cfg.vocab_size, seq),
            reference=text_reference,
            parity_cases=[(1, {"seq": 5}), (4, {"seq": 12}), (8, {"seq": 40})],
            info={**common, "text_window": cfg.text_window, "reference": "pack_padded_sequence Bi-GRU"},
        ),
    ]
