"""`vsrt export-triton`: every config.pbtxt parses with Triton's own ModelConfig schema and matches the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _retrieval_helpers import tiny_model_dir

from vsrt.errors import ManifestError
from vsrt.export.triton import export_triton
from vsrt.io import sha256_file
from vsrt.manifest import Manifest, Stage, TensorSpec

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (test extra) not installed")
from google.protobuf import text_format  # noqa: E402

DTYPES = {"float32": mc.TYPE_FP32, "int64": mc.TYPE_INT64, "int32": mc.TYPE_INT32, "float16": mc.TYPE_FP16}


def _parse(path: Path) -> object:
    cfg = mc.ModelConfig()
    text_format.Parse(path.read_text(), cfg)  # raises on any field Triton's schema does not have
    return cfg


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """The tiny two-stage model, plus a pair_scorer-like stage (unbatched) and fake engines for two GPUs."""
    import onnx
    from onnx import TensorProto, helper

    md = tiny_model_dir(tmp_path / "model")
    m = Manifest.load(md)
    pg = helper.make_graph(
        [helper.make_node("ReduceMean", ["region_features"], ["score"], axes=[1, 2], keepdims=0)],
        "pair", [helper.make_tensor_value_info("region_features", TensorProto.FLOAT, ["k", 36, 16]),
                 helper.make_tensor_value_info("word_features", TensorProto.FLOAT, [1, "words", 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["k"])])
    pm = helper.make_model(pg, opset_imports=[helper.make_opsetid("", 17)])
    pm.ir_version = 8
    onnx.save(pm, str(md / "onnx" / "pair_scorer.fp32.onnx"))
    m.set_stage(Stage("pair_scorer",
                      [TensorSpec("region_features", "float32", ["k", 36, 16], [1, 36, 16], [16, 36, 16],
                                  [256, 36, 16]),
                       TensorSpec("word_features", "float32", [1, "words", 16], [1, 1, 16], [1, 12, 16], [1, 64, 16])],
                      [TensorSpec("score", "float32", ["k"])]))
    m.add_file(md, "pair_scorer", "fp32", "onnx/pair_scorer.fp32.onnx")
    (md / "engines").mkdir()
    for sm, builder in (("86", "tensorrt"), ("89", "tensorrt"), ("120", "tensorrt_rtx")):
        f = md / "engines" / f"visual_fp32_trt10.3.0_sm{sm}.engine"
        f.write_bytes(f"fake engine for sm{sm}".encode())
        m.add_engine({"file": f"engines/{f.name}", "stage": "visual", "precision": "fp32", "builder": builder,
                      "trt_version": "10.3.0", "sm": sm, "sha256": sha256_file(f)})
    f = md / "engines" / "text_fp32_trt10.3.0_sm86.engine"
    f.write_bytes(b"text engine")
    m.add_engine({"file": f"engines/{f.name}", "stage": "text", "precision": "fp32", "builder": "tensorrt",
                  "trt_version": "10.3.0", "sm": "86", "sha256": sha256_file(f),
                  "io_dtypes": {"tokens": "int32", "lengths": "int32"}})
    m.save(md)
    return md


def test_configs_parse_and_match_the_manifest(model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    summary = export_triton(model_dir, repo)
    manifest = Manifest.load(model_dir)
    names = sorted(m["name"] for m in summary["models"])
    assert names == ["vsrn_pair_scorer_onnx", "vsrn_text_onnx", "vsrn_text_trt", "vsrn_visual_onnx", "vsrn_visual_trt"]
    for entry in summary["models"]:
        cfg = _parse(repo / entry["name"] / "config.pbtxt")
        st = manifest.stage(entry["stage"])
        assert cfg.name == entry["name"] and cfg.platform == entry["platform"]
        batched = entry["stage"] != "pair_scorer"
        assert cfg.max_batch_size == (st.inputs[0].max[0] if batched else 0)
        assert cfg.HasField("dynamic_batching") == batched
        for got, spec in zip([*cfg.input, *cfg.output], [*st.inputs, *st.outputs]):
            assert got.name == spec.name
            shape = spec.shape[1:] if batched else spec.shape
            want_dims = [d if isinstance(d, int) else -1 for d in shape]
            if batched and not want_dims:  # only the batch dim (lengths [batch]): [1] per item, reshaped to scalar
                assert list(got.dims) == [1] and got.HasField("reshape") and list(got.reshape.shape) == []
            else:
                assert list(got.dims) == want_dims and not got.HasField("reshape")
            assert len(got.dims) > 0  # Triton rejects a tensor without dims
            want = spec.dtype
            if entry["name"] == "vsrn_text_trt" and spec.name in ("tokens", "lengths"):
                want = "int32"  # the engine's own I/O types win
            assert got.data_type == DTYPES[want]
        for f in entry["files"]:
            assert (repo / entry["name"] / "1" / f).is_file()
    vis = _parse(repo / "vsrn_visual_trt" / "config.pbtxt")
    assert dict(vis.cc_model_filenames) == {"8.6": "model_sm86.plan", "8.9": "model_sm89.plan"}
    assert vis.default_model_filename == "model_sm86.plan"
    assert vis.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(vis.dynamic_batching.preferred_batch_size) == [8]
    assert (repo / "vsrn_visual_trt" / "1" / "model_sm89.plan").read_bytes() == b"fake engine for sm89"
    assert sha256_file(repo / "vsrn_visual_onnx" / "1" / "model.onnx") == manifest.stage("visual").files["fp32"].sha256
    skipped = json.loads((repo / "vsrt_triton.json").read_text())["skipped"]
    assert any("tensorrt_rtx" in s["reason"] for s in skipped)
    assert any(s["stage"] == "pair_scorer" and "no fp32 TensorRT engine" in s["reason"] for s in skipped)


def test_onnx_only_with_symlinks_and_errors(model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_triton(model_dir, repo, platforms=["onnxruntime_onnx"], stages=["text"], link="symlink",
                  onnx_instance_kind="KIND_CPU", max_queue_delay_us=500)
    cfg = _parse(repo / "vsrn_text_onnx" / "config.pbtxt")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert (repo / "vsrn_text_onnx" / "1" / "model.onnx").is_symlink()
    assert sorted(p.name for p in repo.iterdir()) == ["vsrn_text_onnx", "vsrt_triton.json"]
    with pytest.raises(ManifestError, match="no stage 'detector'"):
        export_triton(model_dir, tmp_path / "r2", stages=["detector"])
    (model_dir / "engines" / "visual_fp32_trt10.3.0_sm86.engine").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="checksum"):
        export_triton(model_dir, tmp_path / "r3", stages=["visual"])


def test_cli(model_dir: Path, tmp_path: Path) -> None:
    from vsrt.cli import main

    assert main(["export-triton", str(model_dir), "-o", str(tmp_path / "repo"), "--platform", "onnxruntime_onnx"]) == 0
    assert _parse(tmp_path / "repo" / "vsrn_visual_onnx" / "config.pbtxt").platform == "onnxruntime_onnx"
