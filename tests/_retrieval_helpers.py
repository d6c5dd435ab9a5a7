"""Test helpers for galleries, search, profiling and Triton export: a tiny model directory made with the ONNX
helper API (no torch, no export code), fake encoders and random unit vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

WORDS = ["a", "dog", "on", "the", "beach", "red", "car", "cat", "sofa", "man", "riding", "bike"]


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _save(model: Any, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tiny_model_dir(root: Path, feat: int = 32, dim: int = 16, regions: int = 36, seed: int = 0,
                   family: str = "vsrn", pairwise: bool = False) -> Path:
    """A valid vsrt model directory: ``visual`` (regions [b, R, F] → mean → linear → L2 norm) and ``text``
    (tokens [b, T], lengths [b] → embedding-bag → L2 norm) ONNX stages, manifest, config.json, vocab.json.

    ``pairwise=True`` makes a VSR++-shaped model: the visual stage also outputs ``region_features`` [b, R, D], the
    text stage ``word_features`` [b, T, D], and a ``pair_scorer`` stage scores k images against one caption
    (mean region·word product)."""
    from onnx import TensorProto, helper, numpy_helper

    from vsrt.manifest import Manifest, Stage, TensorSpec
    from vsrt.modeldir import config_digest
    from vsrt.text.vocab import SPECIALS, Vocabulary

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    vocab = Vocabulary([*SPECIALS, *WORDS])
    vocab.save(root / "vocab.json")
    config = {"family": family, "config": {"embed_size": dim, "img_dim": feat, "seed": seed, "mu": 2.0},
              "tokenizer": {}}
    import json

    (root / "config.json").write_text(json.dumps(config, indent=2))
    opset = [helper.make_opsetid("", 17)]

    w = numpy_helper.from_array(rng.standard_normal((feat, dim)).astype(np.float32), "w")
    vis_out = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
    if pairwise:
        vis_out.append(helper.make_tensor_value_info("region_features", TensorProto.FLOAT, ["batch", regions, dim]))
    vis = helper.make_graph(
        [helper.make_node("MatMul", ["regions", "w"], ["region_features"]),
         helper.make_node("ReduceMean", ["region_features"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("LpNormalization", ["pooled"], ["embedding"], axis=1, p=2)],
        "visual",
        [helper.make_tensor_value_info("regions", TensorProto.FLOAT, ["batch", regions, feat])],
        vis_out,
        [w],
    )
    vm = helper.make_model(vis, opset_imports=opset)
    vm.ir_version = 8
    _save(vm, root / "onnx" / "visual.fp32.onnx")

    emb = numpy_helper.from_array(rng.standard_normal((len(vocab), dim)).astype(np.float32), "word_emb")
    txt = helper.make_graph(
        [helper.make_node("Gather", ["word_emb", "tokens"], ["words"], axis=0),
         helper.make_node("ReduceSum", ["words", "axes"], ["bag"], keepdims=0),
         helper.make_node("Cast", ["lengths"], ["len_f"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["len_f", "axes"], ["len_col"]),
         helper.make_node("Div", ["bag", "len_col"], ["mean"]),
         helper.make_node("LpNormalization", ["mean"], ["embedding"], axis=1, p=2)],
        "text",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
        + ([helper.make_tensor_value_info("words", TensorProto.FLOAT, ["batch", "seq", dim])] if pairwise else []),
        [emb, numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    if pairwise:  # expose the word features under the stage's output name
        txt.node.append(helper.make_node("Identity", ["words"], ["word_features"]))
        txt.output[1].name = "word_features"
    tm = helper.make_model(txt, opset_imports=opset)
    tm.ir_version = 8
    _save(tm, root / "onnx" / "text.fp32.onnx")

    m = Manifest(family=family, config_sha256=config_digest(config))
    m.set_stage(Stage("visual",
                      [TensorSpec("regions", "float32", ["batch", regions, feat], [1, regions, feat],
                                  [8, regions, feat], [32, regions, feat])],
                      [TensorSpec("embedding", "float32", ["batch", dim])]))
    m.set_stage(Stage("text",
                      [TensorSpec("tokens", "int64", ["batch", "seq"], [1, 2], [8, 12], [32, 64]),
                       TensorSpec("lengths", "int64", ["batch"], [1], [8], [32])],
                      [TensorSpec("embedding", "float32", ["batch", dim])]))
    if pairwise:
        m.stage("visual").outputs.append(TensorSpec("region_features", "float32", ["batch", regions, dim]))
        m.stage("text").outputs.append(TensorSpec("word_features", "float32", ["batch", "seq", dim]))
        pg = helper.make_graph(
            [helper.make_node("Squeeze", ["word_features", "axes0"], ["w2"]),
             helper.make_node("Transpose", ["w2"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["region_features", "wt"], ["rw"]),
             helper.make_node("ReduceMean", ["rw"], ["score"], axes=[1, 2], keepdims=0)],
            "pair_scorer",
            [helper.make_tensor_value_info("region_features", TensorProto.FLOAT, ["k", regions, dim]),
             helper.make_tensor_value_info("word_features", TensorProto.FLOAT, [1, "words", dim]),
             helper.make_tensor_value_info("lengths", TensorProto.INT64, [1])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["k"])],
            [numpy_helper.from_array(np.array([0], np.int64), "axes0")],
        )
        pm = helper.make_model(pg, opset_imports=opset)
        pm.ir_version = 8
        _save(pm, root / "onnx" / "pair_scorer.fp32.onnx")
        m.set_stage(Stage("pair_scorer",
                          [TensorSpec("region_features", "float32", ["k", regions, dim], [1, regions, dim],
                                      [16, regions, dim], [256, regions, dim]),
                           TensorSpec("word_features", "float32", [1, "words", dim], [1, 1, dim], [1, 12, dim],
                                      [1, 64, dim]),
                           TensorSpec("lengths", "int64", [1], [1], [1], [1])],
                          [TensorSpec("score", "float32", ["k"])]))
        m.add_file(root, "pair_scorer", "fp32", "onnx/pair_scorer.fp32.onnx")
    m.add_file(root, "visual", "fp32", "onnx/visual.fp32.onnx")
    m.add_file(root, "text", "fp32", "onnx/text.fp32.onnx")
    m.save(root)
    return root


class FakeManifest:
    def __init__(self, sha: str) -> None:
        self.config_sha256 = sha
        self.stages: dict[str, Any] = {}


class FakeModel:
    """Same surface as RetrievalModel for galleries: deterministic hash-seeded embeddings."""

    def __init__(self, dim: int = 16, family: str = "fake", sha: str = "f" * 64, model_dir: str = "/fake") -> None:
        self.embed_dim = dim
        self.family = family
        self.manifest = FakeManifest(sha)
        self.model_dir = Path(model_dir)
        self.calls = 0

    def _vec(self, seed_bytes: bytes) -> np.ndarray:
        import hashlib

        seed = int.from_bytes(hashlib.sha256(seed_bytes).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.embed_dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_regions(self, regions: np.ndarray, batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        return np.stack([self._vec(np.ascontiguousarray(r, np.float32).tobytes()) for r in regions])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self._vec(t.encode()) for t in texts])
