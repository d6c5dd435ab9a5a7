"""The user path of the non-VSRN families through the CLI: `vsrt train --family …` → `vsrt convert` → export →
`vsrt eval` (DSRAN routed through its two visual inputs, mutual-rank i2t re-ranking), and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _dsran_data import write_tiny_dsran_dataset
from safetensors.torch import save_file
from test_dsran_fixtures import TINY_BERT, write_wordpiece_vocab

from vsrt.cli import main
from vsrt.models.bert import BertConfig, BertModel


def _bert_dir(d: Path) -> Path:
    d.mkdir()
    torch.manual_seed(5)
    (d / "config.json").write_text(json.dumps({**TINY_BERT, "hidden_act": "gelu", "model_type": "bert"}))
    save_file({k: v.contiguous() for k, v in BertModel(BertConfig(**TINY_BERT)).state_dict().items()},
              str(d / "model.safetensors"))
    write_wordpiece_vocab(d / "vocab.txt", TINY_BERT["vocab_size"])
    return d


def test_dsran_bert_train_convert_export_eval(tmp_path: Path) -> None:
    from vsrt.export.model_export import export_model

    data = tmp_path / "data"
    data.mkdir()
    write_tiny_dsran_dataset(data, grid=True, bert=True)
    for split in ("test",):  # eval split = the dev data
        for suffix in ("ims", "grid", "region_pos"):
            (data / f"{split}_{suffix}.npy").write_bytes((data / f"dev_{suffix}.npy").read_bytes())
        (data / f"{split}_caps.txt").write_text((data / "dev_caps.txt").read_text())
    bert = _bert_dir(tmp_path / "bert")
    ckpt = tmp_path / "dsran-bert.pth.tar"
    assert main(["train", str(data), "-o", str(ckpt), "--family", "dsran-bert", "--bert-path", str(bert),
                 "--embed-size", "32", "--epochs", "1", "--batch-size", "16", "--warmup-epochs", "0",
                 "--K", "1"]) == 0
    assert "module.txt_enc.bert.embeddings.word_embeddings.weight" in torch.load(ckpt, weights_only=False)["model"]
    model = tmp_path / "model"
    # family detected; the WordPiece vocab.txt travels into the model directory
    assert main(["convert", str(ckpt), "--vocab", str(bert / "vocab.txt"), "-o", str(model)]) == 0
    conf = json.loads((model / "config.json").read_text())
    assert conf["family"] == "dsran-bert" and (model / "vocab.txt").is_file()
    export_model(model, stages=["visual", "text"])
    out = {}
    for backend in ("onnxruntime", "torch"):
        path = tmp_path / f"{backend}.json"
        assert main(["eval", str(model), "--data", str(data), "--backend", backend, "--rerank-i2t",
                     "--json", str(path)]) == 0
        out[backend] = json.loads(path.read_text())
    for res in out.values():
        assert res["images"] == 8 and res["captions"] == 40
        assert set(res["metrics_rerank_i2t"]) >= {"i2t_r1", "t2i_r1", "rsum"}
        assert res["metrics_rerank_i2t"]["t2i_r1"] == res["metrics"]["t2i_r1"]  # DSRAN re-ranks i2t only
    assert out["torch"]["metrics"] == out["onnxruntime"]["metrics"]


def test_train_option_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "train_ims.npy", np.zeros((1, 2, 4), np.float32))
    cases = [
        (["--family", "nope"], "unknown model family"),
        (["--family", "vsrpp", "--loss", "centre_weight=1"], "not a vsrpp loss option"),
        (["--family", "resg", "--loss", "pn_weight"], "KEY=NUMBER"),
        (["--family", "vsrn", "--bert-path", "x"], "DSRAN options"),
        (["--family", "dsran-gru", "--loss", "global_weight=1"], "DSRAN trains with its triplet loss"),
    ]
    for args, message in cases:
        assert main(["train", str(data), "-o", str(tmp_path / "out"), *args]) != 0
        assert message in capsys.readouterr().err
