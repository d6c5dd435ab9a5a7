"""VSR++'s stages for export (torch):

* ``visual``: ``regions [batch, R, F]`` → ``embedding [batch, D]`` (v_G), ``region_features [batch, R, D]`` (V_L);
* ``text``: ``tokens [batch, seq]``, ``lengths [batch]`` → ``embedding [batch, D]`` (t_G),
  ``word_features [batch, seq, D]`` (W, zero beyond each length);
* ``pair_scorer``: ``region_features [k, R, D]``, ``word_features [1, seq, D]``, ``lengths [1]`` → ``score [k]`` =
  S_L of ONE caption against ``k`` images (text-to-image re-ranking of a shortlist, or one column of the full score
  matrix; image-to-text re-ranking calls it once per candidate caption with ``k = 1``).

  The caption batch is fixed to 1 on purpose: with two dynamic batch dimensions (``k`` images, ``kw`` captions, "1 or
  k"), graph optimisers' symbolic shape inference (onnxslim) unifies them at the first broadcast and renames both
  inputs' dimension alike — ONNX Runtime then reuses buffers of the wrong size and TensorRT requires equal sizes,
  so a single caption against ``k`` images could not run. A static 1 broadcasts against ``k`` unambiguously.
"""

from __future__ import annotations

import torch
from torch import nn

from vsrt.export.spec import StageExport
from vsrt.export.vsrn import (
    SEQ_MAX,
    SEQ_MIN,
    SEQ_OPT,
    _VisualForExport,
    random_captions,
    random_regions,
    text_tensor_specs,
    visual_tensor_specs,
)
from vsrt.manifest import TensorSpec
from vsrt.models.bigru import UnpackedBiGRU
from vsrt.models.common import l2norm, length_mask
from vsrt.models.scan_attention import PairScorer, t2i_reference
from vsrt.models.vsrpp import EPS, VSRPPConfig, VSRPPImageEncoder, VSRPPTextEncoder, pair_scorer, text_outputs

#: pair_scorer profile: shortlist sizes k (the caption batch is 1)
PAIRS_MIN, PAIRS_OPT, PAIRS_MAX = 1, 64, 256


class VisualExport(nn.Module):
    """VSRN's export-friendly image encoder (fused Rs_GCN blocks) + per-region l2norm of the GCN output."""

    def __init__(self, enc: VSRPPImageEncoder) -> None:
        super().__init__()
        self.inner = _VisualForExport(enc)

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat, gcn = self.inner(regions)
        return feat, l2norm(gcn, dim=2, eps=EPS)


class TextExport(nn.Module):
    """The text encoder without packing: :class:`~vsrt.models.bigru.UnpackedBiGRU` (or the plain GRU when
    ``bi_gru`` is off, whose padded steps never reach the valid ones)."""

    def __init__(self, enc: VSRPPTextEncoder) -> None:
        super().__init__()
        self.cfg = enc.cfg
        self.embed = enc.embed
        if enc.cfg.bi_gru:
            self.birnn = UnpackedBiGRU(enc.rnn)
        else:
            self.rnn = enc.rnn

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(tokens)
        if self.cfg.bi_gru:
            out = self.birnn(x, lengths)
        else:
            out = self.rnn(x)[0] * length_mask(lengths, x.size(1)).unsqueeze(-1).to(x.dtype)
        return text_outputs(out, lengths, self.cfg.embed_size, self.cfg.bi_gru)


def pair_tensor_specs(cfg: VSRPPConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """I/O of the ``pair_scorer`` stage (TensorRT profile: shortlists of 1..256 images, one caption)."""
    r, d = cfg.num_regions, cfg.embed_size
    inputs = [
        TensorSpec("region_features", "float32", ["k", r, d], [PAIRS_MIN, r, d], [PAIRS_OPT, r, d],
                   [PAIRS_MAX, r, d]),
        TensorSpec("word_features", "float32", [1, "seq", d], [1, SEQ_MIN, d], [1, SEQ_OPT, d], [1, SEQ_MAX, d]),
        TensorSpec("lengths", "int64", [1], [1], [1], [1]),
    ]
    outputs = [TensorSpec("score", "float32", ["k"])]
    return inputs, outputs


def random_pair_inputs(k: int, seed: int, cfg: VSRPPConfig, seq: int = 0, captions: int = 1
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Valid ``pair_scorer`` inputs: ``k`` images of unit-norm regions and ``captions`` (1 for the exported graph)
    captions whose words are noisy copies of regions of those images (so attention is peaked and scores vary like
    trained ones), zero beyond their lengths; the longest caption has ``seq`` words."""
    g = torch.Generator().manual_seed(seed)
    r, d = cfg.num_regions, cfg.embed_size
    seq = seq or int(torch.randint(4, 20, (1,), generator=g))
    regions = l2norm(torch.randn(k, r, d, generator=g), dim=2, eps=EPS)
    lengths = torch.randint(2, seq + 1, (captions,), generator=g)
    lengths[0] = seq
    src_img = torch.randint(0, k, (captions, seq), generator=g)
    src_reg = torch.randint(0, r, (captions, seq), generator=g)
    words = regions[src_img, src_reg] + 0.8 * torch.randn(captions, seq, d, generator=g) / d**0.5
    words = l2norm(words, dim=2, eps=EPS) * length_mask(lengths, seq).unsqueeze(-1)
    return regions, words, lengths


def pair_reference(scorer: PairScorer, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor
                   ) -> tuple[torch.Tensor]:
    """SCAN's original per-caption loop (:func:`~vsrt.models.scan_attention.t2i_reference`): the caption against
    every image."""
    return (t2i_reference(regions, words, lengths, scorer.lambda_softmax, scorer.lambda_lse, scorer.agg_func)[:, 0],)


def stage_exports(cfg: VSRPPConfig, modules: dict[str, nn.Module]) -> list[StageExport]:
    """Export descriptions of VSR++'s three stages. References: the unfused image encoder, the packed Bi-GRU and
    SCAN's per-caption attention loop."""
    img: VSRPPImageEncoder = modules["visual"]  # type: ignore[assignment]
    txt: VSRPPTextEncoder = modules["text"]  # type: ignore[assignment]
    scorer = pair_scorer(cfg)
    vin, vout = visual_tensor_specs(cfg)  # type: ignore[arg-type]
    tin, tout = text_tensor_specs(cfg.embed_size)
    pin, pout = pair_tensor_specs(cfg)
    common = {"family": "vsrpp", "reconstructed": "VSR++ has no public code; see docs/models.md"}

    def visual_reference(regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return img(regions)

    def text_reference(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return txt(tokens, lengths)

    return [
        StageExport(
            "visual", VisualExport(img), vin, vout,
            lambda b, s, **_: (random_regions(b, s, cfg.num_regions, cfg.img_dim),),
            reference=visual_reference,
            info={**common, "variant": cfg.variant, "rs_gcn": "fused (2 C×C products per block)",
                  "reference": "EncoderImagePrecompAttn (unfused Rs_GCN) + per-region l2norm"},
        ),
        StageExport(
            "text", TextExport(txt), tin, tout,
            lambda b, s, seq=0, **_: random_captions(b, s, cfg.vocab_size, seq),
            reference=text_reference,
            parity_cases=[(1, {"seq": 5}), (4, {"seq": 12}), (8, {"seq": 40})],
            info={**common, "bi_gru": cfg.bi_gru,
                  "reference": "pack_padded_sequence Bi-GRU (SCAN EncoderText, directions averaged)"},
        ),
        StageExport(
            "pair_scorer", scorer, pin, pout,
            lambda b, s, seq=0, **_: random_pair_inputs(b, s, cfg, seq),
            reference=lambda *a: pair_reference(scorer, *a),
            parity_cases=[(8, {"seq": 7}), (16, {"seq": 12}), (32, {"seq": 20})],
            info={**common, "cross_attn": "t2i", "lambda_softmax": cfg.lambda_softmax,
                  "lambda_lse": cfg.lambda_lse, "agg_func": cfg.agg_func, "mu": cfg.mu,
                  "lse": "max-subtracted", "caption_batch": 1,
                  "reference": "SCAN xattn_score_t2i per-caption loop"},
        ),
    ]

