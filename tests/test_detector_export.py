"""Detector export: both graphs (+ MaxRoiPool variant) with teacher-forced parity; tiny and full size; TensorRT-RTX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from vsrt.cli import main
from vsrt.io import sha256_file
from vsrt.manifest import Manifest

FORBIDDEN_OPS = {"NonMaxSuppression", "TopK"}


def _photo() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photograph")
    return np.ascontiguousarray(data.chelsea()[:, :, ::-1])  # RGB → BGR, 300×451 → resized 600×902


def _check_graphs(d: Path, m: Manifest) -> None:
    for stage, rel in (("backbone_rpn", "onnx/backbone_rpn.fp32.onnx"), ("roi_head", "onnx/roi_head.fp32.onnx")):
        sf = m.stages[stage].files["fp32"]
        assert sf.path == rel and sf.sha256 == sha256_file(d / rel)
        assert sf.parity["min_cosine"] >= 0.99999 and sf.parity["threshold"] == 0.99999
        ops = {n.op_type for n in onnx.load(str(d / rel), load_external_data=False).graph.node}
        assert not ops & (FORBIDDEN_OPS | {"MaxRoiPool", "RoiAlign"}), ops
    var = m.stages["roi_head"].files["fp32"].extra["variants"]["maxroipool"]
    assert var["path"] == "onnx/roi_head.fp32.maxroipool.onnx" and var["sha256"] == sha256_file(d / var["path"])
    assert var["parity"]["min_cosine"] >= 0.99999
    ops = {n.op_type for n in onnx.load(str(d / var["path"]), load_external_data=False).graph.node}
    assert "MaxRoiPool" in ops and not ops & FORBIDDEN_OPS
    bb, rh = m.stages["backbone_rpn"], m.stages["roi_head"]
    assert [t.name for t in bb.inputs] == ["image"]
    assert [t.name for t in bb.outputs] == ["res4", "rpn_prob", "rpn_delta"]
    assert [t.name for t in rh.inputs] == ["res4", "rois"] and [t.name for t in rh.outputs] == [
        "pool5",
        "cls_prob",
        "attr_prob",
    ]
    assert bb.inputs[0].shape == [1, 3, "height", "width"] and bb.inputs[0].min == [1, 3, 64, 64]
    assert "PyTorch res4" in rh.files["fp32"].parity["teacher_forcing"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny detector with random weights, converted and exported through the CLI (built once)."""
    d = tmp_path_factory.mktemp("tiny") / "det"
    assert main(["convert-detector", "--random-init", "--tiny", "--seed", "1", "-o", str(d)]) == 0
    assert main(["export", str(d)]) == 0
    return d


def test_tiny_export_and_parity(tiny_dir: Path) -> None:
    d = tiny_dir
    m = Manifest.load(d)
    _check_graphs(d, m)
    cfg = json.loads((d / "config.json").read_text())["detector"]
    rh = m.stages["roi_head"]
    assert rh.inputs[1].shape == [cfg["num_rois"], 4]
    assert rh.outputs[0].shape == [cfg["num_rois"], 32 * cfg["res2_width"]]
    assert m.stages["backbone_rpn"].inputs[0].max == [1, 3, 320, 320]
    parity = rh.files["fp32"].parity
    assert parity["image"].startswith("skimage") and parity["rois_valid"] >= 1


def test_tiny_end_to_end_runtime_matches_torch(tiny_dir: Path) -> None:
    """Runtime ``Detector`` (ONNX Runtime, both roi_head variants) vs the PyTorch model run through the same host
    stages: same boxes (IoU) and features (cosine)."""
    detector_mod = pytest.importorskip("vsrt.runtime.detector", reason="runtime detector (other half) not present")
    import torch

    from vsrt.export.detector import load_detector
    from vsrt.runtime.detector.preprocess import preprocess_image
    from vsrt.runtime.detector.proposals import propose
    from vsrt.runtime.detector.selection import select_boxes

    d = tiny_dir
    cfg, det = load_detector(d)
    img = _photo()
    blob, scale = preprocess_image(img, cfg)
    with torch.no_grad():
        res4, prob, delta = det.backbone_rpn()(torch.from_numpy(blob))
        rois, n_valid = propose(prob.numpy(), delta.numpy(), blob.shape[2:], scale, cfg)
        pool5, cls_prob, _ = det.roi_head()(res4, torch.from_numpy(rois))
    keep = select_boxes(rois, cls_prob.numpy(), n_valid, scale, cfg)
    ref_feats, ref_boxes = pool5.numpy()[keep], rois[keep] / scale
    m = Manifest.load(d)
    for roi_pool in ("standard", "maxroipool"):
        runtime = detector_mod.Detector.from_model_dir(d, m, "onnxruntime", "fp32", roi_pool=roi_pool)
        got = runtime.detect([img])[0]
        assert got.features.shape == ref_feats.shape and tuple(got.image_hw) == tuple(img.shape[:2])
        cos = (got.features * ref_feats).sum(1) / (
            np.linalg.norm(got.features, axis=1) * np.linalg.norm(ref_feats, axis=1)
        )
        assert cos.min() > 0.9999, (roi_pool, cos.min())
        x1 = np.maximum(got.boxes[:, 0], ref_boxes[:, 0])
        y1 = np.maximum(got.boxes[:, 1], ref_boxes[:, 1])
        x2 = np.minimum(got.boxes[:, 2], ref_boxes[:, 2])
        y2 = np.minimum(got.boxes[:, 3], ref_boxes[:, 3])
        inter = np.clip(x2 - x1 + 1, 0, None) * np.clip(y2 - y1 + 1, 0, None)
        area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # noqa: E731
        iou = inter / (area(got.boxes) + area(ref_boxes) - inter)
        assert iou.min() > 0.999, (roi_pool, iou.min())


# ------------------------------------------------------------------------------------------------ full size
@pytest.fixture(scope="module")
def full_dir(detector_full_dir: Path) -> Path:
    """ResNet-101 C4, R=300, random O(1) weights, exported with parity on a 600×902 photograph (built once per
    session in conftest.py, shared with tests/test_detector_precision.py)."""
    return detector_full_dir


@pytest.mark.slow
def test_full_size_parity_per_stage(full_dir: Path) -> None:
    m = Manifest.load(full_dir)
    _check_graphs(full_dir, m)
    rh = m.stages["roi_head"]
    assert rh.inputs[1].shape == [300, 4] and rh.outputs[0].shape == [300, 2048]
    assert rh.outputs[1].shape == [300, 1601] and rh.outputs[2].shape == [300, 401]
    assert m.stages["backbone_rpn"].inputs[0].opt == [1, 3, 600, 1000]
    assert rh.inputs[0].max == [1, 1024, 63, 63]
    for stage in ("backbone_rpn", "roi_head"):
        p = m.stages[stage].files["fp32"].parity
        assert p["input_hw"] == [600, 902] and p["image"].startswith("skimage.data.chelsea")
        assert p["min_cosine"] >= 0.99999, (stage, p)
    assert rh.files["fp32"].parity["rois_valid"] == 300  # the real proposal stage filled every row


@pytest.mark.slow
def test_full_size_weights_have_milvlg_shapes(full_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(full_dir / "weights" / "detector.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert shapes["backbone.stem.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["proposal_generator.rpn_head.conv.weight"] == (512, 1024, 3, 3)
    assert shapes["proposal_generator.rpn_head.objectness_logits.weight"] == (24, 512, 1, 1)
    assert shapes["proposal_generator.rpn_head.anchor_deltas.weight"] == (48, 512, 1, 1)
    assert shapes["roi_heads.res5.0.shortcut.weight"] == (2048, 1024, 1, 1)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (1601, 2048)
    assert shapes["roi_heads.box_predictor.bbox_pred.weight"] == (6404, 2048)
    assert shapes["roi_heads.box_predictor.cls_embed.weight"] == (1601, 256)
    assert shapes["roi_heads.box_predictor.attr_linear1.weight"] == (512, 2304)
    assert shapes["roi_heads.box_predictor.attr_linear2.weight"] == (401, 512)
    stages = ("res2", "res3", "res4")
    blocks = {s: len({k.split(".")[2] for k in shapes if k.startswith(f"backbone.{s}.")}) for s in stages}
    assert blocks == {"res2": 3, "res3": 4, "res4": 23}


@pytest.mark.slow
def test_full_size_graphs_build_with_tensorrt_rtx(full_dir: Path) -> None:
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip tensorrt-rtx-cu12, in the test extra) is needed")
    from vsrt.export.engine_build import BuildOptions, build_model

    opts = BuildOptions(builder="tensorrt_rtx", compute_capabilities=["86"], workspace_mib=2048)
    entries = build_model(full_dir, ["backbone_rpn", "roi_head"], opts)
    assert [e["stage"] for e in entries] == ["backbone_rpn", "roi_head"]
    for e in entries:
        assert e["precision"] == "fp32" and e["size_bytes"] > 50e6
        assert sha256_file(full_dir / e["file"]) == e["sha256"]
    prof = {e["stage"]: e["profile"] for e in entries}
    assert prof["backbone_rpn"]["image"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 600, 1000], "max": [1, 3, 1000, 1000]}
    assert prof["roi_head"]["rois"] == {"min": [300, 4], "opt": [300, 4], "max": [300, 4]}
