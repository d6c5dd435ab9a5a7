"""Export the detector's two graphs (``backbone_rpn``, ``roi_head`` + its ``MaxRoiPool`` variant) with parity.

Parity is stage-wise with teacher forcing: one photograph (preprocessed exactly as the runtime does) goes through
the PyTorch ``backbone_rpn`` and ONNX Runtime's; the **PyTorch** ``res4`` and the host proposals made from the
**PyTorch** RPN outputs are then fed to both ``roi_head`` implementations, so each stage is judged on identical
inputs. Every graph passes ``onnx.checker`` and the cosine threshold before any file appears (atomic writes);
the manifest is updated in memory (the caller saves it).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from safetensors.torch import load_file

from vsrt.detector_config import DetectorConfig
from vsrt.errors import CheckpointError, ManifestError, ParityError
from vsrt.export.onnx_export import DEFAULT_OPSET
from vsrt.export.parity import compare_arrays, merge_parity
from vsrt.io import atomic_path, sha256_file
from vsrt.manifest import Manifest, Stage, TensorSpec
from vsrt.modeldir import read_model_info
from vsrt.models.checkpoints import check_state_dict
from vsrt.models.detector.bua import BUADetector
from vsrt.models.detector.roi_pool import feature_size

WEIGHTS = "weights/detector.safetensors"
FILES = {
    "backbone_rpn": "onnx/backbone_rpn.fp32.onnx",
    "roi_head": "onnx/roi_head.fp32.onnx",
    "maxroipool": "onnx/roi_head.fp32.maxroipool.onnx",
}
MIN_COSINE = 0.99999


def read_detector_config(model_dir: str | Path) -> DetectorConfig:
    """``config.json["detector"]`` of a model directory."""
    raw = read_model_info(model_dir).raw
    if "detector" not in raw:
        raise ManifestError(f"{Path(model_dir) / 'config.json'} has no 'detector' entry; run `vsrt convert-detector`")
    return DetectorConfig.from_dict(raw["detector"])


def load_detector(model_dir: str | Path) -> tuple[DetectorConfig, BUADetector]:
    """The PyTorch detector of a model directory, its weights validated by key and shape, in eval mode."""
    cfg = read_detector_config(model_dir)
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} not found: add a detector with `vsrt convert-detector`")
    det = BUADetector(cfg)
    state = load_file(str(path))
    check_state_dict(state, {k: tuple(v.shape) for k, v in det.state_dict().items()}, str(path))
    det.load_state_dict(state, strict=True)
    return cfg, det.eval()


def stage_specs(cfg: DetectorConfig) -> dict[str, Stage]:
    """The two stages' I/O with TensorRT profiles (image min 64², opt test_scale×test_max_size, max max²).

    The minimum is :data:`vsrt.runtime.detector.preprocess.MIN_INPUT_SIDE`: the runtime zero-pads thinner blobs up to
    it (``pad_blob``), so every image the runtime accepts fits the profile.
    """
    from vsrt.runtime.detector.preprocess import MIN_INPUT_SIDE

    a, c4, r = cfg.num_anchors, cfg.res4_channels, cfg.num_rois
    lo, opt, hi = MIN_INPUT_SIDE, (cfg.test_scale, cfg.test_max_size), cfg.test_max_size
    f = [feature_size(v) for v in (lo, opt[0], opt[1], hi)]
    image = TensorSpec("image", "float32", [1, 3, "height", "width"], [1, 3, lo, lo], [1, 3, *opt], [1, 3, hi, hi])
    res4_out = TensorSpec("res4", "float32", [1, c4, "feat_h", "feat_w"])
    res4_in = TensorSpec(
        "res4", "float32", [1, c4, "feat_h", "feat_w"], [1, c4, f[0], f[0]], [1, c4, f[1], f[2]], [1, c4, f[3], f[3]]
    )
    bb = Stage(
        "backbone_rpn",
        [image],
        [
            res4_out,
            TensorSpec("rpn_prob", "float32", [1, a, "feat_h", "feat_w"]),
            TensorSpec("rpn_delta", "float32", [1, 4 * a, "feat_h", "feat_w"]),
        ],
    )
    rh = Stage(
        "roi_head",
        [res4_in, TensorSpec("rois", "float32", [r, 4])],
        [
            TensorSpec("pool5", "float32", [r, cfg.feature_dim]),
            TensorSpec("cls_prob", "float32", [r, cfg.num_classes]),
            TensorSpec("attr_prob", "float32", [r, cfg.num_attributes]),
        ],
    )
    return {"backbone_rpn": bb, "roi_head": rh}


def default_parity_image() -> tuple[np.ndarray, str]:
    """A real photograph (scikit-image's astronaut, RGB → BGR) or, without scikit-image, a smooth synthetic image."""
    try:
        from skimage import data

        return np.ascontiguousarray(data.astronaut()[:, :, ::-1]), "skimage.data.astronaut (BGR)"
    except ImportError:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:480, 0:640].astype(np.float32)
        img = 127 + 60 * np.sin(x[..., None] / (20 + 10 * np.arange(3))) * np.cos(y[..., None] / 31.0)
        img += rng.normal(0, 10, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), "synthetic 480×640"


def preprocess(image_bgr: np.ndarray, cfg: DetectorConfig) -> tuple[np.ndarray, float]:
    """The runtime's Caffe preprocessing (``vsrt.runtime.detector.preprocess``)."""
    from vsrt.runtime.detector.preprocess import preprocess_image

    return preprocess_image(image_bgr, cfg)


def parity_rois(
    prob: np.ndarray, delta: np.ndarray, image_hw: tuple[int, int], scale: float, cfg: DetectorConfig
) -> tuple[np.ndarray, int]:
    """Host proposals (``vsrt.runtime.detector.proposals.propose``) from the given RPN outputs."""
    from vsrt.runtime.detector.proposals import propose

    return propose(prob, delta, image_hw, scale, cfg)


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, stage: Stage, opset: int) -> None:
    """Trace ``module`` on small ``args`` with every symbolic dim dynamic, then pin the stage's fixed dims.

    Fixed dims that differ in ``args`` (the RoI count: tracing runs a forward pass, cheap with a few RoIs) are traced
    as dynamic and written back as the spec's integers on the graph's inputs and outputs.
    """
    axes: dict[str, dict[int, str]] = {}
    for t, a in zip(stage.inputs, args):
        dims = {
            i: (d if isinstance(d, str) else f"{t.name}_{i}")
            for i, d in enumerate(t.shape)
            if isinstance(d, str) or a.shape[i] != d
        }
        if dims:
            axes[t.name] = dims
    traced_rois = "rois" in axes
    for t in stage.outputs:
        dims = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
        if traced_rois:
            dims[0] = "rois_0"
        if dims:
            axes[t.name] = dims
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[t.name for t in stage.inputs],
            output_names=[t.name for t in stage.outputs],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    specs = {t.name: t for t in [*stage.inputs, *stage.outputs]}
    for vi in [*model.graph.input, *model.graph.output]:
        for i, d in enumerate(specs[vi.name].shape):
            dim = vi.type.tensor_type.shape.dim[i]
            if isinstance(d, int):
                dim.Clear()
                dim.dim_value = d
            else:
                dim.Clear()
                dim.dim_param = d
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _run_ort(path: Path, feeds: dict[str, np.ndarray], stage: str) -> dict[str, np.ndarray]:
    from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

    return OrtBackend(path, stage=stage).run(feeds)


def _compare(stage: str, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], what: str) -> dict[str, Any]:
    parity = merge_parity([{k: compare_arrays(v, got[k]) for k, v in ref.items()}])
    if parity["min_cosine"] < MIN_COSINE:
        raise ParityError(
            f"stage '{stage}' ({what}): ONNX Runtime vs PyTorch min cosine {parity['min_cosine']:.7f} < {MIN_COSINE} "
            f"(max abs err {parity['max_abs_err']:.3g}, per output {parity['per_output']}); export refused"
        )
    return parity


def export_detector_stages(
    model_dir: str | Path,
    manifest: Manifest,
    opset: int = DEFAULT_OPSET,
    image: np.ndarray | None = None,
    image_name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export ``backbone_rpn`` and ``roi_head`` (standard-op RoIPool, plus the ``MaxRoiPool`` variant) to ONNX.

    Args:
        model_dir: model directory with ``weights/detector.safetensors`` and ``config.json["detector"]``.
        manifest: updated in memory (stages, files, checksums, parity); the caller saves it.
        opset: ONNX opset (17: TensorRT 8.5+ / JetPack 5).
        image: the parity photograph (HxWx3 uint8 BGR); default :func:`default_parity_image`.
        log: progress messages.

    Returns ``{"backbone_rpn": parity, "roi_head": parity, "roi_head.maxroipool": parity}``.
    """
    say = log or (lambda _m: None)
    model_dir = Path(model_dir)
    cfg, det = load_detector(model_dir)
    if image is None:
        image, image_name = default_parity_image()
    image_name = image_name or f"array {list(np.asarray(image).shape)}"
    blob, scale = preprocess(image, cfg)
    specs = stage_specs(cfg)
    bb, heads = det.backbone_rpn(), {"sparse": det.roi_head("sparse"), "maxroipool": det.roi_head("maxroipool")}
    x = torch.from_numpy(blob)
    say(f"detector: PyTorch reference on {image_name}, input {list(blob.shape)}")
    with torch.no_grad():
        res4, prob, delta = (t.numpy() for t in bb(x))
    rois, n_valid = parity_rois(prob, delta, (blob.shape[2], blob.shape[3]), scale, cfg)
    with torch.no_grad():
        ref_rh = dict(
            zip(
                ("pool5", "cls_prob", "attr_prob"),
                (t.numpy() for t in heads["sparse"](torch.from_numpy(res4), torch.from_numpy(rois))),
            )
        )
    ref_bb = {"res4": res4, "rpn_prob": prob, "rpn_delta": delta}
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(model_dir / rel)) for k, rel in FILES.items()}
        say("detector: exporting backbone_rpn")
        _export(bb, (torch.zeros(1, 3, 64, 96),), tmp["backbone_rpn"], specs["backbone_rpn"], opset)
        results["backbone_rpn"] = _compare(
            "backbone_rpn", ref_bb, _run_ort(tmp["backbone_rpn"], {"image": blob}, "backbone_rpn"), "photograph"
        )
        feeds = {"res4": res4, "rois": rois}
        variants = (("sparse", "roi_head", "roi_head"), ("maxroipool", "maxroipool", "roi_head.maxroipool"))
        for variant, key, name in variants:
            say(f"detector: exporting roi_head ({variant} RoIPool)")
            example = (torch.from_numpy(res4[:, :, :6, :8].copy()), torch.from_numpy(rois[:4] * 0 + 16))
            _export(heads[variant], example, tmp[key], specs["roi_head"], opset)
            results[name] = _compare(name, ref_rh, _run_ort(tmp[key], feeds, name), "teacher-forced res4 + rois")
    forcing = {
        "image": image_name,
        "input_hw": [int(blob.shape[2]), int(blob.shape[3])],
        "scale": float(scale),
        "teacher_forcing": "roi_head fed the PyTorch res4 and host proposals from the PyTorch rpn_prob/rpn_delta",
        "rois_valid": int(n_valid),
        "num_rois": int(cfg.num_rois),
    }
    for p in results.values():
        p.update(
            {"reference": "pytorch eager fp32", "backend": "onnxruntime cpu fp32", "threshold": MIN_COSINE, **forcing}
        )
    info = {"opset": opset, "detector": True, "weights": WEIGHTS}
    for name in ("backbone_rpn", "roi_head"):
        st = specs[name]
        st.info = dict(info, roi_pool="standard ops (sparse table)" if name == "roi_head" else None)
        if name == "backbone_rpn":
            st.info.pop("roi_pool")
        manifest.set_stage(st)
        manifest.stages[name].files = {}
    manifest.add_file(model_dir, "backbone_rpn", "fp32", FILES["backbone_rpn"], parity=results["backbone_rpn"])
    manifest.add_file(
        model_dir,
        "roi_head",
        "fp32",
        FILES["roi_head"],
        parity=results["roi_head"],
        variants={
            "maxroipool": {
                "path": FILES["maxroipool"],
                "sha256": sha256_file(model_dir / FILES["maxroipool"]),
                "parity": results["roi_head.maxroipool"],
            }
        },
    )
    return results
