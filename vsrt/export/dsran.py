"""DSRAN's stages for export: ``grid`` (pixels → 49 ResNet-152 grid tokens), ``visual`` (grid tokens + regions
(+ BERT: region box/class encodings) → embedding) and ``text`` (GRU: tokens, lengths → embedding; BERT: 32
WordPiece ids → embedding).

Export forwards fold every eval-mode BatchNorm of the graph blocks into a per-channel affine and fuse Q/K/V into one
product (:class:`~vsrt.models.gat.GATForExport`); parity is measured against the original-faithful modules
(:mod:`vsrt.models.dsran`): for the GRU text stage the reference is the literal per-caption computation (each caption
alone through the original ``EncoderText`` + ``gat_cap``), which the masked batch graph must reproduce.
"""

from __future__ import annotations

import torch
from torch import nn

from vsrt.export.spec import StageExport
from vsrt.export.vsrn import random_captions, random_regions
from vsrt.manifest import TensorSpec
from vsrt.models.common import length_mask
from vsrt.models.dsran import (
    DSRANConfig,
    DSRANTextBert,
    DSRANTextGRU,
    DSRANVisual,
    l2norm,
    norm_eps,
)
from vsrt.models.gat import GATForExport
from vsrt.models.resnet import ResNet, grid_tokens

#: TensorRT profile bounds (grid: ResNet-152 at 224² is heavy, smaller batches)
BATCH_MIN, BATCH_OPT, BATCH_MAX = 1, 32, 128
GRID_BATCH_OPT, GRID_BATCH_MAX = 8, 32
SEQ_MIN, SEQ_OPT, SEQ_MAX = 2, 16, 64
#: ImageNet statistics (DSRAN's ``transforms.Normalize``)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_pixels(batch: int, seed: int, size: int = 224) -> torch.Tensor:
    """Normalised pixels of random uint8 images: ``(u/255 − mean)/std`` per channel."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 256, (batch, 3, size, size), generator=g).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (u - mean) / std


def random_region_pos(batch: int, seed: int, num_regions: int, pos_dim: int) -> torch.Tensor:
    """Stand-ins for DSRAN-BERT's layer-normalised box/class encodings (zero mean, unit variance per part)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_regions, pos_dim, generator=g)


def random_wordpiece_ids(batch: int, seed: int, vocab_size: int, max_len: int = 32) -> torch.Tensor:
    """``[CLS] w… [SEP] 0…`` rows of ``max_len`` ids with varied caption lengths (one row fills all positions)."""
    g = torch.Generator().manual_seed(seed)
    cls_id, sep_id = (101, 102) if vocab_size > 1000 else (1, 2)
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch, max_len), generator=g)
    lengths = torch.randint(4, max_len + 1, (batch,), generator=g)
    lengths[0] = max_len
    steps = torch.arange(max_len).unsqueeze(0)
    ids[:, 0] = cls_id
    ids = torch.where(steps == (lengths - 1).unsqueeze(1), torch.full_like(ids, sep_id), ids)
    return torch.where(steps < lengths.unsqueeze(1), ids, torch.zeros_like(ids))


class _GridForExport(nn.Module):
    def __init__(self, cnn: ResNet) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor]:
        return (grid_tokens(self.cnn(pixels)),)


class _VisualForExport(nn.Module):
    """:class:`DSRANVisual` with export-form graph blocks (BN folded, fused Q/K/V)."""

    def __init__(self, vis: DSRANVisual) -> None:
        super().__init__()
        self.vis = vis
        cfg = vis.cfg
        self.bert = cfg.variant == "bert"
        self.eps = norm_eps(cfg)
        self.grid_graph = GATForExport(getattr(vis, vis.grid_graph))
        self.region_graph = GATForExport(getattr(vis, vis.region_graph))
        self.jsr = nn.ModuleList(GATForExport(getattr(vis, n)) for n in vis.jsr_names)

    def _forward(self, grid: torch.Tensor, regions: torch.Tensor, region_pos: torch.Tensor | None) -> torch.Tensor:
        g = self.grid_graph(self.vis.img_enc(grid))
        r = self.region_graph(self.vis.rcnn_enc(regions, region_pos))
        cat = torch.cat([g, r], dim=1)
        return l2norm(self.vis.fuse([gat(cat).mean(dim=1) for gat in self.jsr]), self.eps)


class _VisualGRUForExport(_VisualForExport):
    def forward(self, grid: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor]:
        return (self._forward(grid, regions, None),)


class _VisualBertForExport(_VisualForExport):
    def forward(self, grid: torch.Tensor, regions: torch.Tensor, region_pos: torch.Tensor) -> tuple[torch.Tensor]:
        return (self._forward(grid, regions, region_pos),)


class _TextGRUForExport(nn.Module):
    """Per-caption convention on a padded batch: pad keys get a ``-inf`` attention bias, the mean runs over each
    caption's own positions."""

    def __init__(self, txt: DSRANTextGRU) -> None:
        super().__init__()
        self.txt = txt
        self.gat = GATForExport(txt.gat_cap)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor]:
        words = self.txt.word_features(tokens)
        mask = length_mask(lengths, tokens.size(1))
        bias = torch.where(mask, torch.zeros((), dtype=words.dtype), torch.full((), float("-inf"), dtype=words.dtype))
        g = self.gat(words, bias[:, None, None, :])
        m = mask.unsqueeze(-1).to(g.dtype)
        mean = (g * m).sum(1) / lengths.to(g.dtype).unsqueeze(1)
        return (l2norm(mean, 1e-12),)


class _TextBertForExport(nn.Module):
    def __init__(self, txt: DSRANTextBert) -> None:
        super().__init__()
        self.txt = txt
        self.gat = GATForExport(txt.gat_cap)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (l2norm(self.gat(self.txt.txt_enc(input_ids)).mean(dim=1), 0.0),)


def grid_tensor_specs(cfg: DSRANConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """I/O of the ``grid`` stage."""
    s, n, c = cfg.image_size, cfg.grid_tokens, cfg.img_dim
    inputs = [TensorSpec("pixels", "float32", ["batch", 3, s, s], [BATCH_MIN, 3, s, s], [GRID_BATCH_OPT, 3, s, s],
                         [GRID_BATCH_MAX, 3, s, s])]
    return inputs, [TensorSpec("grid", "float32", ["batch", n, c])]


def _batched(name: str, dims: list[int], opt: int = BATCH_OPT, mx: int = BATCH_MAX) -> TensorSpec:
    return TensorSpec(name, "float32", ["batch", *dims], [BATCH_MIN, *dims], [opt, *dims], [mx, *dims])


def visual_tensor_specs(cfg: DSRANConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """I/O of the ``visual`` stage."""
    inputs = [_batched("grid", [cfg.grid_tokens, cfg.img_dim]), _batched("regions", [cfg.num_regions, cfg.img_dim])]
    if cfg.variant == "bert":
        inputs.append(_batched("region_pos", [cfg.num_regions, cfg.pos_dim]))
    return inputs, [TensorSpec("embedding", "float32", ["batch", cfg.embed_size])]


def text_tensor_specs(cfg: DSRANConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """I/O of the ``text`` stage (GRU: word ids + lengths; BERT: fixed-length WordPiece ids)."""
    out = [TensorSpec("embedding", "float32", ["batch", cfg.embed_size])]
    if cfg.variant == "bert":
        n = cfg.max_len
        return [TensorSpec("input_ids", "int64", ["batch", n], [BATCH_MIN, n], [BATCH_OPT, n], [BATCH_MAX, n])], out
    inputs = [
        TensorSpec("tokens", "int64", ["batch", "seq"], [BATCH_MIN, SEQ_MIN], [BATCH_OPT, SEQ_OPT],
                   [BATCH_MAX, SEQ_MAX]),
        TensorSpec("lengths", "int64", ["batch"], [BATCH_MIN], [BATCH_OPT], [BATCH_MAX]),
    ]
    return inputs, out


def stage_exports(cfg: DSRANConfig, modules: dict[str, nn.Module]) -> list[StageExport]:
    """Export descriptions of DSRAN's three stages."""
    cnn: ResNet = modules["grid"]  # type: ignore[assignment]
    vis: DSRANVisual = modules["visual"]  # type: ignore[assignment]
    txt = modules["text"]
    family = f"dsran-{cfg.variant}"
    gin, gout = grid_tensor_specs(cfg)
    vin, vout = visual_tensor_specs(cfg)
    tin, tout = text_tensor_specs(cfg)
    bert = cfg.variant == "bert"

    def visual_inputs(b: int, s: int, **_: int) -> tuple[torch.Tensor, ...]:
        x = (random_regions(b, s, cfg.grid_tokens, cfg.img_dim), random_regions(b, s + 7, cfg.num_regions, cfg.img_dim))
        return (*x, random_region_pos(b, s + 11, cfg.num_regions, cfg.pos_dim)) if bert else x

    def visual_reference(*inputs: torch.Tensor) -> tuple[torch.Tensor]:
        return (vis(*inputs),)

    stages = [
        StageExport(
            "grid",
            _GridForExport(cnn),
            gin,
            gout,
            lambda b, s, **_: (random_pixels(b, s, cfg.image_size),),
            parity_cases=[(1, {}), (2, {})],
            info={"family": family, "backbone": f"ResNet (torchvision layout) blocks {cfg.cnn_layers}",
                  "preprocess": {"resize_shorter": 256, "center_crop": cfg.image_size, "interpolation":
                                 "PIL bilinear (antialiased), vsrt.runtime.grid_preprocess", "mean": IMAGENET_MEAN,
                                 "std": IMAGENET_STD, "channel_order": "RGB"}},
        ),
        StageExport(
            "visual",
            (_VisualBertForExport if bert else _VisualGRUForExport)(vis),
            vin,
            vout,
            visual_inputs,
            reference=visual_reference,
            info={"family": family, "K": cfg.K, "num_regions": cfg.num_regions,
                  "reference": f"original DSRAN image side ({'model_bert' if bert else 'model'}.py names)",
                  "graphs": "BatchNorm folded, fused Q/K/V"},
        ),
    ]
    if bert:
        assert isinstance(txt, DSRANTextBert)
        stages.append(StageExport(
            "text",
            _TextBertForExport(txt),
            tin,
            tout,
            lambda b, s, **_: (random_wordpiece_ids(b, s, cfg.bert_config.vocab_size, cfg.max_len),),
            reference=lambda ids: (txt(ids),),
            info={"family": family, "tokenizer": "wordpiece", "max_len": cfg.max_len, "attention_mask": "none "
                  "(all 32 positions attended, as the original)", "bert": cfg.bert},
        ))
    else:
        assert isinstance(txt, DSRANTextGRU)
        stages.append(StageExport(
            "text",
            _TextGRUForExport(txt),
            tin,
            tout,
            lambda b, s, seq=0, **_: random_captions(b, s, cfg.vocab_size, seq),
            reference=lambda tokens, lengths: (txt.forward_single(tokens, lengths),),
            parity_cases=[(1, {"seq": 5}), (4, {"seq": 12}), (8, {"seq": 40})],
            info={"family": family, "text_convention": "per-caption (each caption alone, no pads)",
                  "reference": "original EncoderText + gat_cap run on each caption alone"},
        ))
    return stages
