"""The runtime Detector (no torch): on small ONNX graphs built here with onnx.helper that have the contract's exact
I/O names and shapes, then end to end on the tiny exported detector when the torch side is available; also
``RetrievalModel.encode_images`` and the ``vsrt detect`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsrt.detector_config import DetectorConfig
from vsrt.io import atomic_write_json
from vsrt.manifest import Manifest, Stage, TensorSpec
from vsrt.modeldir import config_digest

onnx = pytest.importorskip("onnx", reason="building the test graphs needs the onnx package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSET = 17


def _init(name: str, arr: np.ndarray):  # noqa: ANN202
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def backbone_graph(cfg: DetectorConfig, seed: int = 0) -> onnx.ModelProto:
    """image [1,3,H,W] → res4 = ReLU(16×16 stride-16 conv), rpn_prob = sigmoid(fg - bg) (= the 2-way softmax's fg),
    rpn_delta = 0.1 · 1×1 conv."""
    rng = np.random.default_rng(seed)
    c4, a = cfg.res4_channels, cfg.num_anchors
    inits = [
        _init("w1", rng.standard_normal((c4, 3, 16, 16)) * 0.01),
        _init("b1", rng.standard_normal(c4) * 0.1),
        _init("wf", rng.standard_normal((a, c4, 1, 1))),
        _init("wb", rng.standard_normal((a, c4, 1, 1))),
        _init("wd", rng.standard_normal((4 * a, c4, 1, 1)) * 0.1),
        _init("k", np.array(0.1)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Relu", ["c1"], ["res4"]),
        helper.make_node("Conv", ["res4", "wf"], ["fg"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["res4", "wb"], ["bg"], kernel_shape=[1, 1]),
        helper.make_node("Sub", ["fg", "bg"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["rpn_prob"]),
        helper.make_node("Conv", ["res4", "wd"], ["d0"], kernel_shape=[1, 1]),
        helper.make_node("Mul", ["d0", "k"], ["rpn_delta"]),
    ]
    fd = lambda c: [1, c, "feat_h", "feat_w"]  # noqa: E731
    g = helper.make_graph(
        nodes,
        "backbone_rpn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [
            helper.make_tensor_value_info("res4", TensorProto.FLOAT, fd(c4)),
            helper.make_tensor_value_info("rpn_prob", TensorProto.FLOAT, fd(a)),
            helper.make_tensor_value_info("rpn_delta", TensorProto.FLOAT, fd(4 * a)),
        ],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def roi_head_graph(cfg: DetectorConfig, seed: int = 1, tag: str = "") -> onnx.ModelProto:
    """res4 + rois [R,4] → MaxRoiPool 2×2 at 1/16 → mean → pool5 = ReLU(linear), class / attribute softmaxes."""
    rng = np.random.default_rng(seed)
    c4, f, r = cfg.res4_channels, cfg.feature_dim, cfg.num_rois
    inits = [
        _init("zeros", np.zeros((r, 1))),
        _init("wp", rng.standard_normal((c4, f)) * 0.3),
        _init("wc", rng.standard_normal((f, cfg.num_classes)) * 2.0),
        _init("wa", rng.standard_normal((f, cfg.num_attributes))),
    ]
    nodes = [
        helper.make_node("Concat", ["zeros", "rois"], ["rois5"], axis=1),
        helper.make_node("MaxRoiPool", ["res4", "rois5"], ["pooled"], pooled_shape=[2, 2], spatial_scale=1 / 16),
        helper.make_node("ReduceMean", ["pooled"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "wp"], ["p0"]),
        helper.make_node("Relu", ["p0"], ["pool5"]),
        helper.make_node("MatMul", ["pool5", "wc"], ["cl"]),
        helper.make_node("Softmax", ["cl"], ["cls_prob"], axis=1),
        helper.make_node("MatMul", ["pool5", "wa"], ["al"]),
        helper.make_node("Softmax", ["al"], ["attr_prob"], axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "roi_head" + tag,
        [
            helper.make_tensor_value_info("res4", TensorProto.FLOAT, [1, c4, "feat_h", "feat_w"]),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, [r, 4]),
        ],
        [
            helper.make_tensor_value_info("pool5", TensorProto.FLOAT, [r, f]),
            helper.make_tensor_value_info("cls_prob", TensorProto.FLOAT, [r, cfg.num_classes]),
            helper.make_tensor_value_info("attr_prob", TensorProto.FLOAT, [r, cfg.num_attributes]),
        ],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def visual_graph(k: int, f: int, d: int = 8) -> onnx.ModelProto:
    """regions [N, K, F] → embedding = l2norm(mean_K(regions) · W)."""
    w = np.random.default_rng(5).standard_normal((f, d))
    nodes = [
        helper.make_node("ReduceMean", ["regions"], ["m"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["e"]),
        helper.make_node("LpNormalization", ["e"], ["embedding"], axis=1, p=2),
    ]
    g = helper.make_graph(
        nodes,
        "visual",
        [helper.make_tensor_value_info("regions", TensorProto.FLOAT, ["batch", k, f])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])],
        [_init("w", w)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def write_model_dir(root: Path, cfg: DetectorConfig, with_variant: bool = True, visual_k: int | None = None) -> Path:
    """A model directory with the detector's two stages (and optionally a visual stage taking K regions)."""
    (root / "onnx").mkdir(parents=True)
    onnx.save(backbone_graph(cfg), root / "onnx/backbone_rpn.fp32.onnx")
    onnx.save(roi_head_graph(cfg), root / "onnx/roi_head.fp32.onnx")
    raw = {"family": "vsrn" if visual_k else "detector", "config": {}, "detector": cfg.to_dict()}
    atomic_write_json(root / "config.json", raw)
    m = Manifest(family=raw["family"], config_sha256=config_digest(raw))
    c4, a, r = cfg.res4_channels, cfg.num_anchors, cfg.num_rois
    m.set_stage(
        Stage(
            "backbone_rpn",
            [TensorSpec("image", "float32", [1, 3, "height", "width"])],
            [
                TensorSpec("res4", "float32", [1, c4, "feat_h", "feat_w"]),
                TensorSpec("rpn_prob", "float32", [1, a, "feat_h", "feat_w"]),
                TensorSpec("rpn_delta", "float32", [1, 4 * a, "feat_h", "feat_w"]),
            ],
        )
    )
    m.set_stage(
        Stage(
            "roi_head",
            [TensorSpec("res4", "float32", [1, c4, "feat_h", "feat_w"]), TensorSpec("rois", "float32", [r, 4])],
            [
                TensorSpec("pool5", "float32", [r, cfg.feature_dim]),
                TensorSpec("cls_prob", "float32", [r, cfg.num_classes]),
                TensorSpec("attr_prob", "float32", [r, cfg.num_attributes]),
            ],
        )
    )
    m.add_file(root, "backbone_rpn", "fp32", "onnx/backbone_rpn.fp32.onnx")
    extra = {}
    if with_variant:
        from vsrt.io import sha256_file

        rel = "onnx/roi_head.fp32.maxroipool.onnx"
        onnx.save(roi_head_graph(cfg, tag="_maxroipool"), root / rel)
        extra["variants"] = {"maxroipool": {"path": rel, "sha256": sha256_file(root / rel)}}
    m.add_file(root, "roi_head", "fp32", "onnx/roi_head.fp32.onnx", **extra)
    if visual_k:
        onnx.save(visual_graph(visual_k, cfg.feature_dim), root / "onnx/visual.fp32.onnx")
        m.set_stage(
            Stage(
                "visual",
                [TensorSpec("regions", "float32", ["batch", visual_k, cfg.feature_dim])],
                [TensorSpec("embedding", "float32", ["batch", 8])],
            )
        )
        m.add_file(root, "visual", "fp32", "onnx/visual.fp32.onnx")
    m.save(root)
    return root


CFG = DetectorConfig.tiny()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("det") / "model", CFG, visual_k=6)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for h, w in [(240, 320), (300, 200), (97, 411)]:
        im = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 3)
        cv2.rectangle(im, (w // 4, h // 4), (w // 2, h // 2), (250, 30, 10), -1)
        out.append(im)
    return out


def reference_detect(model_dir: Path, image: np.ndarray, cfg: DetectorConfig) -> dict[str, np.ndarray]:
    """The pipeline written out with plain ONNX Runtime sessions and the host functions."""
    import onnxruntime as ort

    from vsrt.runtime.detector.preprocess import preprocess_image
    from vsrt.runtime.detector.proposals import propose
    from vsrt.runtime.detector.selection import select

    bb = ort.InferenceSession(str(model_dir / "onnx/backbone_rpn.fp32.onnx"), providers=["CPUExecutionProvider"])
    rh = ort.InferenceSession(str(model_dir / "onnx/roi_head.fp32.onnx"), providers=["CPUExecutionProvider"])
    blob, scale = preprocess_image(image, cfg)
    res4, prob, delta = bb.run(["res4", "rpn_prob", "rpn_delta"], {"image": blob})
    rois, n = propose(prob, delta, blob.shape[2:], scale, cfg)
    pool5, cls_prob, attr_prob = rh.run(["pool5", "cls_prob", "attr_prob"], {"res4": res4, "rois": rois})
    sel = select(rois, cls_prob, n, scale, cfg)
    return {
        "features": pool5[sel.keep],
        "boxes": rois[sel.keep] / np.float32(scale),
        "n": n,
        "cls_prob": cls_prob[sel.keep],
    }


def open_detector(model_dir: Path, **kw):  # noqa: ANN201
    from vsrt.modeldir import open_manifest
    from vsrt.runtime.detector import Detector

    return Detector.from_model_dir(model_dir, open_manifest(model_dir), "onnxruntime", "fp32", **kw)


def test_detector_matches_reference_pipeline(model_dir: Path, photos: list[np.ndarray]) -> None:
    det = open_detector(model_dir)
    assert det.roi_pool == "maxroipool"  # ORT CPU + variant present
    dets = det.detect(photos)
    assert set(det.last_timings) == {"preprocess", "backbone_rpn", "proposals", "roi_head", "selection"}
    assert all(v >= 0 for v in det.last_timings.values())
    for im, d in zip(photos, dets):
        ref = reference_detect(model_dir, im, CFG)
        assert ref["n"] > CFG.max_boxes
        assert CFG.min_boxes <= d.num_boxes <= CFG.max_boxes
        np.testing.assert_array_equal(d.features, ref["features"])
        np.testing.assert_array_equal(d.boxes, ref["boxes"])
        np.testing.assert_array_equal(d.cls_prob, ref["cls_prob"])
        assert d.features.dtype == np.float32 and d.features.shape == (d.num_boxes, CFG.feature_dim)
        assert d.image_hw == im.shape[:2]
        h, w = im.shape[:2]
        assert (d.boxes >= 0).all() and (d.boxes[:, 2] <= w).all() and (d.boxes[:, 3] <= h).all()
        assert (d.object_ids >= 1).all() and (d.object_ids < CFG.num_classes).all()
        np.testing.assert_array_equal(d.object_scores, d.cls_prob[np.arange(d.num_boxes), d.object_ids])
        assert (d.attribute_ids >= 1).all() and (d.attribute_scores > 0).all()
        json.dumps(d.to_json())


def test_standard_roi_head_binding_and_paths_agree(model_dir: Path, photos: list[np.ndarray], tmp_path: Path) -> None:
    base = open_detector(model_dir).detect(photos[:2], num_boxes=6)
    std = open_detector(model_dir, roi_pool="standard")
    assert std.roi_pool == "standard" and std.backends["roi_head"].path.name == "roi_head.fp32.onnx"
    bound = open_detector(model_dir, bind="always")  # IOBinding path (res4 as an OrtValue), here on the CPU
    assert bound._use_binding()
    paths = []
    for i, im in enumerate(photos[:2]):
        p = tmp_path / f"p{i}.png"
        cv2.imwrite(str(p), im)
        paths.append(p)
    for other in (std.detect(photos[:2], num_boxes=6), bound.detect(photos[:2], num_boxes=6), std.detect(paths, 6)):
        for a, b in zip(base, other):
            assert a.num_boxes == b.num_boxes == 6
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.boxes, b.boxes)
    assert std.detect(paths, 6)[0].source == str(paths[0])


def test_backends_are_swappable(model_dir: Path, photos: list[np.ndarray]) -> None:
    """Calibration replaces entries of ``Detector.backends`` to record the feeds; every run goes through them."""
    det = open_detector(model_dir)
    seen: dict[str, list[dict]] = {"backbone_rpn": [], "roi_head": []}

    class Recorder:
        def __init__(self, name: str, inner) -> None:  # noqa: ANN001
            self.name, self.inner = name, inner
            self.inputs, self.outputs = inner.inputs, inner.outputs

        def run(self, feeds):  # noqa: ANN001, ANN202
            seen[self.name].append({k: v.shape for k, v in feeds.items()})
            return self.inner.run(feeds)

    det.backends = {k: Recorder(k, v) for k, v in det.backends.items()}
    det.detect(photos[:1])
    assert seen["backbone_rpn"][0]["image"][:2] == (1, 3)
    assert seen["roi_head"][0]["rois"] == (CFG.num_rois, 4)


def test_missing_variant_and_bad_manifest(tmp_path: Path) -> None:
    from vsrt.errors import InputError, ManifestError

    d = write_model_dir(tmp_path / "m", CFG, with_variant=False)
    assert open_detector(d).roi_pool == "standard"
    with pytest.raises(ManifestError, match="maxroipool"):
        open_detector(d, roi_pool="maxroipool")
    with pytest.raises(InputError, match="roi_pool"):
        open_detector(d, roi_pool="fast")
    bad = write_model_dir(tmp_path / "bad", DetectorConfig.tiny(num_rois=32))
    raw = json.loads((bad / "config.json").read_text())
    raw["detector"]["num_rois"] = 16  # the graph takes 32
    atomic_write_json(bad / "config.json", raw)
    m = Manifest.load(bad)
    m.config_sha256 = config_digest(raw)
    m.save(bad)
    with pytest.raises(ManifestError, match="num_rois"):
        open_detector(bad)


def test_encode_images_through_retrieval_model(model_dir: Path, photos: list[np.ndarray]) -> None:
    from vsrt.runtime import open_model

    model = open_model(model_dir, backend="onnxruntime")
    emb = model.encode_images(photos)
    assert emb.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    dets = model.detector.detect(photos, num_boxes=model.num_regions)
    np.testing.assert_allclose(emb, model.encode_regions(np.stack([d.features for d in dets])), atol=1e-6)


def test_detect_cli(
    model_dir: Path, photos: list[np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(photos):
        cv2.imwrite(str(folder / f"{i}.jpg"), im)
    out, meta = tmp_path / "regions.npy", tmp_path / "boxes.json"
    code = (
        "import sys\nfrom vsrt.cli import main\nrc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'the runtime imported torch'\nsys.exit(rc)"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "detect",
            str(folder),
            "--model",
            str(model_dir),
            "-o",
            str(out),
            "--boxes",
            "7",
            "--boxes-json",
            str(meta),
            "--backend",
            "onnxruntime",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    feats = np.load(out)
    assert feats.shape == (3, 7, CFG.feature_dim) and feats.dtype == np.float32
    info = json.loads(meta.read_text())
    assert [i["num_boxes"] for i in info["images"]] == [7, 7, 7]
    assert info["images"][2]["image_h"] == 97 and len(info["images"][0]["boxes"]) == 7
    # variable K (min 4 – max 10): padded to 10 with zero rows, counts in the JSON (in-process from here on)
    from vsrt.cli import main

    out2 = tmp_path / "var.npy"
    assert (
        main(["detect", str(folder / "0.jpg"), "--model", str(model_dir), "-o", str(out2), "--boxes-json", str(meta)])
        == 0
    )
    k = json.loads(meta.read_text())["images"][0]["num_boxes"]
    v = np.load(out2)
    assert v.shape == (1, CFG.max_boxes, CFG.feature_dim) and not v[0, k:].any() and v[0, :k].any()
    # a bad image: one clear line, no traceback, nothing written
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    out3 = tmp_path / "never.npy"
    capsys.readouterr()
    assert main(["detect", str(folder / "1.jpg"), str(bad), "--model", str(model_dir), "-o", str(out3)]) == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "not an image" in err and "Traceback" not in err
    assert not out3.exists()
    assert main(["detect", str(tmp_path / "nope"), "--model", str(model_dir), "-o", str(out3)]) == 2
    assert main(["detect", str(folder), "--model", str(model_dir), "-o", str(out3), "--boxes", "0"]) == 2
    assert "--boxes" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- tiny model, end to end
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torch side's tiny detector (random weights), converted and exported in a subprocess (this process
    only runs the torch-free runtime)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("building the tiny detector needs torch (the export side); the runtime tests above ran without")
    out = tmp_path_factory.mktemp("tiny") / "model"
    code = (
        "import sys\nfrom vsrt.cli import main\n"
        f"rc = main(['convert-detector', '--tiny', '--random-init', '-o', {str(out)!r}])\n"
        f"sys.exit(rc or main(['export', {str(out)!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_tiny_detector_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data", reason="the photograph comes from scikit-image's data")
    photo = np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])  # RGB → BGR
    cfg = DetectorConfig.from_dict(json.loads((tiny_model / "config.json").read_text())["detector"])
    det = open_detector(tiny_model)
    assert det.roi_pool == "maxroipool"
    p = tmp_path / "astronaut.png"
    cv2.imwrite(str(p), photo)
    d_arr, d_path = det.detect([photo, p])
    ref = reference_detect(tiny_model, photo, cfg)
    assert ref["n"] >= cfg.min_boxes
    for d in (d_arr, d_path):
        assert cfg.min_boxes <= d.num_boxes <= cfg.max_boxes and d.image_hw == (512, 512)
        np.testing.assert_array_equal(d.features, ref["features"])
        np.testing.assert_array_equal(d.boxes, ref["boxes"])
        assert np.isfinite(d.features).all() and d.features.shape[1] == cfg.feature_dim
    # the TensorRT-parsable roi_head (RoIPool in standard ops) gives the same regions as the MaxRoiPool variant
    std = open_detector(tiny_model, roi_pool="standard").detect([photo])[0]
    np.testing.assert_array_equal(std.boxes, d_arr.boxes)
    np.testing.assert_array_equal(std.features, d_arr.features)  # both RoIPools are exact: bit-identical
    fixed = det.detect([photo], num_boxes=cfg.num_rois // 2)[0]
    assert fixed.num_boxes == cfg.num_rois // 2
