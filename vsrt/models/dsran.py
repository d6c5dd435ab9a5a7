"""DSRAN (Wen, Gu, Cheng, TCSVT 2020): dual semantic relations (grid + region graph attention) for image–text
matching, GRU and BERT text variants.

Module and parameter names equal the original ``kywen1119/DSRAN`` code (``model.py``, ``model_bert.py``,
``GAT.py``), so its released state dicts load unchanged; the model is split into three stages:

* ``grid`` — the ResNet-152 (``img_enc.cnn.*`` in the original; torchvision names) → 49 grid tokens.
* ``visual`` — ``img_enc.fc``, ``rcnn_enc``, the SSR graphs on grid and regions, the K JSR graphs on their
  concatenation, the gated fusion tree and ``l2norm`` → image embedding.
* ``text`` — ``txt_enc`` (GRU: ``embed`` + ``rnn``; BERT: ``bert`` + ``fc``) and ``gat_cap`` → caption embedding.

None of the original's construction side effects are reproduced: no ResNet file read from the working directory,
no GloVe download (``torchtext.vocab.GloVe()``), no vocabulary pickle read in the constructor, no
``pytorch_pretrained_bert.from_pretrained``, no DataParallel / ``.cuda()``.

The two variants name their graphs differently (reproduced): GRU ``gat_1`` = regions, ``gat_2`` = grid, JSR
``gat_cat_1..K``, fusions ``fusion, fusion2, fusion3``; BERT ``gat_1`` = grid, ``gat_2`` = regions, JSR
``gat_cat, gat_cat_1..K-1``, fusions ``fusion, fusion_1, fusion_2`` (K=4: ``fusion(fusion_1(·,·), fusion_2(·,·))``).
``l2norm`` has ``eps = 1e-12`` added to the norm in ``model.py`` (GRU) and none in ``model_bert.py`` (BERT).

**GRU text convention.** The original pads word features to the longest caption of the evaluation batch and runs
``gat_cap`` and the mean over the pads (zero vectors) with no mask, so a caption's embedding depends on the
other captions in its batch. vsrt uses one per-caption convention: *each caption is encoded alone, padded to its
own length (no pads)*. :meth:`DSRANTextGRU.forward` implements it on padded batches by masking pad keys in the
attention and averaging over the caption's own positions only — exactly the single-caption result.
:meth:`DSRANTextGRU.forward_batch_padded` is the original batch computation (kept to measure the difference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vsrt.models.bert import BertConfig, BertModel
from vsrt.models.common import length_mask, xavier_linear_
from vsrt.models.gat import GAT
from vsrt.models.resnet import RESNET152_LAYERS, ResNet

VARIANTS = ("gru", "bert")
#: DSRAN-BERT's box/class encoding per region: 6 box values + 1601 Visual Genome class probabilities
POS_DIM = 6 + 1601
#: DSRAN-BERT's fixed caption length in WordPiece tokens (``data_bert.py``: ``max_seq_len=32``)
BERT_MAX_LEN = 32


@dataclass
class DSRANConfig:
    """Hyper-parameters of a DSRAN model (what the original ``opt`` holds that inference needs).

    Attributes:
        variant: ``gru`` (``model.py``) or ``bert`` (``model_bert.py``).
        vocab_size: rows of the GRU variant's word embedding (0 for BERT).
        embed_size: joint embedding size D (1024 in every released model).
        img_dim: grid-token and region feature size (2048).
        word_dim: GRU word embedding size (300).
        K: number of JSR graph branches (1, 2 or 4).
        num_regions: regions per image (100 for the released models' VLP features).
        grid_size: grid tokens per side (7 for 224² input: 49 tokens).
        image_size: pixels per side of the grid stage's input (224).
        pos_dim: BERT variant's per-region box/class encoding size (1607).
        max_len: BERT variant's caption length (32).
        bert: BERT config dict (:class:`~vsrt.models.bert.BertConfig`) for the BERT variant.
        cnn_layers / cnn_width: ResNet blocks per stage and stem width (ResNet-152: ``[3, 8, 36, 3]``, 64);
            ``cnn_width * 32`` must equal ``img_dim``.
    """

    variant: str = "gru"
    vocab_size: int = 0
    embed_size: int = 1024
    img_dim: int = 2048
    word_dim: int = 300
    num_layers: int = 1
    K: int = 2
    num_regions: int = 100
    grid_size: int = 7
    image_size: int = 224
    pos_dim: int = POS_DIM
    max_len: int = BERT_MAX_LEN
    bert: dict[str, Any] | None = None
    cnn_layers: list[int] = field(default_factory=lambda: list(RESNET152_LAYERS))
    cnn_width: int = 64

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"DSRAN variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.K not in (1, 2, 4):
            raise ValueError(f"DSRAN K (JSR branches) must be 1, 2 or 4, got {self.K}")
        if self.num_layers != 1:
            raise ValueError("DSRAN's text GRU has num_layers=1 in every released model; other values are unsupported")
        if self.cnn_width * 32 != self.img_dim:
            raise ValueError(f"grid features have cnn_width*32 = {self.cnn_width * 32} channels but img_dim is "
                             f"{self.img_dim}: both DSRAN fc layers take img_dim inputs")
        if self.variant == "gru" and self.vocab_size <= 0:
            raise ValueError("DSRAN-GRU needs vocab_size > 0")
        if self.variant == "bert":
            self.bert = BertConfig.from_dict(self.bert or {}).to_dict()
        self.cnn_layers = [int(x) for x in self.cnn_layers]

    @property
    def grid_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def bert_config(self) -> BertConfig:
        return BertConfig.from_dict(self.bert or {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DSRANConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def l2norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """DSRAN's ``l2norm`` over the last axis: ``x / (‖x‖ + eps)`` (GRU: eps 1e-12; BERT: no eps)."""
    norm = x.pow(2).sum(dim=-1, keepdim=True).sqrt()
    return x / (norm + eps) if eps else x / norm


def norm_eps(cfg: DSRANConfig) -> float:
    return 1e-12 if cfg.variant == "gru" else 0.0


class Fusion(nn.Module):
    """Gated fusion of two vectors: ``f1 = gate0(a)``, ``f2 = gate1(b)``, ``t = σ(fusion0(f1) + fusion1(f2))``,
    ``t·f1 + (1−t)·f2``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.gate0 = nn.Linear(size, size)
        self.gate1 = nn.Linear(size, size)
        self.fusion0 = nn.Linear(size, size)
        self.fusion1 = nn.Linear(size, size)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        f1, f2 = self.gate0(a), self.gate1(b)
        t = torch.sigmoid(self.fusion0(f1) + self.fusion1(f2))
        return t * f1 + (1 - t) * f2


class _ImageHead(nn.Module):
    """``img_enc`` without its ``cnn`` (which is the ``grid`` stage): only ``fc``."""

    def __init__(self, cfg: DSRANConfig) -> None:
        super().__init__()
        if cfg.variant == "gru":
            self.fc = nn.Linear(cfg.img_dim, cfg.embed_size)
            xavier_linear_(self.fc)
        else:
            self.fc = nn.Sequential(nn.Linear(cfg.img_dim, cfg.embed_size), nn.ReLU(), nn.Dropout(0.1))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.fc(grid)


class RcnnEncoder(nn.Module):
    """Region features (+ BERT: box/class encodings) → D. GRU: ``fc_image`` Linear; BERT: two-layer ``fc_image``
    plus ``fc_pos``, summed (its ``fc Linear(2D, D)`` exists in the checkpoints but is unused, as in the original)."""

    def __init__(self, cfg: DSRANConfig) -> None:
        super().__init__()
        self.variant = cfg.variant
        d = cfg.embed_size
        if cfg.variant == "gru":
            self.fc_image = nn.Linear(cfg.img_dim, d)
            xavier_linear_(self.fc_image)
        else:
            self.fc_image = nn.Sequential(nn.Linear(cfg.img_dim, cfg.img_dim), nn.ReLU(), nn.Linear(cfg.img_dim, d),
                                          nn.ReLU(), nn.Dropout(0.1))
            self.fc_pos = nn.Sequential(nn.Linear(cfg.pos_dim, d), nn.ReLU(), nn.Dropout(0.1))
            self.fc = nn.Linear(2 * d, d)

    def forward(self, regions: torch.Tensor, region_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fc_image(regions)
        if self.variant == "bert":
            if region_pos is None:
                raise ValueError("DSRAN-BERT's region encoder needs region_pos")
            x = x + self.fc_pos(region_pos)
        return x


def _graph_names(cfg: DSRANConfig) -> tuple[str, str, list[str], list[str]]:
    """``(grid graph, region graph, JSR graphs, fusion modules)`` attribute names of the variant."""
    if cfg.variant == "gru":
        return "gat_2", "gat_1", [f"gat_cat_{i + 1}" for i in range(cfg.K)], \
            {1: [], 2: ["fusion"], 4: ["fusion", "fusion2", "fusion3"]}[cfg.K]
    return "gat_1", "gat_2", ["gat_cat"] + [f"gat_cat_{i}" for i in range(1, cfg.K)], \
        {1: [], 2: ["fusion"], 4: ["fusion", "fusion_1", "fusion_2"]}[cfg.K]


class DSRANVisual(nn.Module):
    """The ``visual`` stage: grid tokens ``(B, 49, img_dim)`` + regions ``(B, R, img_dim)`` (+ BERT: ``region_pos
    (B, R, 1607)``) → L2-normalised image embedding ``(B, D)``."""

    def __init__(self, cfg: DSRANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_enc = _ImageHead(cfg)
        self.rcnn_enc = RcnnEncoder(cfg)
        grid_name, region_name, jsr, fusions = _graph_names(cfg)
        self.grid_graph, self.region_graph, self.jsr_names, self.fusion_names = grid_name, region_name, jsr, fusions
        for name in [grid_name, region_name, *jsr]:
            self.add_module(name, GAT(cfg.embed_size, 1))
        for name in fusions:
            self.add_module(name, Fusion(cfg.embed_size))

    def fuse(self, branches: list[torch.Tensor]) -> torch.Tensor:
        """The JSR fusion tree over the K mean-pooled branches (variant-specific module names)."""
        if len(branches) == 1:
            return branches[0]
        if len(branches) == 2:
            return self.fusion(branches[0], branches[1])
        f = [getattr(self, n) for n in self.fusion_names]  # GRU: fusion, fusion2, fusion3 / BERT: fusion, _1, _2
        if self.cfg.variant == "gru":
            return f[2](f[0](branches[0], branches[1]), f[1](branches[2], branches[3]))
        return f[0](f[1](branches[0], branches[1]), f[2](branches[2], branches[3]))

    def forward(self, grid: torch.Tensor, regions: torch.Tensor, region_pos: torch.Tensor | None = None
                ) -> torch.Tensor:
        g = getattr(self, self.grid_graph)(self.img_enc(grid))
        r = getattr(self, self.region_graph)(self.rcnn_enc(regions, region_pos))
        cat = torch.cat([g, r], dim=1)
        branches = [getattr(self, n)(cat).mean(dim=1) for n in self.jsr_names]
        return l2norm(self.fuse(branches), norm_eps(self.cfg))


class EncoderText(nn.Module):
    """DSRAN-GRU's ``txt_enc``: word embedding → dropout 0.1 → unidirectional GRU (no GloVe loading here: the
    checkpoint's embedding overwrites it anyway)."""

    def __init__(self, cfg: DSRANConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        self.rnn = nn.GRU(cfg.word_dim, cfg.embed_size, cfg.num_layers, batch_first=True)
        self.dropout = nn.Dropout(0.1)
        with torch.no_grad():
            self.embed.weight.uniform_(-0.1, 0.1)


class DSRANTextGRU(nn.Module):
    """The GRU ``text`` stage: ``tokens (B, T)``, ``lengths (B,)`` → caption embedding ``(B, D)``."""

    def __init__(self, cfg: DSRANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.txt_enc = EncoderText(cfg)
        self.gat_cap = GAT(cfg.embed_size, 1)

    def word_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-word GRU outputs, L2-normalised per word (valid up to each caption's length)."""
        out, _ = self.txt_enc.rnn(self.txt_enc.dropout(self.txt_enc.embed(tokens)))
        return l2norm(out, 1e-12)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """vsrt's per-caption convention: every caption as if encoded alone, without pads."""
        words = self.word_features(tokens)
        mask = length_mask(lengths, tokens.size(1))
        g = self.gat_cap(words, key_mask=mask)
        m = mask.unsqueeze(-1).to(g.dtype)
        mean = (g * m).sum(1) / lengths.to(g.dtype).clamp(min=1).unsqueeze(1)
        return l2norm(mean, 1e-12)

    def forward_batch_padded(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The original ``EncoderText`` + ``gat_cap`` on a batch: packed GRU, zero pads up to the batch's longest
        caption, graph attention and mean over every position (pads included, no mask)."""
        x = self.txt_enc.dropout(self.txt_enc.embed(tokens))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.txt_enc.rnn(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        words = l2norm(padded, 1e-12)
        return l2norm(self.gat_cap(words).mean(dim=1), 1e-12)

    def forward_single(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The per-caption convention computed literally: each caption alone through :meth:`forward_batch_padded`
        (reference for :meth:`forward`)."""
        outs = [self.forward_batch_padded(tokens[i : i + 1, : int(n)], lengths[i : i + 1])
                for i, n in enumerate(lengths.tolist())]
        return torch.cat(outs)


class TextEncoderBert(nn.Module):
    """DSRAN-BERT's ``txt_enc``: ``bert`` (last layer, no attention mask) → ``fc`` (Linear, ReLU, Dropout)."""

    def __init__(self, cfg: DSRANConfig) -> None:
        super().__init__()
        bc = cfg.bert_config
        self.bert = BertModel(bc)
        self.fc = nn.Sequential(nn.Linear(bc.hidden_size, cfg.embed_size), nn.ReLU(), nn.Dropout(0.1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bert(input_ids)[0])


class DSRANTextBert(nn.Module):
    """The BERT ``text`` stage: ``input_ids (B, 32)`` → caption embedding ``(B, D)``; all 32 positions (pads
    included) enter BERT, ``gat_cap`` and the mean, as in the original."""

    def __init__(self, cfg: DSRANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.txt_enc = TextEncoderBert(cfg)
        self.gat_cap = GAT(cfg.embed_size, 1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return l2norm(self.gat_cap(self.txt_enc(input_ids)).mean(dim=1), 0.0)


def build(cfg: DSRANConfig) -> dict[str, nn.Module]:
    """The stage modules: ``{"grid": ResNet, "visual": DSRANVisual, "text": DSRANTextGRU | DSRANTextBert}``."""
    text = DSRANTextGRU(cfg) if cfg.variant == "gru" else DSRANTextBert(cfg)
    return {"grid": ResNet(cfg.cnn_layers, cfg.cnn_width), "visual": DSRANVisual(cfg), "text": text}


#: prefix of the ResNet inside the original state dict
CNN_PREFIX = "img_enc.cnn."


def split_original_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """An original ``DSRAN.state_dict()`` (no ``module.`` prefix) → stage state dicts; keys keep their original
    names except the ResNet's, which lose ``img_enc.cnn.`` (plain torchvision names)."""
    stages: dict[str, dict[str, torch.Tensor]] = {"grid": {}, "visual": {}, "text": {}}
    for k, v in state.items():
        if k.startswith(CNN_PREFIX):
            stages["grid"][k[len(CNN_PREFIX):]] = v
        elif k.startswith(("txt_enc.", "gat_cap.")):
            stages["text"][k] = v
        else:
            stages["visual"][k] = v
    return stages


def join_stage_states(stages: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`split_original_state`: the original ``DSRAN.state_dict()`` key set."""
    out = {CNN_PREFIX + k: v for k, v in stages["grid"].items()}
    out.update(stages["visual"])
    out.update(stages["text"])
    return out


def expected_original_shapes(cfg: DSRANConfig) -> dict[str, tuple[int, ...]]:
    """Every key and shape of the original ``DSRAN.state_dict()`` for ``cfg`` (built on the meta device)."""
    with torch.device("meta"):
        mods = build(cfg)
        states = {name: {k: v for k, v in m.state_dict().items()} for name, m in mods.items()}
    return {k: tuple(v.shape) for k, v in join_stage_states(states).items()}


def contrastive_loss(im: torch.Tensor, s: torch.Tensor, margin: float = 0.2, max_violation: bool = True
                     ) -> torch.Tensor:
    """DSRAN's ``ContrastiveLoss``: the VSE++ hinge triplet loss, always with the hardest negatives in the original
    (``max_violation=False`` sums every violation, for a warm-up)."""
    from vsrt.models.vsrn import contrastive_loss as vse_loss

    return vse_loss(im, s, margin, max_violation)
