"""VSRN's stages for export: ``visual`` (regions → embedding, region features) and ``text`` (tokens, lengths →
embedding, word features)."""

from __future__ import annotations

import torch
from torch import nn

from vsrt.export.spec import StageExport
from vsrt.manifest import TensorSpec
from vsrt.models.common import l2norm
from vsrt.models.vsrn import RsGCN, VSRNConfig, VSRNImageEncoder, VSRNTextEncoder

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


class FusedRsGCN(nn.Module):
    """An eval-mode :class:`~vsrt.models.vsrn.RsGCN` rewritten with half the large matrix products.

    With ``X = vᵀ`` (regions × channels), the original computes ``θ = Xθ_wᵀ+θ_b``, ``φ = Xφ_wᵀ+φ_b``,
    ``g = Xg_wᵀ+g_b``, ``R = θφᵀ/N``, ``out = BN(W0(Rg)) + v``: four C×C products per region. Because every step is
    linear, ``θφᵀ = X(θ_wᵀφ_w)Xᵀ + X(θ_wᵀφ_b)1ᵀ + 1(φ_wᵀθ_b)ᵀXᵀ + θ_b·φ_b`` and
    ``BN(W0(Rg)) = R(X(A g_w)ᵀ + A g_b) + a0`` with ``A``/``a0`` the BN-folded ``W0``. Both C×C matrices are
    precomposed once and applied in ONE product ``X·[M | Gᵀ]``: 2·N·C² multiply-adds instead of 4·N·C². The result
    equals the original up to float rounding; parity is measured against the original module at export.
    """

    def __init__(self, gcn: RsGCN) -> None:
        super().__init__()
        conv, bn = gcn.W[0], gcn.W[1]
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            a = conv.weight[:, :, 0] * scale[:, None]  # C × C'
            a0 = conv.bias * scale + bn.bias - bn.running_mean * scale
            th_w, th_b = gcn.theta.weight[:, :, 0].double(), gcn.theta.bias.double()
            ph_w, ph_b = gcn.phi.weight[:, :, 0].double(), gcn.phi.bias.double()
            g_w, g_b = gcn.g.weight[:, :, 0].double(), gcn.g.bias.double()
            m = th_w.t() @ ph_w  # C × C
            gt = (a.double() @ g_w).t()  # C × C
            self.register_buffer("proj", torch.cat([m, gt], 1).float())  # C × 2C
            self.register_buffer("w_row", (ph_w.t() @ th_b).float())  # C
            self.register_buffer("u_col", (th_w.t() @ ph_b).float())  # C
            self.register_buffer("s0", (th_b @ ph_b).float().reshape(1))
            self.register_buffer("a0", a0.float())
            self.register_buffer("ag_b", (a.double() @ g_b).float())
        self.c = m.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, N, C)`` regions-major (the transpose of the original's layout) → same layout."""
        n = x.size(1)
        both = torch.matmul(x, self.proj)  # B,N,2C
        xm, xg = both[..., : self.c], both[..., self.c :]
        r = torch.matmul(xm + self.w_row, x.transpose(1, 2)) + (torch.matmul(x, self.u_col) + self.s0).unsqueeze(-1)
        r = r / n
        return torch.matmul(r, xg + self.ag_b) + self.a0 + x


class _VisualForExport(nn.Module):
    """VSRN's image encoder with :class:`FusedRsGCN` blocks, regions-major layout throughout (no permutes)."""

    def __init__(self, enc: VSRNImageEncoder) -> None:
        super().__init__()
        self.enc = enc
        self.gcns = nn.ModuleList(
            FusedRsGCN(g) for g in (enc.Rs_GCN_1, enc.Rs_GCN_2, enc.Rs_GCN_3, enc.Rs_GCN_4)
        )

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, cfg = self.enc, self.enc.cfg
        x = enc.fc(regions)
        if cfg.variant == "coco":
            x = l2norm(x, dim=1)
        for g in self.gcns:
            x = g(x)
        gcn = l2norm(x, dim=1)
        _, h = enc.img_rnn(gcn)
        feat = h[0]
        if cfg.variant == "f30k":
            feat = enc.bn(feat)
        if not cfg.no_imgnorm:
            feat = l2norm(feat, dim=1)
        if cfg.use_abs:
            feat = feat.abs()
        return feat, gcn


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

    def visual_reference(regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return img(regions)

    def text_reference(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return txt.forward_packed(tokens, lengths), None

    return [
        StageExport(
            "visual",
            _VisualForExport(img),
            vin,
            vout,
            lambda b, s, **_: (random_regions(b, s, cfg.num_regions, cfg.img_dim),),
            reference=visual_reference,
            info={"family": "vsrn", "variant": cfg.variant, "rs_gcn": "fused (2 C×C products per block)",
                  "reference": "original EncoderImagePrecompAttn (unfused Rs_GCN)"},
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
