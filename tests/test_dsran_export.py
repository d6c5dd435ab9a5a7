"""DSRAN export: torch ↔ ONNX Runtime parity of every stage (small, and full size), the model directory path
(convert → export → runtime) for both variants."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import write_original_vocab
from test_dsran_fixtures import original_checkpoint, small_config, small_modules, write_wordpiece_vocab

from vsrt.export.dsran import random_pixels, random_region_pos, stage_exports
from vsrt.export.onnx_export import export_stage
from vsrt.export.vsrn import random_regions
from vsrt.manifest import Manifest
from vsrt.models.dsran import DSRANConfig
from vsrt.models.registry import register_family_module

register_family_module("dsran-gru", "vsrt.models.dsran_family")
register_family_module("dsran-bert", "vsrt.models.dsran_bert_family")


def _export(cfg: DSRANConfig, mods: dict, tmp_path: Path, only: tuple[str, ...] = ()) -> tuple[Manifest, dict]:
    man = Manifest(f"dsran-{cfg.variant}")
    res = {se.name: export_stage(se, tmp_path, man) for se in stage_exports(cfg, mods) if not only or se.name in only}
    return man, res


@pytest.mark.parametrize(("variant", "K"), [("gru", 1), ("gru", 4), ("bert", 2), ("bert", 4)])
def test_small_export_parity(tmp_path: Path, variant: str, K: int) -> None:
    cfg = small_config(variant, K=K)
    man, res = _export(cfg, small_modules(cfg), tmp_path)
    for stage in ("grid", "visual", "text"):
        assert res[stage]["min_cosine"] >= 0.99999, (stage, res[stage])
        assert (tmp_path / man.stages[stage].files["fp32"].path).is_file()
    assert res["visual"]["max_abs_err"] < 1e-5 and res["text"]["max_abs_err"] < 1e-5
    names = [t.name for t in man.stages["visual"].inputs]
    assert names == (["grid", "regions", "region_pos"] if variant == "bert" else ["grid", "regions"])
    text_in = man.stages["text"].inputs
    assert [t.name for t in text_in] == (["input_ids"] if variant == "bert" else ["tokens", "lengths"])
    if variant == "bert":
        assert text_in[0].shape == ["batch", 32]
    else:
        assert man.stages["text"].info["rnn_nodes"][0]["direction"] == "forward"
    assert man.stages["grid"].inputs[0].shape == ["batch", 3, 224, 224]
    assert man.stages["grid"].outputs[0].shape == ["batch", 49, 128]


def test_gru_text_graph_is_independent_of_batch_padding(tmp_path: Path) -> None:
    """The exported per-caption convention: a caption's embedding does not change with the batch's padding."""
    from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

    cfg = small_config("gru")
    _export(cfg, small_modules(cfg), tmp_path, only=("text",))
    b = OrtBackend(tmp_path / "onnx" / "text.fp32.onnx")
    tokens = np.array([[1, 5, 6, 7, 2]], np.int64)
    alone = b.run({"tokens": tokens, "lengths": np.array([5])})["embedding"]
    padded = np.zeros((3, 30), np.int64)
    padded[0, :5] = tokens[0]
    padded[1, :30] = np.r_[1, np.arange(4, 32), 2]
    padded[2, :3] = [1, 9, 2]
    batch = b.run({"tokens": padded, "lengths": np.array([5, 30, 3])})["embedding"]
    assert np.allclose(batch[0], alone[0], atol=1e-6)


@pytest.mark.slow
def test_full_size_grid_parity(tmp_path: Path) -> None:
    """ResNet-152 at 224², random weights with non-trivial BatchNorm: ONNX Runtime vs PyTorch."""
    cfg = DSRANConfig(variant="gru", vocab_size=100)
    mods = small_modules(cfg)
    _, res = _export(cfg, mods, tmp_path, only=("grid",))
    r = res["grid"]
    assert r["min_cosine"] >= 0.99999, r
    with torch.no_grad():
        scale = float(mods["grid"](random_pixels(1, 1000)).abs().max())
    assert r["max_abs_err"] <= 1e-4 * scale, (r, scale)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gru", "bert"])
def test_full_size_visual_parity(tmp_path: Path, variant: str) -> None:
    """D=1024, 49 grid + 100 region tokens of 2048 (+1607-d box/class encodings for BERT), K=2."""
    cfg = DSRANConfig(variant=variant, vocab_size=100)
    _, res = _export(cfg, small_modules(cfg), tmp_path, only=("visual",))
    assert res["visual"]["min_cosine"] >= 0.99999 and res["visual"]["max_abs_err"] < 1e-5, res["visual"]


@pytest.mark.slow
def test_full_size_gru_text_parity(tmp_path: Path) -> None:
    """GRU 300→1024 + gat_cap, vocabulary of 11,755 words; reference = each caption alone, original code path."""
    cfg = DSRANConfig(variant="gru", vocab_size=11755)
    man, res = _export(cfg, small_modules(cfg), tmp_path, only=("text",))
    assert res["text"]["min_cosine"] >= 0.99999 and res["text"]["max_abs_err"] < 1e-5, res["text"]
    assert res["text"]["cases"] == 3 and man.stages["text"].info["rnn_nodes"][0]["hidden_size"] == 1024


@pytest.mark.slow
def test_full_size_bert_base_text_parity(tmp_path: Path) -> None:
    """BERT-base (12 layers, 768, 30,522 WordPiece ids; random weights) + fc + gat_cap at 32 tokens."""
    cfg = DSRANConfig(variant="bert")
    man, res = _export(cfg, small_modules(cfg), tmp_path, only=("text",))
    assert res["text"]["min_cosine"] >= 0.99999 and res["text"]["max_abs_err"] < 1e-5, res["text"]
    assert man.stages["text"].info["bert"]["num_hidden_layers"] == 12


def _png_images(tmp_path: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = (300 + 37 * i, 260 + 53 * i)
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (9, 9), 3)
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def _torch_image_embeddings(model_dir: Path, paths: list[Path], regions: np.ndarray, pos: np.ndarray | None
                            ) -> np.ndarray:
    from vsrt.export.model_export import load_torch_model
    from vsrt.models.resnet import grid_tokens
    from vsrt.runtime.grid_preprocess import preprocess_batch

    _, _, mods = load_torch_model(model_dir)
    with torch.no_grad():
        grid = grid_tokens(mods["grid"](torch.from_numpy(preprocess_batch(paths))))
        args = [grid, torch.from_numpy(regions)] + ([torch.from_numpy(pos)] if pos is not None else [])
        return mods["visual"](*args).numpy()


def test_gru_model_directory_end_to_end(tmp_path: Path, vocab_words: list[str]) -> None:
    """convert → export → runtime: images (grid stage on pixels) + regions, captions; equal to PyTorch."""
    from vsrt.export.model_export import export_model
    from vsrt.models.convert import convert_checkpoint
    from vsrt.runtime.dsran import dsran_similarity_matrix, encode_dsran_images, encode_dsran_texts
    from vsrt.runtime.model import RetrievalModel

    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt, _ = original_checkpoint(tmp_path / "m.pth.tar", small_config("gru"))
    md = convert_checkpoint(ckpt, tmp_path / "model", vocab, options={"num_regions": 10})
    res = export_model(md)
    assert set(res) == {"grid", "visual", "text"} and all(r["min_cosine"] >= 0.99999 for r in res.values())
    model = RetrievalModel(md, backend="onnxruntime")
    paths = _png_images(tmp_path, 3)
    regions = random_regions(3, 5, 10, 128).numpy()
    emb = encode_dsran_images(model, paths, regions, batch_size=2)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(emb, _torch_image_embeddings(md, paths, regions, None), atol=1e-5)
    # texts: the per-caption convention makes every caption's embedding independent of its batch
    from vsrt.export.model_export import load_torch_model
    from vsrt.export.vsrn import random_captions

    tokens, lengths = random_captions(6, 3, 52, 11)
    out = model.stage("text").run({"tokens": tokens.numpy(), "lengths": lengths.numpy()})["embedding"]
    _, _, mods = load_torch_model(md)
    with torch.no_grad():
        assert np.allclose(out, mods["text"].forward_single(tokens, lengths).numpy(), atol=1e-5)
    one = model.stage("text").run({"tokens": tokens[2:3, : int(lengths[2])].numpy(), "lengths": lengths[2:3].numpy()})
    assert np.allclose(one["embedding"][0], out[2], atol=1e-6)
    if importlib.util.find_spec("vsrt.text.tokenize") is not None:  # the original word tokenisation (VSRN's)
        caps = ["a dog on the beach .", "a red car", "the dog"]
        assert encode_dsran_texts(model, caps).shape == (3, 32)
        assert dsran_similarity_matrix(model, regions, caps).shape == (3, 3)


def test_bert_model_directory_end_to_end(tmp_path: Path) -> None:
    from vsrt.export.model_export import export_model, load_torch_model
    from vsrt.export.torch_backend import torch_backends
    from vsrt.models.dsran_family import convert_bert_checkpoint
    from vsrt.runtime.dsran import dsran_similarity_matrix, encode_dsran_images, encode_dsran_texts
    from vsrt.runtime.model import RetrievalModel
    from vsrt.text.wordpiece import WordPieceTokenizer

    ckpt, _ = original_checkpoint(tmp_path / "m.pth.tar", small_config("bert"))
    vocab = write_wordpiece_vocab(tmp_path / "vocab.txt", 120)
    md = convert_bert_checkpoint(ckpt, tmp_path / "model", vocab, options={"bert_heads": 4, "num_regions": 10})
    export_model(md)
    model = RetrievalModel(md, backend="onnxruntime")
    paths = _png_images(tmp_path, 2)
    regions = random_regions(2, 5, 10, 128).numpy()
    pos = random_region_pos(2, 6, 10, 1607).numpy()
    emb = encode_dsran_images(model, paths, regions, pos)
    assert np.allclose(emb, _torch_image_embeddings(md, paths, regions, pos), atol=1e-5)
    caps = ["a man riding a horse .", "unbelievably red car !", " ".join(["dog"] * 40)]
    t = encode_dsran_texts(model, caps)
    _, _, mods = load_torch_model(md)
    ids = WordPieceTokenizer(vocab).encode(caps)
    assert ids[2, -1] != 3 and ids[0, 0] == 2  # a 42-token row is cut at 32: no [SEP]; [CLS] first
    with torch.no_grad():
        ref = mods["text"](torch.from_numpy(ids)).numpy()
    assert np.allclose(t, ref, atol=1e-5)
    # eval path: ONNX Runtime and the PyTorch backend give the same score matrix
    sims = dsran_similarity_matrix(model, regions, caps, region_pos=pos)
    tmodel = RetrievalModel(md, backend="onnxruntime")
    tmodel.backends.update(torch_backends(str(md)))
    assert np.allclose(sims, dsran_similarity_matrix(tmodel, regions, caps, region_pos=pos), atol=1e-5)
    # a changed vocab.txt is refused
    (md / "vocab.txt").write_text((md / "vocab.txt").read_text() + "extra\n")
    from vsrt.errors import ManifestError

    with pytest.raises(ManifestError, match="changed after conversion"):
        encode_dsran_texts(RetrievalModel(md), caps)
    assert json.loads((md / "config.json").read_text())["tokenizer"]["type"] == "wordpiece"


def test_runtime_input_errors(tmp_path: Path) -> None:
    from vsrt.errors import InputError
    from vsrt.export.model_export import export_model
    from vsrt.models.dsran_family import convert_bert_checkpoint
    from vsrt.runtime.dsran import encode_dsran_regions
    from vsrt.runtime.model import RetrievalModel

    ckpt, _ = original_checkpoint(tmp_path / "m.pth.tar", small_config("bert"))
    md = convert_bert_checkpoint(ckpt, tmp_path / "model", write_wordpiece_vocab(tmp_path / "v.txt", 120),
                                 options={"bert_heads": 4, "num_regions": 10})
    export_model(md, stages=["visual"])
    model = RetrievalModel(md)
    grid, reg = random_regions(2, 0, 49, 128).numpy(), random_regions(2, 1, 10, 128).numpy()
    with pytest.raises(InputError, match="needs region_pos"):
        encode_dsran_regions(model, grid, reg)
    with pytest.raises(InputError, match=r"regions must have shape \[N, 10, 128\], got \[2, 36, 128\]"):
        encode_dsran_regions(model, grid, random_regions(2, 1, 36, 128).numpy())
    with pytest.raises(InputError, match=r"grid tokens must have shape \[2, 49, 128\]"):
        encode_dsran_regions(model, grid[:1], reg, np.zeros((2, 10, 1607), np.float32))
    bad = reg.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        encode_dsran_regions(model, grid, bad, np.zeros((2, 10, 1607), np.float32))
