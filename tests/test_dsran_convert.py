"""DSRAN original checkpoints (GRU: list with one state dict; BERT: DataParallel ``module.`` dict) → model
directories: layout detection, key/shape validation, full-size layouts on the meta device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import write_original_vocab
from safetensors.torch import load_file
from test_dsran_fixtures import TINY_BERT, original_checkpoint, small_config, write_wordpiece_vocab

from vsrt.errors import CheckpointError, InputError
from vsrt.manifest import Manifest
from vsrt.models.checkpoints import load_torch_checkpoint
from vsrt.models.convert import convert_checkpoint, detect_family
from vsrt.models.dsran import DSRANConfig, expected_original_shapes, split_original_state
from vsrt.models.dsran_family import config_from_state, convert_bert, convert_bert_checkpoint, convert_gru
from vsrt.models.registry import register_family_module
from vsrt.models.weights import load_stage_weights

register_family_module("dsran-gru", "vsrt.models.dsran_family")
register_family_module("dsran-bert", "vsrt.models.dsran_bert_family")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
@pytest.mark.parametrize("K", [1, 2, 4])
def test_gru_checkpoint_converts(tmp_path: Path, vocab_words: list[str], K: int, legacy: bool) -> None:
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt, sd = original_checkpoint(tmp_path / "model_best.pth.tar", small_config("gru", K=K), legacy=legacy)
    assert detect_family(load_torch_checkpoint(ckpt)).name == "dsran-gru"
    out = convert_checkpoint(ckpt, tmp_path / "model", vocab)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["family"] == "dsran-gru" and cfg["config"]["K"] == K and cfg["config"]["cnn_layers"] == [1, 1, 1, 1]
    assert cfg["config"]["vocab_size"] == len(vocab_words) + 4 and cfg["tokenizer"]["type"] == "word"
    stages = split_original_state(sd)
    for stage in ("grid", "visual", "text"):
        saved = load_file(str(out / "weights" / f"{stage}.safetensors"))
        assert set(saved) == set(stages[stage])
        assert all(torch.equal(saved[k], v) for k, v in stages[stage].items())
    assert "conv1.weight" in stages["grid"] and "fc.weight" in stages["grid"]  # torchvision names, fc kept
    m = Manifest.load(out)
    assert m.source["opt"]["K"] == K and m.source["epoch"] == 7 and not list(out.rglob("*.pth*"))


def test_bert_checkpoint_converts_with_its_wordpiece_vocab(tmp_path: Path) -> None:
    cfg = small_config("bert", K=4)
    ckpt, sd = original_checkpoint(tmp_path / "model_best.pth.tar", cfg)
    assert detect_family(load_torch_checkpoint(ckpt)).name == "dsran-bert"
    vocab = write_wordpiece_vocab(tmp_path / "vocab.txt", TINY_BERT["vocab_size"])
    out = convert_bert_checkpoint(ckpt, tmp_path / "model", vocab, options={"bert_heads": 4})
    info = json.loads((out / "config.json").read_text())
    assert info["family"] == "dsran-bert" and info["config"]["K"] == 4
    assert {k: info["config"]["bert"][k] for k in TINY_BERT} == TINY_BERT
    assert info["tokenizer"]["type"] == "wordpiece" and (out / "vocab.txt").read_bytes() == vocab.read_bytes()
    assert info["tokenizer"]["max_len"] == 32 and len(info["tokenizer"]["sha256"]) == 64
    text = load_file(str(out / "weights" / "text.safetensors"))
    assert torch.equal(text["txt_enc.bert.embeddings.word_embeddings.weight"],
                       sd["txt_enc.bert.embeddings.word_embeddings.weight"])
    assert "rcnn_enc.fc.weight" in load_file(str(out / "weights" / "visual.safetensors"))  # unused, kept
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]  # no build leftovers


def test_converted_weights_compute_what_the_original_modules_compute(tmp_path: Path, vocab_words: list[str]) -> None:
    from test_dsran_fixtures import small_modules

    from vsrt.export.dsran import random_pixels
    from vsrt.export.vsrn import random_captions, random_regions
    from vsrt.models.dsran import build

    cfg = small_config("gru")
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt, _ = original_checkpoint(tmp_path / "m.pth.tar", cfg, seed=3)
    out = convert_checkpoint(ckpt, tmp_path / "model", vocab, options={"num_regions": 10})
    ref = small_modules(cfg, seed=3)
    got = {k: load_stage_weights(out, k, m) for k, m in build(DSRANConfig.from_dict(
        json.loads((out / "config.json").read_text())["config"])).items()}
    px, grid, reg = random_pixels(2, 0), random_regions(2, 1, 49, 128), random_regions(2, 2, 10, 128)
    tokens, lengths = random_captions(3, 4, cfg.vocab_size, 7)
    with torch.no_grad():
        assert torch.equal(ref["grid"](px), got["grid"](px))
        assert torch.equal(ref["visual"](grid, reg), got["visual"](grid, reg))
        assert torch.equal(ref["text"](tokens, lengths), got["text"](tokens, lengths))


def test_bert_vocab_size_mismatch_is_clear(tmp_path: Path) -> None:
    ckpt, _ = original_checkpoint(tmp_path / "m.pth.tar", small_config("bert"))
    vocab = write_wordpiece_vocab(tmp_path / "vocab.txt", 100)
    with pytest.raises(CheckpointError, match=r"has 100 WordPiece tokens but the checkpoint's BERT embeds 120"):
        convert_bert_checkpoint(ckpt, tmp_path / "model", vocab, options={"bert_heads": 4})
    assert not (tmp_path / "model").exists()


def test_bert_layout_needs_dataparallel_prefixes(tmp_path: Path) -> None:
    ckpt, sd = original_checkpoint(tmp_path / "m.pth.tar", small_config("bert"))
    obj = torch.load(ckpt, weights_only=False)
    obj["model"]["txt_enc.fc.0.bias"] = obj["model"].pop("module.txt_enc.fc.0.bias")
    with pytest.raises(CheckpointError, match=r"must all start with 'module\.'.*'txt_enc\.fc\.0\.bias'"):
        convert_bert(obj, None, {"bert_heads": 4})
    with pytest.raises(CheckpointError, match="must be the DataParallel state dict"):
        convert_bert({"model": [sd]}, None, {})


def test_gru_errors_name_the_problem(tmp_path: Path, vocab_words: list[str]) -> None:
    cfg = small_config("gru")
    _, sd = original_checkpoint(tmp_path / "m.pth.tar", cfg)
    opt = argparse.Namespace(K=2)
    with pytest.raises(CheckpointError, match="must be a list"):
        convert_gru({"model": sd, "opt": opt}, None, {})
    bad = dict(sd)
    del bad["gat_cat_2.encoder.0.fc_out.weight"]
    bad["rcnn_enc.fc_image.bias"] = torch.zeros(7)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        convert_gru({"model": [bad], "opt": opt}, None, {})
    msg = str(e.value)
    assert "gat_cat_2.encoder.0.fc_out.weight" in msg and "extra.weight" in msg
    assert "rcnn_enc.fc_image.bias: checkpoint (7,) vs model (32,)" in msg
    with pytest.raises(CheckpointError, match=r"opt\.K=4 but its weights have 2 JSR graphs"):
        convert_gru({"model": [sd], "opt": argparse.Namespace(K=4)}, None, {})
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words[:-2])
    ckpt, _ = original_checkpoint(tmp_path / "m2.pth.tar", cfg)
    with pytest.raises(CheckpointError, match="vocabulary has 50 words but the checkpoint's embedding has 52 rows"):
        convert_checkpoint(ckpt, tmp_path / "model", vocab, family="dsran-gru")
    with pytest.raises(InputError, match="needs its vocabulary"):
        convert_checkpoint(ckpt, tmp_path / "model", None, family="dsran-gru")


def _meta_state(shapes: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_full_size_gru_layout_on_meta() -> None:
    """The released DSRAN-GRU layout (ResNet-152, D=1024, GRU 300→1024, K=2, COCO vocabulary of 11,755 words),
    checked key by key without allocating its 107 M parameters."""
    cfg = DSRANConfig(variant="gru", vocab_size=11755, K=2)
    shapes = expected_original_shapes(cfg)
    assert len([k for k in shapes if k.startswith("img_enc.cnn.")]) == 932  # torchvision resnet152 state dict
    assert shapes["img_enc.cnn.layer3.35.conv3.weight"] == (1024, 256, 1, 1)
    assert shapes["img_enc.cnn.layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert shapes["img_enc.cnn.fc.weight"] == (1000, 2048) and shapes["img_enc.fc.weight"] == (1024, 2048)
    assert shapes["txt_enc.rnn.weight_ih_l0"] == (3072, 300) and shapes["txt_enc.rnn.weight_hh_l0"] == (3072, 1024)
    assert shapes["txt_enc.embed.weight"] == (11755, 300) and shapes["rcnn_enc.fc_image.weight"] == (1024, 2048)
    gat = sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith("gat_1.") and "running" not in k
              and "num_batches" not in k)
    fusion = sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith("fusion."))
    assert (round(gat / 1e6, 2), round(fusion / 1e6, 2)) == (6.30, 4.20)
    assert {k.split(".")[0] for k in shapes} == {"img_enc", "rcnn_enc", "txt_enc", "gat_1", "gat_2", "gat_cap",
                                                  "gat_cat_1", "gat_cat_2", "fusion"}
    conv = convert_gru({"model": [_meta_state(shapes)], "opt": argparse.Namespace(K=2)}, None, {})
    assert conv.config == cfg
    assert sum(len(s) for s in conv.stage_states.values()) == len(shapes)


def test_full_size_bert_layout_on_meta() -> None:
    """The released DSRAN-BERT layout (bert-base-uncased, K=4) as a DataParallel dict, checked on meta."""
    cfg = DSRANConfig(variant="bert", K=4)
    shapes = expected_original_shapes(cfg)
    assert shapes["txt_enc.bert.embeddings.word_embeddings.weight"] == (30522, 768)
    assert shapes["txt_enc.bert.encoder.layer.11.intermediate.dense.weight"] == (3072, 768)
    assert shapes["txt_enc.fc.0.weight"] == (1024, 768) and shapes["rcnn_enc.fc_pos.0.weight"] == (1024, 1607)
    assert shapes["rcnn_enc.fc_image.2.weight"] == (1024, 2048) and shapes["rcnn_enc.fc.weight"] == (1024, 2048)
    assert {"gat_cat.encoder.0.mha.key.weight", "gat_cat_3.encoder.0.bn_out.running_var",
            "fusion_2.fusion1.bias"} <= set(shapes)
    bert_params = sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith("txt_enc.bert."))
    assert bert_params == 109_482_240  # bert-base-uncased BertModel
    ckpt = {"model": _meta_state(shapes, "module."), "opt": argparse.Namespace(K=4)}
    conv = convert_bert(ckpt, None, {})
    assert conv.config == cfg and conv.config.bert_config.num_attention_heads == 12
    small = {k[len("module."):]: v for k, v in ckpt["model"].items()}
    assert config_from_state(small, "bert", {"num_regions": 36}).num_regions == 36


def test_generic_convert_refuses_bert_without_wordpiece_vocab(tmp_path: Path) -> None:
    ckpt, _ = original_checkpoint(tmp_path / "m.pth.tar", small_config("bert"))
    with pytest.raises(InputError, match="needs its WordPiece vocab.txt"):
        convert_checkpoint(ckpt, tmp_path / "model")
    assert not (tmp_path / "model").exists()
