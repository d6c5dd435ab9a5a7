"""VSR++ training: losses decrease, options, evaluation scores equal the exported computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsrt.export.vsrn import random_captions, random_regions
from vsrt.models.registry import get_family, register_family_module
from vsrt.models.scan_attention import t2i_reference
from vsrt.models.vsrpp import VSRPPConfig
from vsrt.training.caption import CaptionDecoder
from vsrt.training.vsrpp import VSRPPTrainable

register_family_module("vsrpp", "vsrt.models.vsrpp_family")


def _cfg(**kw) -> VSRPPConfig:
    return VSRPPConfig(**{"vocab_size": 40, "img_dim": 32, "embed_size": 24, "word_dim": 12, **kw})


def _batch(cfg: VSRPPConfig, n: int = 12):
    from vsrt.training.batches import Batch

    ids = torch.arange(n) // 2
    images = random_regions(n // 2, 0, 36, cfg.img_dim)
    tokens, lengths = random_captions(n, 1, cfg.vocab_size, 9)
    return Batch(images[ids], tokens, lengths, ids)


@pytest.mark.parametrize("weights", [{}, {"local_weight": 1.0, "caption_weight": 1.0}])
def test_training_steps_reduce_the_loss(weights: dict) -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    model = VSRPPTrainable(cfg, **weights)
    if model.caption is not None:  # VSRN's decoder size (512 hidden, 300-d words) is needless here
        model.caption = CaptionDecoder(cfg.embed_size, cfg.vocab_size, hidden=16, word_dim=8)
    batch = _batch(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train_mode(True)
    losses = []
    for _ in range(30):
        loss = model.loss(batch, max_violation=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    expected = {"global", "fused"} | ({"local", "caption"} if weights else set())
    assert set(model.last_terms) == expected
    assert losses[-1] < 0.5 * losses[0], losses
    assert (model.caption is not None) == bool(weights)
    assert len(model.state()) == 2  # the caption decoder is training-only, not saved


def test_similarity_parts_equal_the_scan_computation() -> None:
    torch.manual_seed(1)
    cfg = _cfg(agg_func="LogSumExp", lambda_lse=5.0)
    model = VSRPPTrainable(cfg)
    model.train_mode(False)
    images = random_regions(5, 2, 36, cfg.img_dim).numpy()
    tokens, lengths = random_captions(7, 3, cfg.vocab_size, 10)
    with torch.no_grad():
        s_g, s_l = model.similarity_parts(images, tokens.numpy(), lengths.numpy(), img_chunk=2, cap_chunk=3)
        fused = model.similarities(images, tokens.numpy(), lengths.numpy())
        v, regions = model.img(torch.from_numpy(images))
        t, words = model.txt(tokens, lengths)
        ref_l = t2i_reference(regions.double(), words.double(), lengths, 9.0, 5.0, "LogSumExp").numpy()
    np.testing.assert_allclose(s_g, (v @ t.t()).numpy(), atol=1e-6)
    np.testing.assert_allclose(s_l, ref_l, atol=1e-5)
    np.testing.assert_allclose(fused, s_g + 2.0 * s_l, atol=1e-6)


def test_options_and_errors() -> None:
    from vsrt.training.trainer import TrainConfig

    fam = get_family("vsrpp")
    cfg = fam.default_config(40, 32, embed_size=16, word_dim=8, mu=1.0, agg_func="Mean", variant=None)
    assert (cfg.embed_size, cfg.mu, cfg.agg_func, cfg.variant) == (16, 1.0, "Mean", "coco")
    model = fam.make_trainable(cfg, TrainConfig(extra={"local_weight": 0.5, "caption_weight": 0.2}))
    assert model.weights["local"] == 0.5 and model.caption_weight == 0.2
    with pytest.raises(ValueError, match="unknown VSR"):
        fam.make_trainable(cfg, TrainConfig(extra={"lambda": 1}))
    with pytest.raises(ValueError, match="at least one"):
        VSRPPTrainable(cfg, global_weight=0, local_weight=0, fused_weight=0)


def test_caption_decoder_loss_is_masked() -> None:
    torch.manual_seed(0)
    dec = CaptionDecoder(feat_dim=8, vocab_size=20, hidden=16, word_dim=6, dropout=0.0).eval()
    feats = torch.randn(2, 36, 8)
    tokens, lengths = random_captions(2, 0, 20, 7)
    base = dec.loss(feats, tokens, lengths)
    padded = torch.cat([tokens, torch.zeros(2, 3, dtype=tokens.dtype)], 1)
    torch.testing.assert_close(dec.loss(feats, padded, lengths), base)  # padding never enters the loss
    assert base.item() == pytest.approx(np.log(20), rel=0.2)  # near-uniform predictions at init
