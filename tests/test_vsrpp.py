"""VSR++: modules, checkpoint layout (VSRN-like) → model directory, export parity of all three stages."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from conftest import original_vsrn_checkpoint, write_original_vocab

from vsrt.errors import CheckpointError
from vsrt.export.model_export import load_torch_model
from vsrt.export.onnx_export import export_stage
from vsrt.export.vsrn import random_captions, random_regions
from vsrt.export.vsrpp import stage_exports
from vsrt.manifest import Manifest
from vsrt.models.checkpoints import load_torch_checkpoint
from vsrt.models.convert import convert_checkpoint, detect_family
from vsrt.models.registry import get_family, register_family_module
from vsrt.models.vsrn import VSRNImageEncoder
from vsrt.models.vsrpp import VSRPPConfig, VSRPPImageEncoder, VSRPPTextEncoder, build
from vsrt.training.vsrn import save_original_checkpoint
from vsrt.training.vsrpp import VSRPPTrainable, original_opt

register_family_module("vsrpp", "vsrt.models.vsrpp_family")


def _randomize_bn(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)


def vsrpp_checkpoint(path: Path, cfg: VSRPPConfig, seed: int = 0, **opt_overrides) -> tuple[Path, VSRPPTrainable]:
    """A checkpoint in VSR++'s layout, written by the trainer's own save function."""
    torch.manual_seed(seed)
    model = VSRPPTrainable(cfg)
    _randomize_bn(model.img)
    opt = original_opt(cfg, {}, "data", "vocab")
    for k, v in opt_overrides.items():
        setattr(opt, k, v)
    save_original_checkpoint(path, model, opt, 3, 321.0, 50)  # type: ignore[arg-type]
    return path, model


def _small(**kw) -> VSRPPConfig:
    return VSRPPConfig(**{"vocab_size": 52, "img_dim": 40, "embed_size": 32, "word_dim": 16, **kw})


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="agg_func"):
        _small(agg_func="Max")
    with pytest.raises(ValueError, match="variant"):
        _small(variant="flickr")
    with pytest.raises(ValueError, match="positive"):
        _small(lambda_lse=0)
    cfg = _small(mu=1.5)
    assert VSRPPConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg


def test_image_encoder_is_vsrn_with_per_region_norm() -> None:
    cfg = _small()
    torch.manual_seed(0)
    enc = VSRPPImageEncoder(cfg).eval()
    _randomize_bn(enc)
    vsrn = VSRNImageEncoder(cfg.vsrn_config()).eval()
    vsrn.load_state_dict(enc.state_dict())  # identical parameter names
    x = random_regions(3, 0, 36, cfg.img_dim)
    with torch.no_grad():
        v, regions = enc(x)
        v_ref, gcn = vsrn(x)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(regions.norm(dim=2), torch.ones(3, 36))
    torch.testing.assert_close(regions, gcn / gcn.norm(dim=2, keepdim=True))


@pytest.mark.parametrize("bi_gru", [True, False])
def test_text_encoder_outputs(bi_gru: bool) -> None:
    cfg = _small(bi_gru=bi_gru)
    torch.manual_seed(0)
    enc = VSRPPTextEncoder(cfg).eval()
    assert ("rnn.weight_ih_l0_reverse" in enc.state_dict()) == bi_gru
    tokens, lengths = random_captions(6, 1, cfg.vocab_size, 11)
    with torch.no_grad():
        t, words = enc(tokens, lengths)
        # same caption alone, without padding: identical features (packing makes padding irrelevant)
        t1, w1 = enc(tokens[1:2, : lengths[1]], lengths[1:2])
    torch.testing.assert_close(t.norm(dim=1), torch.ones(6))
    valid = torch.arange(11)[None] < lengths[:, None]
    torch.testing.assert_close(words.norm(dim=2)[valid], torch.ones(int(valid.sum())))
    assert torch.all(words[~valid] == 0)
    torch.testing.assert_close(t[1:2], t1, atol=1e-6, rtol=0)
    torch.testing.assert_close(words[1:2, : lengths[1]], w1, atol=1e-6, rtol=0)


def test_checkpoint_layout_is_recognised_and_converts(tmp_path: Path, vocab_words: list[str]) -> None:
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    cfg = _small(vocab_size=len(vocab_words) + 4, variant="f30k", mu=1.5, lambda_lse=5.0, agg_func="Mean")
    ckpt_path, model = vsrpp_checkpoint(tmp_path / "vsrpp.pth.tar", cfg)
    ckpt = load_torch_checkpoint(ckpt_path)
    fam = get_family("vsrpp")
    assert fam.looks_like(ckpt)
    assert isinstance(ckpt["model"], list) and set(ckpt["model"][0]) == set(model.img.state_dict())
    assert ckpt["opt"].model == "vsrpp" and ckpt["opt"].bi_gru is True and ckpt["opt"].mu == 1.5
    vsrn_ckpt = load_torch_checkpoint(original_vsrn_checkpoint(tmp_path / "vsrn.pth.tar", len(vocab_words) + 4))
    assert not fam.looks_like(vsrn_ckpt)
    # detection without --family: VSR++ extends VSRN's layout, so VSRN must not claim it
    assert detect_family(ckpt).name == "vsrpp" and detect_family(vsrn_ckpt).name == "vsrn"

    out = convert_checkpoint(ckpt_path, tmp_path / "model", vocab)  # family detected
    conf = json.loads((out / "config.json").read_text())
    assert conf["family"] == "vsrpp"
    assert conf["config"]["variant"] == "f30k" and conf["config"]["mu"] == 1.5
    assert conf["config"]["agg_func"] == "Mean" and conf["config"]["lambda_lse"] == 5.0
    assert Manifest.load(out).source["best_rsum"] == 321.0
    _, loaded_cfg, mods = load_torch_model(out)
    assert loaded_cfg == cfg
    model.train_mode(False)
    x = random_regions(2, 3, 36, cfg.img_dim)
    tokens, lengths = random_captions(3, 4, cfg.vocab_size, 9)
    with torch.no_grad():
        for a, b in zip(mods["visual"](x), model.img(x)):
            torch.testing.assert_close(a, b)
        for a, b in zip(mods["text"](tokens, lengths), model.txt(tokens, lengths)):
            torch.testing.assert_close(a, b)


def test_checkpoint_errors_are_clear(tmp_path: Path, vocab_words: list[str]) -> None:
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    cfg = _small(vocab_size=len(vocab_words) + 4)
    path, _ = vsrpp_checkpoint(tmp_path / "a.pth.tar", cfg, bi_gru=False)
    with pytest.raises(CheckpointError, match="bi_gru"):
        convert_checkpoint(path, tmp_path / "m1", vocab, family="vsrpp")
    path, _ = vsrpp_checkpoint(tmp_path / "b.pth.tar", cfg, agg_func="Max")
    with pytest.raises(CheckpointError, match="agg_func"):
        convert_checkpoint(path, tmp_path / "m2", vocab, family="vsrpp")
    ckpt = torch.load(path, weights_only=False)
    del ckpt["model"][1]["rnn.bias_hh_l0_reverse"]
    ckpt["opt"].agg_func = "LogSumExp"
    torch.save(ckpt, tmp_path / "c.pth.tar")
    with pytest.raises(CheckpointError, match="rnn.bias_hh_l0_reverse"):
        convert_checkpoint(tmp_path / "c.pth.tar", tmp_path / "m3", vocab, family="vsrpp")
    small_vocab = write_original_vocab(tmp_path / "v2.pkl", vocab_words[:5])
    ckpt["model"][1]["rnn.bias_hh_l0_reverse"] = torch.zeros(3 * cfg.embed_size)
    torch.save(ckpt, tmp_path / "d.pth.tar")
    with pytest.raises(CheckpointError, match="vocabulary"):
        convert_checkpoint(tmp_path / "d.pth.tar", tmp_path / "m4", small_vocab, family="vsrpp")


def _export_all(cfg: VSRPPConfig, out: Path) -> tuple[Manifest, dict]:
    torch.manual_seed(0)
    mods = build(cfg)
    _randomize_bn(mods["visual"])
    for m in mods.values():
        m.eval()
    man = Manifest("vsrpp")
    return man, {se.name: export_stage(se, out, man) for se in stage_exports(cfg, mods)}


@pytest.mark.parametrize("variant,bi_gru,agg", [("coco", True, "LogSumExp"), ("f30k", False, "Mean")])
def test_small_export_parity(tmp_path: Path, variant: str, bi_gru: bool, agg: str) -> None:
    man, res = _export_all(_small(variant=variant, bi_gru=bi_gru, agg_func=agg), tmp_path)
    assert set(res) == {"visual", "text", "pair_scorer"}
    for stage, r in res.items():
        assert r["min_cosine"] >= 0.99999 and r["max_abs_err"] < 1e-4, (stage, r)
    dirs = [g["direction"] for g in man.stages["text"].info["rnn_nodes"]]
    assert dirs == (["forward", "forward"] if bi_gru else ["forward"])
    assert man.stages["pair_scorer"].inputs[1].shape == [1, "seq", 32]
    assert man.stages["pair_scorer"].info["agg_func"] == agg
    # the graph file keeps the caption batch static 1 and the image batch dynamic (after onnxslim)
    graph = onnx.load(str(tmp_path / man.stages["pair_scorer"].files["fp32"].path)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["word_features"][0] == 1 and dims["lengths"] == [1] and isinstance(dims["region_features"][0], str)


def test_pair_scorer_builds_with_tensorrt_rtx(tmp_path: Path) -> None:
    """Ahead-of-time TensorRT-RTX build of pair_scorer with the manifest's profile (k = 1..256, one caption)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu12 not installed")
    man, _ = _export_all(_small(), tmp_path)
    st = man.stages["pair_scorer"]
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((tmp_path / st.files["fp32"].path).read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for spec in st.inputs:
        profile.set_shape(spec.name, spec.min, spec.opt, spec.max)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


@pytest.mark.slow
def test_full_size_parity(tmp_path: Path) -> None:
    """D=2048, 36×2048 regions, 300-d words, random weights: ONNX Runtime vs the original-faithful PyTorch
    references (unfused Rs_GCN, packed Bi-GRU, SCAN's per-caption attention loop); pair_scorer at k = 8, 16, 32."""
    man, res = _export_all(VSRPPConfig(vocab_size=2000), tmp_path)
    for stage in ("visual", "text", "pair_scorer"):
        assert res[stage]["min_cosine"] >= 0.99999, (stage, res[stage])
    assert res["pair_scorer"]["max_abs_err"] < 1e-5
    assert res["visual"]["per_output"]["region_features"]["min_cosine"] >= 0.99999
    assert res["text"]["per_output"]["word_features"]["min_cosine"] >= 0.99999
    assert man.stages["text"].info["rnn_nodes"][0]["hidden_size"] == 2048
