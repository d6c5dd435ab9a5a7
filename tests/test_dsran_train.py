"""DSRAN training: the loss decreases for both variants, frozen/fine-tuned BERT, a local BERT directory, the
original checkpoint layouts written by training and read back by conversion, and ``train`` end to end on a tiny
precomputed dataset."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _dsran_data import write_tiny_dsran_dataset
from safetensors.torch import save_file
from test_dsran_fixtures import TINY_BERT, small_config, write_wordpiece_vocab

from vsrt.errors import InputError
from vsrt.export.dsran import random_wordpiece_ids
from vsrt.export.vsrn import random_captions, random_regions
from vsrt.models.bert import BertConfig, BertModel
from vsrt.models.registry import get_family, register_family_module
from vsrt.training.dsran import DSRANBatch, DSRANTrainable, save_trained


@dataclass
class TrainConfig:
    """The fields of ``vsrt.training.trainer.TrainConfig`` that DSRAN's trainable and saver read (the real class
    is used by the end-to-end tests)."""

    margin: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

register_family_module("dsran-gru", "vsrt.models.dsran_family")
register_family_module("dsran-bert", "vsrt.models.dsran_bert_family")


def _batch(cfg, n: int = 12, with_grid: bool = True) -> DSRANBatch:  # noqa: ANN001
    """``n`` distinct images, one caption each (duplicated images would put a floor of 2·n·margin under the
    hardest-negative loss)."""
    ids = torch.arange(n)
    regions = random_regions(n, 0, cfg.num_regions, cfg.img_dim)
    grid = random_regions(n, 1, 49, cfg.img_dim) if with_grid else None
    if cfg.variant == "gru":
        tokens, lengths = random_captions(n, 2, cfg.vocab_size, 9)
    else:
        tokens = random_wordpiece_ids(n, 2, TINY_BERT["vocab_size"])
        lengths = torch.full((n,), 32)
    pos = torch.randn(n, cfg.num_regions, 1607) if cfg.variant == "bert" else None
    return DSRANBatch(regions, tokens, lengths, ids, grid, pos)


@pytest.mark.parametrize(("variant", "with_grid", "ft_bert"), [("gru", True, False), ("gru", False, False),
                                                                ("bert", True, False), ("bert", True, True)])
def test_training_steps_reduce_the_loss(variant: str, with_grid: bool, ft_bert: bool) -> None:
    torch.manual_seed(0)
    cfg = small_config(variant)
    model = DSRANTrainable(cfg, ft_bert=ft_bert)
    n_bert = sum(p.numel() for p in model.text.parameters()) - sum(
        p.numel() for n, p in model.text.named_parameters() if not n.startswith("txt_enc.bert."))
    trained = sum(p.numel() for p in model.parameters())
    expected = sum(p.numel() for p in [*model.visual.parameters(), *model.text.parameters()])
    assert trained == (expected if ft_bert or variant == "gru" else expected - n_bert)
    batch = _batch(cfg, with_grid=with_grid)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train_mode(True)
    losses = []
    for _ in range(25):
        loss = model.loss(batch, max_violation=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    model.train_mode(False)
    with torch.no_grad():
        sims = model.similarities(batch.regions.numpy(), batch.tokens.numpy(), batch.lengths.numpy(),
                                  None if batch.grid is None else batch.grid.numpy(),
                                  None if batch.region_pos is None else batch.region_pos.numpy())
        im = model.encode_images(batch.regions, batch.grid, batch.region_pos)
        tx = model.encode_texts(batch.tokens, batch.lengths)
    assert sims.shape == (12, 12) and np.allclose(sims, (im @ tx.t()).numpy(), atol=1e-5)


def test_bert_weights_from_a_local_directory(tmp_path: Path) -> None:
    bcfg = BertConfig(**TINY_BERT)
    torch.manual_seed(5)
    src = BertModel(bcfg)
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**TINY_BERT, "hidden_act": "gelu", "model_type": "bert"}))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(d / "model.safetensors"))
    fam = get_family("dsran-bert")
    cfg = fam.default_config(0, 128, bert_path=str(d), embed_size=32, num_regions=10, cnn_layers=[1, 1, 1, 1])
    assert cfg.bert_config == bcfg
    model = fam.make_trainable(cfg, TrainConfig(extra={"bert_path": str(d)}))
    for k, v in src.state_dict().items():
        assert torch.equal(model.text.txt_enc.bert.state_dict()[k], v)
    with pytest.raises(InputError, match="does not match"):
        DSRANTrainable(small_config("bert", bert={**TINY_BERT, "num_hidden_layers": 1}), bert_path=d)


@pytest.mark.parametrize("variant", ["gru", "bert"])
def test_saved_checkpoint_has_the_original_layout_and_converts(tmp_path: Path, variant: str,
                                                               vocab_words: list[str]) -> None:
    from conftest import write_original_vocab

    from vsrt.models.convert import convert_checkpoint
    from vsrt.models.dsran_family import convert_bert_checkpoint
    from vsrt.models.weights import load_stage_weights

    torch.manual_seed(1)
    cfg = small_config(variant)
    model = DSRANTrainable(cfg)
    summary = {"best_epoch": 3, "best_rsum": 250.0, "steps": 40}
    out = save_trained(model, cfg, TrainConfig(extra={"ft_bert": True}), tmp_path / "model_best.pth.tar", tmp_path,
                       tmp_path / "vocab", summary)
    obj = torch.load(out, weights_only=False)
    assert obj["epoch"] == 3 and obj["Eiters"] == 40 and obj["opt"].K == cfg.K
    if variant == "gru":
        assert isinstance(obj["model"], list) and len(obj["model"]) == 1 and obj["opt"].vocab_size == 52
        md = convert_checkpoint(out, tmp_path / "md", write_original_vocab(tmp_path / "v.pkl", vocab_words),
                                options={"num_regions": 10})
    else:
        assert all(k.startswith("module.") for k in obj["model"]) and obj["opt"].ft_bert is True
        md = convert_bert_checkpoint(out, tmp_path / "md", write_wordpiece_vocab(tmp_path / "vocab.txt", 120),
                                     options={"bert_heads": 4, "num_regions": 10})
    from vsrt.models.dsran import build

    mods = {k: load_stage_weights(md, k, m) for k, m in build(cfg).items()}
    batch = _batch(cfg)
    model.train_mode(False)
    with torch.no_grad():
        assert torch.equal(model.encode_images(batch.regions, batch.grid, batch.region_pos),
                           mods["visual"](batch.grid, batch.regions, *([batch.region_pos] if batch.region_pos
                                                                        is not None else [])))


def test_train_bert_end_to_end(tmp_path: Path) -> None:
    from vsrt.training.dsran import train
    from vsrt.training.trainer import TrainConfig

    write_tiny_dsran_dataset(tmp_path, grid=True, bert=True)
    write_wordpiece_vocab(tmp_path / "vocab.txt", 120)
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, warmup_epochs=0, extra={"ft_bert": True})
    summary = train("dsran-bert", tmp_path, tmp_path / "out.pth.tar", cfg,
                    {"embed_size": 32, "cnn_layers": [1, 1, 1, 1], "bert": TINY_BERT})
    assert summary["best_epoch"] in (1, 2) and len(summary["history"]) == 2
    assert summary["grid_tokens"].startswith("from") and (tmp_path / "out.pth.tar.train.json").is_file()
    obj = torch.load(tmp_path / "out.pth.tar", weights_only=False)
    assert "module.txt_enc.bert.embeddings.word_embeddings.weight" in obj["model"]


def test_train_gru_end_to_end_without_pixels(tmp_path: Path, vocab_words: list[str]) -> None:
    from conftest import write_original_vocab

    from vsrt.training.dsran import train
    from vsrt.training.trainer import TrainConfig

    write_tiny_dsran_dataset(tmp_path, grid=False, bert=False)
    write_original_vocab(tmp_path / "vocab.pkl", vocab_words + ["number", "man", "horse", "ball", "snow"])
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, warmup_epochs=0)
    summary = train("dsran-gru", tmp_path, tmp_path / "out.pth.tar", cfg,
                    {"embed_size": 32, "word_dim": 16, "cnn_layers": [1, 1, 1, 1]})
    assert summary["grid_tokens"] == "derived from regions (no pixels)"
    assert isinstance(torch.load(tmp_path / "out.pth.tar", weights_only=False)["model"], list)
