"""VSRN export: packed vs unpacked text forward, variants, graph checks, full-size ONNX Runtime parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vsrt.errors import ParityError
from vsrt.export.onnx_export import check_rnn_nodes, export_stage
from vsrt.export.vsrn import random_captions, random_regions, stage_exports
from vsrt.manifest import Manifest
from vsrt.models.vsrn import VSRNConfig, VSRNImageEncoder, VSRNTextEncoder, build


@pytest.mark.parametrize("seed", range(5))
def test_unpacked_text_forward_equals_packed(seed: int) -> None:
    cfg = VSRNConfig(vocab_size=60, word_dim=16, embed_size=32)
    enc = VSRNTextEncoder(cfg).eval()
    tokens, lengths = random_captions(9, seed, cfg.vocab_size, seq=3 + 4 * seed)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed))  # unsorted lengths
    tokens, lengths = tokens[perm], lengths[perm]
    with torch.no_grad():
        emb, words = enc(tokens, lengths)
        ref = enc.forward_packed(tokens, lengths)
    assert torch.allclose(emb, ref, atol=1e-6, rtol=0)
    # word features are zero beyond each length and equal the GRU outputs within it
    mask = torch.arange(tokens.size(1))[None] >= lengths[:, None]
    assert torch.all(words[mask] == 0)
    assert torch.allclose(
        words[torch.arange(9), lengths - 1], enc.rnn(enc.embed(tokens))[0][torch.arange(9), lengths - 1]
    )


def test_region_axis_l2norm_quirk() -> None:
    """VSRN normalises fc outputs and GCN outputs over the REGION axis (dim 1), as the original does."""
    cfg = VSRNConfig(vocab_size=10, img_dim=12, embed_size=8)
    enc = VSRNImageEncoder(cfg).eval()
    with torch.no_grad():
        _, gcn = enc(random_regions(2, 0, 36, 12))
    assert torch.allclose(gcn.pow(2).sum(1), torch.ones(2, 8), atol=1e-5)
    assert not torch.allclose(gcn.pow(2).sum(2), torch.ones(2, 36), atol=1e-2)


def test_f30k_variant_differs_from_coco() -> None:
    torch.manual_seed(0)
    coco = VSRNImageEncoder(VSRNConfig(vocab_size=10, img_dim=12, embed_size=8, variant="coco")).eval()
    f30k = VSRNImageEncoder(VSRNConfig(vocab_size=10, img_dim=12, embed_size=8, variant="f30k")).eval()
    assert "bn.weight" in f30k.state_dict() and "bn.weight" not in coco.state_dict()
    with torch.no_grad():  # non-zero GCN residual branches (BN γ=0 at init makes every Rs_GCN the identity)
        for m in coco.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
    f30k.load_state_dict(coco.state_dict(), strict=False)
    x = random_regions(3, 1, 36, 12)
    with torch.no_grad():
        assert not torch.allclose(coco(x)[0], f30k(x)[0], atol=1e-3)


def _export_all(cfg: VSRNConfig, tmp_path: Path, randomize_bn: bool = True) -> tuple[Manifest, dict]:
    torch.manual_seed(0)
    mods = build(cfg)
    if randomize_bn:
        with torch.no_grad():
            for m in mods["visual"].modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.weight.uniform_(0.5, 1.5)
                    m.running_var.uniform_(0.5, 2.0)
    for m in mods.values():
        m.eval()
    man = Manifest("vsrn")
    res = {se.name: export_stage(se, tmp_path, man) for se in stage_exports(cfg, mods)}
    return man, res


@pytest.mark.parametrize("variant", ["coco", "f30k"])
def test_small_export_parity_both_variants(tmp_path: Path, variant: str) -> None:
    man, res = _export_all(VSRNConfig(vocab_size=80, img_dim=64, embed_size=48, variant=variant), tmp_path)
    for stage in ("visual", "text"):
        assert res[stage]["min_cosine"] >= 0.99999 and res[stage]["max_abs_err"] < 1e-4
        f = man.stages[stage].files["fp32"]
        assert (tmp_path / f.path).is_file() and len(f.sha256) == 64
    assert man.stages["text"].inputs[0].shape == ["batch", "seq"]
    assert man.stages["text"].info["rnn_nodes"][0]["direction"] == "forward"


@pytest.mark.slow
def test_full_size_parity(tmp_path: Path) -> None:
    """Full-size VSRN (D=2048, 36×2048 regions, 300-d words), random weights: ONNX Runtime vs PyTorch."""
    man, res = _export_all(VSRNConfig(vocab_size=2000), tmp_path)
    assert res["visual"]["min_cosine"] >= 0.99999, res["visual"]
    assert res["text"]["min_cosine"] >= 0.99999, res["text"]
    assert res["visual"]["per_output"]["region_features"]["min_cosine"] >= 0.99999
    assert man.stages["visual"].info["rnn_nodes"][0]["hidden_size"] == 2048
    assert res["text"]["cases"] == 3


def test_export_refuses_bad_parity(tmp_path: Path) -> None:
    cfg = VSRNConfig(vocab_size=30, img_dim=16, embed_size=8)
    mods = build(cfg)
    se = stage_exports(cfg, {k: m.eval() for k, m in mods.items()})[1]
    se.reference = lambda tokens, lengths: (torch.ones(tokens.size(0), 8) / 8**0.5, None)  # wrong reference
    man = Manifest("vsrn")
    with pytest.raises(ParityError, match="export refused"):
        export_stage(se, tmp_path, man)
    assert not (tmp_path / "onnx" / "text.fp32.onnx").exists()
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == []


def test_gru_attribute_check_catches_linear_before_reset_0(tmp_path: Path) -> None:
    cfg = VSRNConfig(vocab_size=30, img_dim=16, embed_size=8)
    man, _ = _export_all(cfg, tmp_path, randomize_bn=False)
    model = onnx.load(str(tmp_path / "onnx" / "text.fp32.onnx"))
    assert check_rnn_nodes(model)[0]["hidden_size"] == 8
    for node in model.graph.node:
        if node.op_type == "GRU":
            for a in node.attribute:
                if a.name == "linear_before_reset":
                    a.i = 0
    with pytest.raises(ParityError, match="linear_before_reset=0"):
        check_rnn_nodes(model)


def test_exported_graph_accepts_any_batch_and_length(tmp_path: Path) -> None:
    from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

    cfg = VSRNConfig(vocab_size=30, img_dim=16, embed_size=8)
    _export_all(cfg, tmp_path)
    b = OrtBackend(tmp_path / "onnx" / "text.fp32.onnx")
    for batch, seq in [(1, 2), (3, 50), (17, 9)]:
        tokens, lengths = random_captions(batch, seq, cfg.vocab_size, seq)
        out = b.run({"tokens": tokens.numpy(), "lengths": lengths.numpy()})
        assert out["embedding"].shape == (batch, 8) and out["word_features"].shape == (batch, seq, 8)
        assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-5)
