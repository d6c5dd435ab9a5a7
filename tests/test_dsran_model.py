"""DSRAN modules: the per-caption text convention vs the original batch padding, variant-specific graph and fusion
names, normalisation details, the region encodings of the BERT variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_dsran_fixtures import small_config, small_modules

from vsrt.export.vsrn import random_captions, random_regions
from vsrt.models.dsran import DSRANConfig, DSRANVisual, l2norm
from vsrt.runtime.dsran import grid_from_regions, region_pos_from_boxes


@pytest.mark.parametrize("seed", range(3))
def test_per_caption_forward_equals_each_caption_alone(seed: int) -> None:
    cfg = small_config("gru")
    txt = small_modules(cfg, seed)["text"]
    tokens, lengths = random_captions(7, seed, cfg.vocab_size, 6 + 5 * seed)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(seed))  # unsorted lengths
    tokens, lengths = tokens[perm], lengths[perm]
    with torch.no_grad():
        masked = txt(tokens, lengths)
        alone = txt.forward_single(tokens, lengths)
        extra_pad = txt(torch.nn.functional.pad(tokens, (0, 9)), lengths)  # more padding changes nothing
    assert torch.allclose(masked, alone, atol=1e-6)
    assert torch.allclose(extra_pad, masked, atol=1e-6)


def test_original_batch_padding_changes_embeddings() -> None:
    """The original encodes captions padded to the batch's longest one, pads included in attention and mean: the
    same caption gets a different embedding in a batch with longer captions (what vsrt's convention removes)."""
    cfg = small_config("gru")
    txt = small_modules(cfg, 1)["text"]
    tokens, lengths = random_captions(16, 5, cfg.vocab_size, 24)
    with torch.no_grad():
        batch = txt.forward_batch_padded(tokens, lengths)
        alone = txt.forward_single(tokens, lengths)
    cos = (batch * alone).sum(1)
    full = lengths == lengths.max()
    assert torch.allclose(cos[full], torch.ones(int(full.sum())), atol=1e-6)  # no pads: identical
    assert float(cos[~full].min()) < 0.9999  # padded captions move


@pytest.mark.parametrize(("variant", "K", "jsr", "fusions"), [
    ("gru", 1, ["gat_cat_1"], []),
    ("gru", 2, ["gat_cat_1", "gat_cat_2"], ["fusion"]),
    ("gru", 4, ["gat_cat_1", "gat_cat_2", "gat_cat_3", "gat_cat_4"], ["fusion", "fusion2", "fusion3"]),
    ("bert", 2, ["gat_cat", "gat_cat_1"], ["fusion"]),
    ("bert", 4, ["gat_cat", "gat_cat_1", "gat_cat_2", "gat_cat_3"], ["fusion", "fusion_1", "fusion_2"]),
])
def test_graph_and_fusion_names(variant: str, K: int, jsr: list[str], fusions: list[str]) -> None:
    vis = DSRANVisual(small_config(variant, K=K))
    top = {k.split(".")[0] for k in vis.state_dict()}
    assert top == {"img_enc", "rcnn_enc", "gat_1", "gat_2", *jsr, *fusions}
    assert (vis.grid_graph, vis.region_graph) == (("gat_2", "gat_1") if variant == "gru" else ("gat_1", "gat_2"))


def test_k4_fusion_tree_order() -> None:
    """GRU: fusion3(fusion(c1, c2), fusion2(c3, c4)); BERT: fusion(fusion_1(c1, c2), fusion_2(c3, c4))."""
    torch.manual_seed(0)
    c = [torch.randn(2, 32) for _ in range(4)]
    gru = DSRANVisual(small_config("gru", K=4))
    bert = DSRANVisual(small_config("bert", K=4))
    with torch.no_grad():
        assert torch.equal(gru.fuse(c), gru.fusion3(gru.fusion(c[0], c[1]), gru.fusion2(c[2], c[3])))
        assert torch.equal(bert.fuse(c), bert.fusion(bert.fusion_1(c[0], c[1]), bert.fusion_2(c[2], c[3])))


def test_l2norm_eps_per_variant() -> None:
    z = torch.zeros(1, 4)
    assert torch.equal(l2norm(z, 1e-12), z)  # GRU: zero vectors (pads) stay zero
    assert torch.isnan(l2norm(z, 0.0)).all()  # BERT's l2norm has no eps, as model_bert.py


def test_bert_visual_uses_region_encodings() -> None:
    cfg = small_config("bert")
    vis = small_modules(cfg)["visual"]
    grid, reg = random_regions(2, 0, 49, 128), random_regions(2, 1, 10, 128)
    with torch.no_grad():
        a = vis(grid, reg, torch.zeros(2, 10, 1607))
        b = vis(grid, reg, torch.randn(2, 10, 1607))
    assert not torch.allclose(a, b, atol=1e-3)
    with pytest.raises(ValueError, match="needs region_pos"):
        vis(grid, reg)


def test_region_pos_matches_the_original_formula() -> None:
    rng = np.random.default_rng(0)
    x1, y1 = rng.uniform(0, 300, 100), rng.uniform(0, 200, 100)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 200, 100), y1 + rng.uniform(1, 150, 100)], 1).astype(np.float32)
    scores = rng.uniform(0.2, 1, 100).astype(np.float32)
    cls = rng.dirichlet(np.ones(1601), 100).astype(np.float32)
    got = region_pos_from_boxes(boxes, scores, cls)
    # data_bert.py get_rcnn, restated with torch
    pe = torch.from_numpy(np.concatenate([boxes, np.zeros((100, 1), np.float32), scores[:, None]], 1))
    w = torch.max(pe[:, [0, 2]]) * 1.0 + 1e-5
    h = torch.max(pe[:, [1, 3]]) * 1.0 + 1e-5
    pe[:, [0, 2]] /= w
    pe[:, [1, 3]] /= h
    area = ((pe[:, 3] - pe[:, 1]) * (pe[:, 2] - pe[:, 0])).clamp(0)
    pe = torch.cat((pe[:, :4], area.view(-1, 1), pe[:, 5:]), -1)
    ref = torch.cat((torch.nn.functional.layer_norm(pe, [6]), torch.nn.functional.layer_norm(torch.from_numpy(cls),
                                                                                              [1601])), -1)
    assert got.shape == (100, 1607) and np.allclose(got, ref.numpy(), atol=1e-5)


def test_grid_from_regions_is_deterministic_and_covers_regions() -> None:
    reg = np.arange(2 * 36 * 3, dtype=np.float32).reshape(2, 36, 3)
    g = grid_from_regions(reg)
    assert g.shape == (2, 49, 3) and np.array_equal(g[:, 0], reg[:, 0]) and np.array_equal(g[:, -1], reg[:, 35])
    assert {int(i) for i in (np.arange(49) * 36) // 49} == set(range(36))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="K"):
        DSRANConfig(vocab_size=5, K=3)
    with pytest.raises(ValueError, match="cnn_width"):
        DSRANConfig(vocab_size=5, img_dim=100)
    with pytest.raises(ValueError, match="vocab_size"):
        DSRANConfig(variant="gru")
    cfg = DSRANConfig(variant="bert", bert={"num_hidden_layers": 2})
    assert cfg.bert_config.hidden_size == 768 and DSRANConfig.from_dict(cfg.to_dict()) == cfg


def test_runtime_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, vsrt.runtime.dsran, vsrt.runtime.grid_preprocess, vsrt.text.wordpiece; "
            "from vsrt.runtime.grid_preprocess import preprocess_batch; import numpy as np; "
            "preprocess_batch([np.zeros((300, 240, 3), np.uint8)]); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)
