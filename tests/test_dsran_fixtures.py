"""Small DSRAN models and original-layout checkpoints built in the tests themselves (no downloads); imported by
the other DSRAN tests."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vsrt.models.dsran import DSRANConfig, build, join_stage_states

#: a tiny BERT (same architecture as BERT-base, small sizes)
TINY_BERT = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 40}


def small_config(variant: str = "gru", K: int = 2, vocab_size: int = 52, **kw) -> DSRANConfig:
    """A DSRAN with every part of the real one at small sizes (ResNet blocks [1,1,1,1], stem width 4 → 128-d
    grid features, D = 32, 10 regions)."""
    base = {"variant": variant, "vocab_size": vocab_size if variant == "gru" else 0, "embed_size": 32,
            "img_dim": 128, "word_dim": 16, "K": K, "num_regions": 10, "cnn_layers": [1, 1, 1, 1], "cnn_width": 4,
            "bert": dict(TINY_BERT) if variant == "bert" else None}
    base.update(kw)
    return DSRANConfig(**base)


def randomize_norms(modules: dict[str, torch.nn.Module], seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics everywhere (and small residual-branch scales in the ResNet)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules.values():
            for name, x in m.named_modules():
                if isinstance(x, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    n = x.num_features
                    lo, hi = (0.05, 0.2) if name.endswith("bn3") else (0.5, 1.5)
                    x.weight.copy_(torch.rand(n, generator=g) * (hi - lo) + lo)
                    x.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                    x.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                    x.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def small_modules(cfg: DSRANConfig, seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    mods = build(cfg)
    randomize_norms(mods, seed)
    for m in mods.values():
        m.eval()
    return mods


def original_opt(cfg: DSRANConfig) -> argparse.Namespace:
    """The ``opt`` an original run stores (the fields conversion reads, plus a few others)."""
    d = {"data_name": "f30k", "K": cfg.K, "embed_size": cfg.embed_size, "img_dim": cfg.img_dim, "batch_size": 128,
         "margin": 0.2, "feature_path": "data/x/", "region_bbox_file": "data/x.h5"}
    if cfg.variant == "gru":
        d.update(vocab_size=cfg.vocab_size, word_dim=cfg.word_dim, vocab_path="vocab", num_layers=1, finetune=False)
    else:
        d.update(bert_path="uncased_L-12_H-768_A-12/", bert_size=cfg.bert_config.hidden_size, ft_bert=True,
                 warmup=0.1, ft_res=False, l_train=100)
    return argparse.Namespace(**d)


def original_checkpoint(path: Path, cfg: DSRANConfig, seed: int = 0, legacy: bool = False) -> tuple[Path, dict]:
    """Write ``cfg``'s model in the original layout: GRU ``model=[DSRAN.state_dict()]``; BERT ``model`` =
    DataParallel dict with ``module.`` prefixes. Returns the path and the original (unprefixed) state dict."""
    mods = small_modules(cfg, seed)
    sd = join_stage_states({k: m.state_dict() for k, m in mods.items()})
    model = [sd] if cfg.variant == "gru" else {"module." + k: v for k, v in sd.items()}
    obj = {"epoch": 7, "model": model, "best_rsum": 432.1, "opt": original_opt(cfg), "Eiters": 1234}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path, sd


def write_wordpiece_vocab(path: Path, size: int) -> Path:
    """A BERT-style vocab.txt of ``size`` tokens: specials, letters, a few words and ``##`` pieces."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "on", "the", "beach", "man", "riding",
             "horse", ".", ",", "!", "un", "##believ", "##able", "##ly", "cafe", "red", "car"]
    words += [chr(c) for c in range(ord("b"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    words += [f"w{i}" for i in range(size - len(words))]
    path.write_text("\n".join(words[:size]) + "\n", encoding="utf-8")
    return path


def test_fixture_checkpoints_have_the_original_layouts(tmp_path: Path) -> None:
    gru, sd = original_checkpoint(tmp_path / "g.pth.tar", small_config("gru"))
    obj = torch.load(gru, weights_only=False)
    assert isinstance(obj["model"], list) and len(obj["model"]) == 1
    assert "img_enc.cnn.layer4.0.downsample.0.weight" in obj["model"][0]
    assert "gat_cat_2.encoder.0.mha.query.weight" in sd
    bert, sd = original_checkpoint(tmp_path / "b.pth.tar", small_config("bert", K=4))
    obj = torch.load(bert, weights_only=False)
    assert isinstance(obj["model"], dict) and all(k.startswith("module.") for k in obj["model"])
    assert "module.txt_enc.bert.encoder.layer.1.output.LayerNorm.weight" in obj["model"]
    assert {"module.fusion_1.gate0.weight", "module.gat_cat_3.encoder.0.fc_in.bias"} <= set(obj["model"])
