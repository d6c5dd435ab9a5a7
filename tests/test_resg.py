"""ReSG (reconstructed): graph encoders, losses, model-directory round trip, export parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_original_vocab

from vsrt.export.model_export import load_torch_model
from vsrt.export.onnx_export import export_stage
from vsrt.export.resg import stage_exports
from vsrt.export.vsrn import random_captions, random_regions
from vsrt.manifest import Manifest
from vsrt.models.common import l2norm
from vsrt.models.registry import get_family, register_family_module
from vsrt.models.resg import ReSGConfig, ReSGTextEncoder, build, window_prior
from vsrt.models.vsrn import contrastive_loss
from vsrt.training.losses import same_image_mask, triplet_loss
from vsrt.training.resg import ReSGTrainable, center_hinge_loss, pos_neg_margin_loss

register_family_module("resg", "vsrt.models.resg_family")


def _small(**kw) -> ReSGConfig:
    return ReSGConfig(**{"vocab_size": 60, "img_dim": 40, "embed_size": 32, "word_dim": 16, **kw})


def test_window_prior() -> None:
    p = window_prior(4, 1)[0]
    assert p.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]
    assert window_prior(3, 0).sum() == 0


def test_text_encoder_ignores_padding_and_normalises() -> None:
    torch.manual_seed(0)
    enc = ReSGTextEncoder(_small()).eval()
    tokens, lengths = random_captions(5, 2, 60, 12)
    with torch.no_grad():
        emb, nodes = enc(tokens, lengths)
        emb1, nodes1 = enc(tokens[2:3, : lengths[2]], lengths[2:3])
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    valid = torch.arange(12)[None] < lengths[:, None]
    assert torch.all(nodes[~valid] == 0)
    torch.testing.assert_close(emb[2:3], emb1, atol=1e-6, rtol=0)
    torch.testing.assert_close(nodes[2:3, : lengths[2]], nodes1, atol=1e-6, rtol=0)


def test_triplet_loss_matches_vsrn_and_masks_positives() -> None:
    torch.manual_seed(0)
    im, s = l2norm(torch.randn(6, 8)), l2norm(torch.randn(6, 8))
    for hard in (True, False):
        torch.testing.assert_close(triplet_loss(im @ s.t(), 0.2, hard), contrastive_loss(im, s, 0.2, hard))
    scores = torch.eye(3) * 0.5 + 0.1
    scores[0, 1] = 0.9  # caption 1 describes image 0 too: not a violation once masked
    ids = torch.tensor([0, 0, 2])
    assert triplet_loss(scores, 0.2, True) > 0
    masked = triplet_loss(scores, 0.2, True, positives=same_image_mask(ids))
    assert masked.item() == pytest.approx(0.0, abs=1e-6)


def test_center_and_pos_neg_losses() -> None:
    e = torch.eye(4)
    ids = torch.tensor([0, 1, 2, 3])
    assert center_hinge_loss(e, e, ids, 0.2).item() == 0.0  # each pair is its own (orthogonal) center
    assert center_hinge_loss(e, e.flip(0), ids, 0.2).item() > 0
    assert center_hinge_loss(e[:2], e[:2], torch.tensor([5, 5]), 0.2).item() == 0.0  # a single group
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    pos = same_image_mask(torch.tensor([0, 1]))
    assert pos_neg_margin_loss(scores, pos, 0.6, 0.3).item() == 0.0
    assert pos_neg_margin_loss(scores, pos, 0.85, 0.15).item() == pytest.approx(0.05 + 0.05 + 0.05)


def test_training_steps_reduce_the_loss() -> None:
    from vsrt.training.batches import Batch

    torch.manual_seed(0)
    cfg = _small()
    model = ReSGTrainable(cfg)
    ids = torch.arange(16) // 2
    images = random_regions(8, 0, 36, cfg.img_dim)
    tokens, lengths = random_captions(16, 1, cfg.vocab_size, 10)
    batch = Batch(images[ids], tokens, lengths, ids)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train_mode(True)
    losses = []
    for _ in range(30):
        loss = model.loss(batch, max_violation=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert set(model.last_terms) == {"triplet", "center", "pos_neg"}
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_trained_writes_a_model_dir(tmp_path: Path, vocab_words: list[str]) -> None:
    from vsrt.training.trainer import TrainConfig

    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    cfg = _small(vocab_size=len(vocab_words) + 4, graph_layers=1)
    fam = get_family("resg")
    model = fam.make_trainable(cfg, TrainConfig(extra={"center_weight": 0.1}))
    assert model.center_weight == 0.1
    with pytest.raises(ValueError, match="unknown ReSG training options"):
        fam.make_trainable(cfg, TrainConfig(extra={"centre": 1}))
    out = fam.save_trained(model, cfg, TrainConfig(), tmp_path / "resg", tmp_path, vocab,
                           {"best_rsum": 10.0, "best_epoch": 1})
    assert not fam.output_is_checkpoint
    assert json.loads((out / "config.json").read_text())["family"] == "resg"
    _, loaded, mods = load_torch_model(out)
    assert loaded == cfg
    x = random_regions(2, 0, 36, cfg.img_dim)
    model.train_mode(False)
    with torch.no_grad():
        torch.testing.assert_close(mods["visual"](x)[0], model.img(x)[0])


def _export(cfg: ReSGConfig, out: Path) -> tuple[Manifest, dict]:
    torch.manual_seed(0)
    mods = build(cfg)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters and window bias
        for m in mods.values():
            for name, p in m.named_parameters():
                if "norm" in name or "window_bias" in name:
                    p.uniform_(0.5, 1.5)
    for m in mods.values():
        m.eval()
    man = Manifest("resg")
    return man, {se.name: export_stage(se, out, man) for se in stage_exports(cfg, mods)}


def test_small_export_parity(tmp_path: Path) -> None:
    man, res = _export(_small(text_window=2), tmp_path)
    assert set(res) == {"visual", "text"}
    for stage, r in res.items():
        assert r["min_cosine"] >= 0.99999 and r["max_abs_err"] < 1e-4, (stage, r)
    assert [g["direction"] for g in man.stages["text"].info["rnn_nodes"]] == ["forward", "forward"]


@pytest.mark.slow
def test_default_size_parity(tmp_path: Path) -> None:
    """ReSG at its default size (D=1024, 36×2048 regions, 2 graph layers), ONNX Runtime vs PyTorch (packed Bi-GRU
    for the text reference)."""
    man, res = _export(ReSGConfig(vocab_size=2000), tmp_path)
    for stage in ("visual", "text"):
        assert res[stage]["min_cosine"] >= 0.99999, (stage, res[stage])
        assert res[stage]["per_output"]["embedding"]["min_cosine"] >= 0.99999
    assert man.stages["visual"].outputs[1].shape == ["batch", 36, 1024]
