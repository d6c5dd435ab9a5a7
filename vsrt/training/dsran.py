"""Training DSRAN (GRU or BERT text) and saving it in the original checkpoint layouts.

Loss: DSRAN's ``ContrastiveLoss`` — the VSE++ hinge triplet loss on the cosine score matrix with the hardest
negatives, margin 0.2 (the original has no warm-up; set ``TrainConfig.warmup_epochs=0`` to match it).

What is trained, as the original by default: the image side without the ResNet (frozen unless ``--finetune`` /
``--ft_res``, which vsrt does not support) and the text side; for BERT, ``txt_enc.bert`` only with ``ft_bert``
(frozen otherwise, as ``train_bert.py`` without ``--ft_bert``). The text GRU is trained with vsrt's per-caption
convention (the one that is exported), not the original's batch padding. The BERT optimiser is Adam at the
configured learning rate (the original's ``BertAdam`` with zero weight decay is Adam without bias correction plus an
optional linear warm-up).

Data: the SCAN-like precomputed layout (``{split}_ims.npy`` regions, ``{split}_caps.txt``) plus, when present,
``{split}_grid.npy`` grid tokens and ``{split}_region_pos.npy`` (BERT). Without pixels or a grid file the grid tokens
are derived from the regions (:func:`vsrt.runtime.dsran.grid_from_regions`) — a smoke-test convention for synthetic
data; without region encodings the BERT variant gets zeros. Full-size fidelity comes from converted checkpoints.

Saved layouts: GRU ``{'epoch', 'model': [DSRAN.state_dict()], 'best_rsum', 'opt', 'Eiters'}``; BERT the same dict
with ``model`` = the DataParallel state dict (``module.`` prefixes, not in a list). The ResNet weights saved under
``img_enc.cnn.*`` are the ones given with ``resnet_path`` (e.g. torchvision's ``resnet152-b121ed2d.pth``) or else
the untrained initialisation — they are not used in training on precomputed grid tokens.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsrt.errors import InputError
from vsrt.io import atomic_path, atomic_write_json
from vsrt.models.dsran import DSRANConfig, DSRANTextBert, DSRANTextGRU, build, contrastive_loss, join_stage_states
from vsrt.runtime.dsran import load_dsran_extras


@dataclass
class DSRANBatch:
    """One training batch: caption ``c`` is paired with image ``image_ids[c]``. ``tokens`` are word ids (GRU,
    ``[B, T]``) or WordPiece ids (BERT, ``[B, 32]``)."""

    regions: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    image_ids: torch.Tensor
    grid: torch.Tensor | None = None
    region_pos: torch.Tensor | None = None


def _grid_from_regions_t(regions: torch.Tensor, grid_tokens: int) -> torch.Tensor:
    """:func:`vsrt.runtime.dsran.grid_from_regions` in torch (token ``j`` = region ``⌊j·R/49⌋``)."""
    idx = (torch.arange(grid_tokens) * regions.size(1)) // grid_tokens
    return regions[:, idx]


def _load_resnet(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    from vsrt.models.checkpoints import load_torch_checkpoint

    obj = load_torch_checkpoint(p)
    if not isinstance(obj, dict):
        raise InputError(f"{p} is not a ResNet state dict")
    return obj


class DSRANTrainable:
    """DSRAN's stages with their loss; the ResNet (``grid``) is held only for the saved layout."""

    def __init__(self, cfg: DSRANConfig, margin: float = 0.2, bert_path: str | Path | None = None,
                 ft_bert: bool = False, resnet_path: str | Path | None = None) -> None:
        from vsrt.models.checkpoints import check_state_dict

        self.cfg = cfg
        self.margin = margin
        mods = build(cfg)
        self.grid, self.visual, self.text = mods["grid"], mods["visual"], mods["text"]
        if resnet_path:
            state = _load_resnet(resnet_path)
            check_state_dict(state, {k: tuple(v.shape) for k, v in self.grid.state_dict().items()}, str(resnet_path))
            self.grid.load_state_dict(state, strict=False)
        self.grid.requires_grad_(False).eval()
        if cfg.variant == "bert":
            assert isinstance(self.text, DSRANTextBert)
            if bert_path:
                from vsrt.models.bert import read_bert_dir

                bcfg, state = read_bert_dir(bert_path)
                if bcfg.to_dict() != cfg.bert_config.to_dict():
                    raise InputError(f"BERT in {bert_path} does not match the model config ({bcfg} vs "
                                     f"{cfg.bert_config})")
                self.text.txt_enc.bert.load_state_dict(state, strict=False)
            self.text.txt_enc.bert.requires_grad_(ft_bert)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in [*self.visual.parameters(), *self.text.parameters()] if p.requires_grad]

    def train_mode(self, on: bool) -> None:
        self.visual.train(on)
        self.text.train(on)

    def encode_images(self, regions: torch.Tensor, grid: torch.Tensor | None = None,
                      region_pos: torch.Tensor | None = None) -> torch.Tensor:
        if grid is None:
            grid = _grid_from_regions_t(regions, self.cfg.grid_tokens)
        if self.cfg.variant == "bert" and region_pos is None:
            region_pos = regions.new_zeros(regions.size(0), regions.size(1), self.cfg.pos_dim)
        return self.visual(grid, regions, region_pos if self.cfg.variant == "bert" else None)

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if isinstance(self.text, DSRANTextGRU):
            return self.text(tokens, lengths)
        if tokens.dim() != 2 or tokens.size(1) != self.cfg.max_len:
            raise InputError(f"DSRAN-BERT takes {self.cfg.max_len} WordPiece ids per caption, got a batch of shape "
                             f"{list(tokens.shape)} (train it with vsrt.training.dsran.train)")
        return self.text(tokens)

    def loss(self, batch: Any, max_violation: bool) -> torch.Tensor:
        im = self.encode_images(batch.regions, getattr(batch, "grid", None), getattr(batch, "region_pos", None))
        s = self.encode_texts(batch.tokens, batch.lengths)
        return contrastive_loss(im, s, self.margin, max_violation)

    def similarities(self, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray,
                     grid: np.ndarray | None = None, region_pos: np.ndarray | None = None) -> np.ndarray:
        """Cosine scores ``[N_img, N_cap]`` (eval mode is the caller's business, as in the generic trainer)."""
        ims = []
        for i in range(0, len(images), 128):
            sl = slice(i, i + 128)
            g = None if grid is None else torch.from_numpy(np.array(grid[sl], np.float32))
            p = None if region_pos is None else torch.from_numpy(np.array(region_pos[sl], np.float32))
            ims.append(self.encode_images(torch.from_numpy(np.array(images[sl], np.float32)), g, p))
        caps = []
        for i in range(0, len(tokens), 256):
            ln = torch.from_numpy(np.asarray(lengths[i : i + 256], np.int64))
            t = int(ln.max()) if self.cfg.variant == "gru" else tokens.shape[1]
            caps.append(self.encode_texts(torch.from_numpy(np.array(tokens[i : i + 256, :t], np.int64)), ln))
        return (torch.cat(ims) @ torch.cat(caps).t()).numpy()

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The trained stages' state dicts (the ResNet is frozen)."""
        return {"visual": self.visual.state_dict(), "text": self.text.state_dict()}

    def load_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.visual.load_state_dict(state["visual"])
        self.text.load_state_dict(state["text"])

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """``DSRAN.state_dict()`` of the original code (keys ``img_enc.cnn.*``, ``img_enc.fc.*``, …)."""
        return join_stage_states({"grid": self.grid.state_dict(), **self.state()})


def original_opt(cfg: DSRANConfig, train: dict[str, Any], data_path: str, vocab_path: str) -> argparse.Namespace:
    """An ``argparse.Namespace`` with the fields of DSRAN's ``train.py`` (GRU) or ``train_bert.py`` (BERT)."""
    common = dict(
        data_path=data_path, data_name="f30k", margin=train.get("margin", 0.2), num_epochs=train.get("epochs", 16),
        batch_size=train.get("batch_size", 128), embed_size=cfg.embed_size, crop_size=cfg.image_size,
        learning_rate=train.get("learning_rate", 2e-4), lr_update=train.get("lr_update", 8), workers=0, log_step=100,
        logger_name="runs/vsrt", resume="", img_dim=cfg.img_dim, K=cfg.K, feature_path="", region_bbox_file="",
        num_regions=cfg.num_regions,  # vsrt's addition: not in the weights, read back by `vsrt convert`
    )
    if cfg.variant == "gru":
        return argparse.Namespace(
            **common, vocab_path=vocab_path, word_dim=cfg.word_dim, grad_clip=train.get("grad_clip", 2.0),
            num_layers=cfg.num_layers, val_step=500, finetune=False, use_restval=False, reset_train=False,
            vocab_size=cfg.vocab_size,
        )
    extra = train.get("extra", {})
    return argparse.Namespace(
        **common, bert_path=str(extra.get("bert_path") or ""), ft_bert=bool(extra.get("ft_bert", False)),
        bert_size=cfg.bert_config.hidden_size, warmup=-1.0, ft_res=False, l_train=0,
        bert_heads=cfg.bert_config.num_attention_heads,  # vsrt's addition, as num_regions
    )


def save_original_checkpoint(path: str | Path, model: DSRANTrainable, opt: argparse.Namespace, epoch: int,
                             best_rsum: float, eiters: int) -> Path:
    """Write the original layout with ``torch.save`` (GRU: ``model=[sd]``; BERT: ``model`` = ``module.``-prefixed
    dict) so ``vsrt convert`` reads it like a released one. (A pickle on purpose: it reproduces the original format;
    vsrt's own artifacts are safetensors.)"""
    sd = model.original_state_dict()
    state: Any = [sd] if model.cfg.variant == "gru" else {"module." + k: v for k, v in sd.items()}
    obj = {"epoch": epoch, "model": state, "best_rsum": best_rsum, "opt": opt, "Eiters": eiters}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _common_config(variant: str, vocab_size: int, img_dim: int, opts: dict[str, Any]) -> dict[str, Any]:
    if img_dim % 32:
        raise InputError(f"DSRAN needs a feature size that is a multiple of 32 (ResNet width × 32), got {img_dim}")
    kw: dict[str, Any] = {
        "variant": variant, "vocab_size": vocab_size if variant == "gru" else 0, "img_dim": img_dim,
        "embed_size": int(opts.get("embed_size") or 1024), "K": int(opts.get("K") or 2),
        "num_regions": int(opts.get("num_regions") or 100), "cnn_width": img_dim // 32,
    }
    if opts.get("cnn_layers"):
        kw["cnn_layers"] = [int(x) for x in opts["cnn_layers"]]
    return kw


def default_config_gru(vocab_size: int, img_dim: int, **opts: Any) -> DSRANConfig:
    """A DSRAN-GRU config for training from scratch (``embed_size``, ``word_dim``, ``K``, ``num_regions``,
    ``cnn_layers`` from ``opts``; a VSRN ``variant`` option is ignored)."""
    return DSRANConfig(**_common_config("gru", vocab_size, img_dim, opts), word_dim=int(opts.get("word_dim") or 300))


def default_config_bert(vocab_size: int, img_dim: int, **opts: Any) -> DSRANConfig:
    """A DSRAN-BERT config: the BERT architecture from ``opts["bert_path"]`` (a local BERT directory's
    ``config.json``), else ``opts["bert"]`` (a config dict), else BERT-base."""
    from vsrt.models.bert import BertConfig

    if opts.get("bert_path"):
        cfg_file = Path(opts["bert_path"]) / "config.json"
        if not cfg_file.is_file():
            raise InputError(f"{cfg_file} not found: bert_path must be a local BERT directory")
        bert = BertConfig.from_dict(json.loads(cfg_file.read_text())).to_dict()
    else:
        bert = BertConfig.from_dict(opts.get("bert") or {}).to_dict()
    return DSRANConfig(**_common_config("bert", 0, img_dim, opts), bert=bert)


def make_trainable(cfg: DSRANConfig, train_cfg: Any) -> DSRANTrainable:
    """The trainable model; ``train_cfg.extra`` may hold ``bert_path``, ``ft_bert``, ``resnet_path``."""
    extra = getattr(train_cfg, "extra", {}) or {}
    return DSRANTrainable(cfg, margin=train_cfg.margin, bert_path=extra.get("bert_path"),
                          ft_bert=bool(extra.get("ft_bert", False)), resnet_path=extra.get("resnet_path"))


def save_trained(model: DSRANTrainable, cfg: DSRANConfig, train_cfg: Any, output: str | Path, data_dir: str | Path,
                 vocab_path: str | Path, summary: dict[str, Any]) -> Path:
    """Save as an original DSRAN checkpoint (convert it with ``vsrt convert``)."""
    opt = original_opt(cfg, train_cfg.to_dict(), str(data_dir), str(vocab_path))
    return save_original_checkpoint(output, model, opt, summary["best_epoch"], summary["best_rsum"],
                                    int(summary.get("steps", 0)))


# --------------------------------------------------------------------------- data
@dataclass
class DSRANSplit:
    """A precomputed split: regions ``[N, R, F]`` (memory-mapped), captions (5 per image), optional grid tokens
    and region encodings."""

    regions: np.ndarray
    captions: list[str]
    grid: np.ndarray | None
    region_pos: np.ndarray | None


def read_split(data_dir: str | Path, split: str, per_image: int = 5) -> DSRANSplit:
    """``{split}_ims.npy`` + ``{split}_caps.txt`` (+ ``{split}_grid.npy``, ``{split}_region_pos.npy``)."""
    d = Path(data_dir)
    ims, caps = d / f"{split}_ims.npy", d / f"{split}_caps.txt"
    for p in (ims, caps):
        if not p.is_file():
            raise InputError(f"{p} not found ({d} is not a precomputed dataset with a '{split}' split)")
    regions = np.load(ims, mmap_mode="r", allow_pickle=False)
    if regions.ndim != 3:
        raise InputError(f"{ims} must be [N, R, F], got shape {list(regions.shape)}")
    captions = caps.read_text(encoding="utf-8").splitlines()
    if len(captions) != per_image * len(regions):
        raise InputError(f"{caps} has {len(captions)} captions for {len(regions)} images (expected {per_image} each)")
    grid, pos = load_dsran_extras(d, split, len(regions))
    return DSRANSplit(regions, captions, grid, pos)


def _rows(a: np.ndarray | None, index: np.ndarray) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a[index], dtype=np.float32))


class DSRANBatches:
    """Every caption once per epoch, in a seeded random order; ``len`` = batches per epoch."""

    def __init__(self, data: DSRANSplit, tokens: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int = 0,
                 bert: bool = False, per_image: int = 5) -> None:
        self.data, self.tokens, self.lengths = data, tokens, lengths
        self.batch_size, self.bert, self.per_image = batch_size, bert, per_image
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return (len(self.tokens) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[DSRANBatch]:
        order = self.rng.permutation(len(self.tokens))
        for i in range(0, len(order), self.batch_size):
            idx = np.sort(order[i : i + self.batch_size])
            img = idx // self.per_image
            lengths = self.lengths[idx]
            t = self.tokens.shape[1] if self.bert else int(lengths.max())

            yield DSRANBatch(
                regions=_rows(self.data.regions, img),  # type: ignore[arg-type]
                tokens=torch.from_numpy(self.tokens[idx, :t].astype(np.int64)),
                lengths=torch.from_numpy(lengths.astype(np.int64)),
                image_ids=torch.from_numpy(img.astype(np.int64)),
                grid=_rows(self.data.grid, img),
                region_pos=_rows(self.data.region_pos, img),
            )


def _wordpiece_vocab(data_dir: Path, opts: dict[str, Any]) -> Path:
    for cand in (opts.get("wordpiece_vocab"), Path(opts["bert_path"]) / "vocab.txt" if opts.get("bert_path") else None,
                 data_dir / "vocab.txt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    raise InputError("DSRAN-BERT needs a WordPiece vocab.txt: pass wordpiece_vocab, a bert_path with vocab.txt, or "
                     f"put vocab.txt in {data_dir}")


def _encode_captions(family: str, captions: list[str], data_dir: Path, opts: dict[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray, Path, int]:
    """``(tokens, lengths, vocabulary file, vocab size)`` with the family's tokenisation."""
    if family == "dsran-bert":
        from vsrt.text.wordpiece import WordPieceTokenizer

        vocab_path = _wordpiece_vocab(data_dir, opts)
        tok = WordPieceTokenizer(vocab_path)
        ids = tok.encode(captions)
        return ids, np.full(len(ids), ids.shape[1], np.int64), vocab_path, tok.vocab_size
    from vsrt.text.tokenize import encode_batch
    from vsrt.text.vocab import load_vocab

    vocab_path = next((data_dir / n for n in ("vocab.pkl", "vocab.json") if (data_dir / n).is_file()), None)
    if vocab_path is None:
        raise InputError(f"no vocabulary in {data_dir} (expected vocab.pkl or vocab.json)")
    vocab = load_vocab(vocab_path)
    tokens, lengths = encode_batch(captions, vocab)
    return tokens, lengths, vocab_path, len(vocab)


def train(
    family: str,
    data_dir: str | Path,
    output: str | Path,
    train_cfg: Any,
    model_opts: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    max_dev_images: int = 1000,
) -> dict[str, Any]:
    """Train ``dsran-gru`` or ``dsran-bert`` on ``data_dir`` (train split; model selection on dev) and save the
    original checkpoint layout at ``output``; returns the summary (also written to ``<output>.train.json``).

    ``model_opts``: ``embed_size``, ``K``, ``word_dim``, ``cnn_layers``, ``bert_path``, ``bert`` (config dict),
    ``wordpiece_vocab``; ``train_cfg.extra``: ``bert_path``, ``ft_bert``, ``resnet_path``.
    """
    from vsrt.training.trainer import fit

    if family not in ("dsran-gru", "dsran-bert"):
        raise InputError(f"vsrt.training.dsran trains dsran-gru / dsran-bert, not '{family}'")
    opts = dict(model_opts or {})
    if opts.get("bert_path"):
        train_cfg.extra.setdefault("bert_path", opts["bert_path"])
    d = Path(data_dir)
    tr, dv = read_split(d, "train"), read_split(d, "dev")
    n_dev = min(len(dv.regions), max_dev_images)
    tokens, lengths, vocab_path, vocab_size = _encode_captions(family, tr.captions, d, opts)
    dev_tokens, dev_lengths, _, _ = _encode_captions(family, dv.captions[: 5 * n_dev], d, opts)
    img_dim, num_regions = int(tr.regions.shape[2]), int(tr.regions.shape[1])
    opts["num_regions"] = num_regions
    default = default_config_bert if family == "dsran-bert" else default_config_gru
    cfg = default(vocab_size, img_dim, **opts)
    torch.manual_seed(train_cfg.seed)  # the initial weights too, whatever ran before in this process
    model = make_trainable(cfg, train_cfg)
    batches = DSRANBatches(tr, tokens, lengths, train_cfg.batch_size, train_cfg.seed, bert=family == "dsran-bert")

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a[:n_dev], np.float32)

    dev = (np.asarray(dv.regions[:n_dev], np.float32), dev_tokens, dev_lengths, cut(dv.grid), cut(dv.region_pos))
    result = fit(model, batches, dev, train_cfg, on_epoch, on_step)  # type: ignore[arg-type]
    summary: dict[str, Any] = {
        "family": family, "data": str(d), "config": cfg.to_dict(), "train": train_cfg.to_dict(),
        "grid_tokens": "from {split}_grid.npy" if tr.grid is not None else "derived from regions (no pixels)",
        "best_rsum": result.best_rsum, "best_epoch": result.best_epoch, "seconds": result.seconds,
        "steps": len(batches) * train_cfg.epochs, "history": result.history,
    }
    out = save_trained(model, cfg, train_cfg, output, d, vocab_path, summary)
    summary["output"] = str(out)
    summary["output_is_checkpoint"] = True
    atomic_write_json(Path(str(output) + ".train.json"), summary)
    return summary
