"""The PyTorch BUTD detector: Caffe anchors, exact RoIPool (three ways + ONNX Runtime), checkpoint loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

from vsrt.cli import main
from vsrt.detector_config import DetectorConfig
from vsrt.errors import CheckpointError, InputError, UnsafePickleError
from vsrt.models.detector import (
    BUADetector,
    build_detector,
    config_anchors,
    generate_anchors,
    roi_pool_loop,
    roi_pool_maxroipool,
    roi_pool_sparse,
    table_levels,
)
from vsrt.models.detector.roi_pool import feature_size
from vsrt.models.detector_checkpoint import ANCHOR_PREFIX, clean_state_dict, load_butd_checkpoint

#: py-faster-rcnn generate_anchors(base 16, ratios 0.5/1/2, scales 4/8/16/32), as printed by the original code
CAFFE_ANCHORS = np.array(
    [
        [-38, -16, 53, 31],
        [-84, -40, 99, 55],
        [-176, -88, 191, 103],
        [-360, -184, 375, 199],
        [-24, -24, 39, 39],
        [-56, -56, 71, 71],
        [-120, -120, 135, 135],
        [-248, -248, 263, 263],
        [-14, -36, 29, 51],
        [-36, -80, 51, 95],
        [-80, -168, 95, 183],
        [-168, -344, 183, 359],
    ],
    dtype=np.float32,
)


def test_anchors_equal_the_caffe_table() -> None:
    assert np.array_equal(generate_anchors(), CAFFE_ANCHORS)
    assert np.array_equal(config_anchors(DetectorConfig()), CAFFE_ANCHORS)
    widths = CAFFE_ANCHORS[:, 2] - CAFFE_ANCHORS[:, 0] + 1
    assert widths.tolist() == [92, 184, 368, 736, 64, 128, 256, 512, 44, 88, 176, 352]
    try:
        from vsrt.runtime.detector.anchors import caffe_anchors
    except ImportError:
        return
    assert np.array_equal(np.asarray(caffe_anchors(DetectorConfig()), np.float32), CAFFE_ANCHORS)


def test_feature_size_and_levels() -> None:
    assert [feature_size(v) for v in (600, 1000, 900, 64)] == [38, 63, 57, 4]
    assert table_levels(1000) == 3  # bins of in-image RoIs span ≤ 6 cells


def _rois(h: int, w: int, n: int, seed: int) -> torch.Tensor:
    """In-image RoIs (resized-image pixels) with the awkward cases: points, single cells, the whole image, .5 edges."""
    g = torch.Generator().manual_seed(seed)
    hh, ww = 16 * h, 16 * w
    x1 = torch.rand(n, generator=g) * (ww - 1)
    y1 = torch.rand(n, generator=g) * (hh - 1)
    x2 = x1 + torch.rand(n, generator=g) * (ww - 1 - x1)
    y2 = y1 + torch.rand(n, generator=g) * (hh - 1 - y1)
    rois = torch.stack([x1, y1, x2, y2], 1)
    special = torch.tensor(
        [
            [0, 0, 0, 0],
            [8, 8, 8, 8],
            [7.999, 8.0, 24.0, 23.999],
            [0, 0, ww - 1, hh - 1],
            [ww - 1, hh - 1, ww - 1, hh - 1],
            [24, 40, 23, 39],
            [8.0, 56.0, 40.0, 56.0],
            [100.5, 0, 500.25, 5],
        ],
        dtype=torch.float32,
    )
    return torch.cat([special, rois]).clamp(min=0)


class _Pool(torch.nn.Module):
    def __init__(self, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn

    def forward(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return self.fn(feats, rois, 14, 1.0 / 16, 3)


def test_roi_pool_exact_everywhere(tmp_path: Path) -> None:
    """Sparse table (torch and ONNX Runtime) == MaxRoiPool (torch and ONNX Runtime) == the Caffe loop, bitwise."""
    import onnxruntime as ort

    shapes = [(38, 63), (63, 38), (24, 63)]  # 600×1000, 1000×600, 375×1000 images
    sessions = {}
    for name, fn in (("sparse", roi_pool_sparse), ("max", roi_pool_maxroipool)):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(
            _Pool(fn),
            (torch.zeros(1, 6, 38, 63), _rois(38, 63, 48, 0)),
            str(path),
            input_names=["res4", "rois"],
            output_names=["pooled"],
            dynamic_axes={"res4": {2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
        onnx.checker.check_model(str(path))
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ("MaxRoiPool" in ops) == (name == "max")
        sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in shapes:
        g = torch.Generator().manual_seed(h * 100 + w)
        feats = torch.randn(1, 6, h, w, generator=g)  # signed values: empty bins (0) and maxima < 0 both matter
        rois = _rois(h, w, 48, seed=w)
        loop = roi_pool_loop(feats.numpy(), rois.numpy())
        assert (loop == 0).any() and (loop < 0).any()  # the awkward cases are exercised
        assert np.array_equal(roi_pool_sparse(feats, rois, 14, 1.0 / 16, 3).numpy(), loop)
        assert np.array_equal(roi_pool_maxroipool(feats, rois, 14, 1.0 / 16, 3).numpy(), loop)
        for name, sess in sessions.items():
            got = sess.run(None, {"res4": feats.numpy(), "rois": rois.numpy()})[0]
            assert np.array_equal(got, loop), (name, h, w)


def test_roi_pool_equals_torchvision() -> None:
    tv = pytest.importorskip("torchvision.ops", reason="torchvision is not installed (optional, not a dependency)")
    feats = torch.randn(1, 6, 38, 63, generator=torch.Generator().manual_seed(1))
    rois = _rois(38, 63, 48, seed=2)
    ref = tv.roi_pool(feats, [rois], output_size=14, spatial_scale=1.0 / 16).numpy()
    assert np.array_equal(roi_pool_sparse(feats, rois, 14, 1.0 / 16, 3).numpy(), ref)


def test_module_names_follow_milvlg() -> None:
    keys = BUADetector(DetectorConfig.tiny()).state_dict().keys()
    for k in (
        "backbone.stem.conv1.weight",
        "backbone.stem.conv1.norm.running_var",
        "backbone.res2.0.shortcut.weight",
        "backbone.res4.0.conv1.norm.weight",
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.objectness_logits.bias",
        "proposal_generator.rpn_head.anchor_deltas.weight",
        "roi_heads.res5.0.conv2.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_embed.weight",
        "roi_heads.box_predictor.attr_linear1.weight",
        "roi_heads.box_predictor.attr_linear2.bias",
    ):
        assert k in keys, k
    det = BUADetector(DetectorConfig.tiny())  # full-size shapes: tests/test_detector_export.py
    c2 = det.roi_heads.res5[0].conv2
    assert (c2.stride, c2.dilation, c2.padding) == ((1, 1), (2, 2), (2, 2))
    assert det.backbone.res3[0].conv1.stride == (2, 2) and det.backbone.res3[0].conv2.stride == (1, 1)


def test_random_init_keeps_activations_order_one() -> None:
    cfg = DetectorConfig.tiny(blocks=[3, 4, 6, 3])
    det = build_detector(cfg, random_seed=0)
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0)) * 60
    with torch.no_grad():
        res4, prob, delta = det.backbone_rpn()(x)
    assert 0.05 < float(res4.std()) < 20 and float(prob.std()) > 1e-3
    assert res4.shape[2:] == (feature_size(128), feature_size(192))


# ----------------------------------------------------------------------------------------------- checkpoints
def _milvlg_state(cfg: DetectorConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as a MILVLG .pth: with num_batches_tracked on the BN layers and the anchor buffer."""
    sd = dict(build_detector(cfg, random_seed=seed).state_dict())
    for k in [k for k in sd if k.endswith(".norm.running_var") and ".res4." in k]:
        sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    sd[f"{ANCHOR_PREFIX}.0"] = torch.from_numpy(CAFFE_ANCHORS.copy())
    return sd


def test_milvlg_checkpoint_converts(tmp_path: Path) -> None:
    cfg = DetectorConfig.tiny()
    sd = _milvlg_state(cfg)
    ckpt = tmp_path / "bua-caffe-tiny.pth"
    torch.save({"model": sd, "iteration": 320000}, ckpt)
    out = tmp_path / "det"
    assert main(["convert-detector", str(ckpt), "--tiny", "-o", str(out)]) == 0
    got = load_file(str(out / "weights" / "detector.safetensors"))
    assert set(got) == set(BUADetector(cfg).state_dict())
    for k, v in got.items():
        assert torch.equal(v, sd[k]), k
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "detector" and DetectorConfig.from_dict(config["detector"]) == cfg
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["family"] == "detector" and len(manifest["source"]["detector"]["sha256"]) == 64
    # again without --force: refused; a bare state dict (no {"model": ...}) is accepted too
    torch.save(sd, tmp_path / "bare.pth")
    assert main(["convert-detector", str(tmp_path / "bare.pth"), "--tiny", "-o", str(out)]) != 0
    assert main(["convert-detector", str(tmp_path / "bare.pth"), "--tiny", "-o", str(out), "--force"]) == 0


def test_existing_model_directory_gains_a_detector(tmp_path: Path) -> None:
    from vsrt.modeldir import open_manifest, read_model_info
    from vsrt.models.convert import write_model_dir
    from vsrt.models.vsrn import VSRNConfig, build
    from vsrt.text.vocab import Vocabulary

    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "dog"])
    cfg = VSRNConfig(vocab_size=len(vocab), img_dim=16, embed_size=16, word_dim=16)
    states = {k: m.state_dict() for k, m in build(cfg).items()}
    out = write_model_dir(tmp_path / "vsrn", "vsrn", cfg, states, vocab, {"random_weights": 0}, force=True)
    out = Path(out or tmp_path / "vsrn")
    assert main(["convert-detector", "--random-init", "--tiny", "--seed", "3", "-o", str(out)]) == 0
    info = read_model_info(out)
    assert info.family == "vsrn" and "detector" in info.raw
    m = open_manifest(out)  # config checksum updated with the detector entry
    assert m.source["detector"]["random_init"] is True and (out / "weights" / "visual.safetensors").is_file()


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "evil.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}, "x": Evil()}, ckpt)
    with pytest.raises(UnsafePickleError, match="refused"):
        load_butd_checkpoint(ckpt, DetectorConfig.tiny())
    assert main(["convert-detector", str(ckpt), "--tiny", "-o", str(tmp_path / "out")]) != 0
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_key_and_shape_errors_name_the_keys() -> None:
    cfg = DetectorConfig.tiny()
    base = _milvlg_state(cfg)
    sd = dict(base)
    del sd["roi_heads.box_predictor.cls_embed.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): roi_heads\.box_predictor\.cls_embed\.weight"):
        clean_state_dict(sd, cfg, "ckpt")
    sd = dict(base, **{"roi_heads.box_predictor.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): roi_heads\.box_predictor\.extra\.weight"):
        clean_state_dict(sd, cfg, "ckpt")
    sd = dict(base, **{"backbone.res3.0.conv2.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(CheckpointError, match=r"wrong shapes \(1\): backbone\.res3\.0\.conv2\.weight"):
        clean_state_dict(sd, cfg, "ckpt")
    sd = dict(base, **{f"{ANCHOR_PREFIX}.0": torch.from_numpy(CAFFE_ANCHORS * 0.5)})
    with pytest.raises(CheckpointError, match="cell_anchors.0.*not the 12 Caffe anchors"):
        clean_state_dict(sd, cfg, "ckpt")
    with pytest.raises(InputError, match="either a CHECKPOINT or --random-init"):
        from vsrt.commands.convert_detector import run

        run(
            type(
                "A",
                (),
                {"checkpoint": None, "random_init": False, "tiny": True, "seed": 0, "output": "x", "force": False},
            )()
        )
