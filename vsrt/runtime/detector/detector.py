"""The runtime detector: raw images → bottom-up-attention region features, without torch.

Pipeline per image (timed per step in :attr:`Detector.last_timings`)::

    preprocess     decode / convert (images.py) + Caffe resize and mean subtraction (preprocess.py); a blob
                   thinner than the graph's minimum input is zero-padded bottom/right (``pad_blob``, see there)
    backbone_rpn   graph A: image → res4, rpn_prob, rpn_delta
    proposals      host: anchors, "+1" decode, clip, min size, top 6000, NMS 0.7, top R, padding (proposals.py)
    roi_head       graph B: res4 + rois [R, 4] → pool5, cls_prob, attr_prob
    selection      host: generate_tsv's per-class NMS 0.3 / confidence / MIN–MAX rule, exact lazy algorithm

``res4`` between the graphs: with ONNX Runtime on CUDA both sessions are run through IOBinding and ``res4`` stays
an ``OrtValue`` in GPU memory (only ``rpn_prob``/``rpn_delta`` come to the host for the proposal stage, and only
``rois`` goes back). With ONNX Runtime on the CPU the numpy array the first session returns is fed as is to the
second (host memory *is* the device memory; no copy). Other backends (TensorRT, or a wrapper that records feeds
for calibration) go through the plain :meth:`Backend.run` interface, i.e. a device→host→device round trip.

The ``roi_head`` graph comes in two forms: RoIPool in standard ops (TensorRT-parsable; the default) and a variant
with ONNX ``MaxRoiPool`` (registered in the manifest under ``files[precision].extra["variants"]["maxroipool"]``),
which ONNX Runtime runs faster on the CPU only (its CUDA provider has no MaxRoiPool). ``roi_pool="auto"`` picks the
variant exactly when both graphs run on ONNX Runtime's CPU provider and the variant exists; the two are
bit-identical (both RoIPools are exact; checked end to end on the tiny model in tests/test_detector_runtime.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.detector_config import DetectorConfig
from vsrt.errors import InputError, ManifestError
from vsrt.io import sha256_file
from vsrt.manifest import Manifest
from vsrt.modeldir import read_model_info
from vsrt.runtime.backends.base import Backend
from vsrt.runtime.detector.images import ImageInput, load_image
from vsrt.runtime.detector.preprocess import MIN_INPUT_SIDE, pad_blob, preprocess_image
from vsrt.runtime.detector.proposals import propose
from vsrt.runtime.detector.selection import attribute_labels, object_labels, select

#: the steps of :attr:`Detector.last_timings`, in pipeline order
STEPS = ("preprocess", "backbone_rpn", "proposals", "roi_head", "selection")
ROI_POOL_CHOICES = ("auto", "standard", "maxroipool")
#: ONNX Runtime providers whose outputs can stay in CUDA memory between the two graphs
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class Detection:
    """The regions of one image, in generate_tsv's order.

    ``features [K, F]`` float32 (mean-pooled res5, F = 2048 full size); ``boxes [K, 4]`` float32 (x1, y1, x2, y2 in
    original-image pixels after EXIF orientation, the proposal boxes as generate_tsv writes them);
    ``object_ids`` / ``object_scores`` (most probable object class per box, ids on the model's class axis, 1 ..
    C-1), ``attribute_ids`` / ``attribute_scores`` (most probable attribute, 1 .. num_attributes-1);
    ``scores [K]`` = generate_tsv's selection confidence ``max_conf``; ``cls_prob [K, C]`` the class
    probabilities; ``image_hw`` the original (H, W); ``num_proposals`` the RPN's valid proposals;
    ``source`` the path (or a description of the array).
    """

    features: np.ndarray
    boxes: np.ndarray
    object_ids: np.ndarray
    object_scores: np.ndarray
    attribute_ids: np.ndarray
    attribute_scores: np.ndarray
    image_hw: tuple[int, int]
    scores: np.ndarray
    cls_prob: np.ndarray
    num_proposals: int = 0
    source: str = ""

    @property
    def num_boxes(self) -> int:
        """K, the number of regions."""
        return int(self.features.shape[0])

    def to_json(self) -> dict[str, Any]:
        """Boxes, labels and scores as JSON-ready lists (features excluded)."""
        return {
            "source": self.source,
            "image_h": int(self.image_hw[0]),
            "image_w": int(self.image_hw[1]),
            "num_boxes": self.num_boxes,
            "boxes": np.asarray(self.boxes, np.float64).round(3).tolist(),
            "scores": np.asarray(self.scores, np.float64).round(6).tolist(),
            "object_ids": [int(v) for v in self.object_ids],
            "object_scores": np.asarray(self.object_scores, np.float64).round(6).tolist(),
            "attribute_ids": [int(v) for v in self.attribute_ids],
            "attribute_scores": np.asarray(self.attribute_scores, np.float64).round(6).tolist(),
        }


def stack_features(detections: Sequence[Detection], num_boxes: int, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Detections → ``(features [N, num_boxes, F] float32, counts [N])`` in the precomputed (SCAN ``*_ims.npy``)
    layout; an image with fewer than ``num_boxes`` regions is padded with zero rows (its count says how many are
    real); more than ``num_boxes`` is an error."""
    out = np.zeros((len(detections), num_boxes, feature_dim), np.float32)
    counts = np.zeros(len(detections), np.int64)
    for i, d in enumerate(detections):
        k = d.num_boxes
        if k > num_boxes:
            raise InputError(f"{d.source or f'image {i}'}: {k} regions do not fit {num_boxes} per image")
        if d.features.shape[1:] != (feature_dim,):
            raise InputError(f"{d.source or f'image {i}'}: features of dim {d.features.shape[1:]}, want {feature_dim}")
        out[i, :k] = d.features
        counts[i] = k
    return out, counts


def read_detector_config(model_dir: str | Path) -> DetectorConfig:
    """The :class:`DetectorConfig` in ``config.json["detector"]`` of a model directory."""
    raw = read_model_info(model_dir).raw
    d = raw.get("detector")
    if d is None and isinstance(raw.get("config"), dict):
        d = raw["config"].get("detector")
    if d is None:
        raise ManifestError(f"{Path(model_dir) / 'config.json'} has no 'detector' entry (convert a detector first)")
    return DetectorConfig.from_dict(d)


def _variant_path(model_dir: Path, manifest: Manifest, precision: str, name: str) -> Path | None:
    """The checksum-verified path of a ``roi_head`` variant file, or None when the manifest lists none."""
    sf = manifest.stage("roi_head").files.get(precision)
    entry = (sf.extra.get("variants") or {}).get(name) if sf is not None else None
    if not entry:
        return None
    path = model_dir / entry["path"]
    if not path.is_file():
        raise ManifestError(f"{path} (roi_head variant '{name}') is listed in the manifest but missing")
    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise ManifestError(f"{path} does not match its manifest checksum; re-run `vsrt export`")
    return path


def _is_ort_cpu(backend: Backend) -> bool:
    from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

    return isinstance(backend, OrtBackend) and backend.providers == ["CPUExecutionProvider"]


class Detector:
    """Raw images → :class:`Detection` (features, boxes, labels) with two graphs and two host stages.

    Build with :meth:`from_model_dir`. ``backends`` maps ``backbone_rpn`` / ``roi_head`` to the backends running
    them (replaceable, e.g. by a calibration recorder). ``bind``: ``auto`` keeps ``res4`` on the device through ONNX
    Runtime IOBinding when both graphs run on the same ONNX Runtime GPU provider; ``always`` forces the IOBinding
    path (also on the CPU, for tests), ``never`` uses plain ``run`` calls. ``min_input_hw``: the smallest
    ``(H, W)`` the ``backbone_rpn`` graph takes (its manifest profile minimum); thinner blobs are zero-padded to it.
    ``precision`` (``fp32`` / ``fp16`` / ``int8``) is the one the stage files were opened at.
    """

    def __init__(
        self,
        cfg: DetectorConfig,
        backends: dict[str, Backend],
        bind: str = "auto",
        device_id: int = 0,
        roi_pool: str = "standard",
        min_input_hw: tuple[int, int] = (MIN_INPUT_SIDE, MIN_INPUT_SIDE),
        precision: str = "fp32",
    ) -> None:
        if set(backends) != {"backbone_rpn", "roi_head"}:
            raise InputError(f"Detector needs backends 'backbone_rpn' and 'roi_head', got {sorted(backends)}")
        if bind not in ("auto", "always", "never"):
            raise InputError(f"bind must be auto, always or never, got {bind!r}")
        self.cfg = cfg
        self.backends = dict(backends)
        self.bind = bind
        self.device_id = device_id
        self.roi_pool = roi_pool
        self.min_input_hw = (int(min_input_hw[0]), int(min_input_hw[1]))
        self.precision = precision
        self.last_timings: dict[str, float] = {}
        self._check_io()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        manifest: Manifest,
        backend_name: str = "auto",
        precision: str = "fp32",
        roi_pool: str = "auto",
        bind: str = "auto",
        **backend_options: Any,
    ) -> Detector:
        """Open the detector of a model directory (stages ``backbone_rpn`` and ``roi_head``, ``config.json``'s
        ``"detector"``) with ``backend_name`` at ``precision``; ``roi_pool`` picks the ``roi_head`` variant.

        ``precision`` is ``fp32`` (``vsrt export``) or ``fp16`` / ``int8`` (``vsrt calibrate``; engines from ``vsrt
        build``). The ``maxroipool`` variant exists at FP32 only: at other precisions ``auto`` takes the standard
        ``roi_head`` graph of that precision and ``maxroipool`` is an error."""
        from vsrt.runtime.backends.factory import create_backend
        from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

        if roi_pool not in ROI_POOL_CHOICES:
            raise InputError(f"roi_pool must be one of {', '.join(ROI_POOL_CHOICES)}, got {roi_pool!r}")
        model_dir = Path(model_dir)
        for st in ("backbone_rpn", "roi_head"):
            if st not in manifest.stages:
                raise ManifestError(f"{model_dir} has no '{st}' stage: export the detector with `vsrt export`")
        cfg = read_detector_config(model_dir)
        opts = dict(backend_options)
        backbone = create_backend(model_dir, manifest, "backbone_rpn", backend_name, precision, **dict(opts))
        variant = None
        if roi_pool == "maxroipool" or (roi_pool == "auto" and _is_ort_cpu(backbone)):
            variant = _variant_path(model_dir, manifest, precision, "maxroipool")
            if variant is None and roi_pool == "maxroipool":
                raise ManifestError(f"{model_dir}: roi_head has no 'maxroipool' variant at {precision}")
        if variant is not None:
            threads = opts.get("intra_op_threads")
            head: Backend = OrtBackend(variant, providers=["cpu"], stage="roi_head", intra_op_threads=threads)
            used = "maxroipool"
        else:
            head = create_backend(model_dir, manifest, "roi_head", backend_name, precision, **dict(opts))
            used = "standard"
        image_min = manifest.stage("backbone_rpn").inputs[0].min
        min_hw = (int(image_min[2]), int(image_min[3])) if image_min else (MIN_INPUT_SIDE, MIN_INPUT_SIDE)
        return cls(
            cfg,
            {"backbone_rpn": backbone, "roi_head": head},
            bind=bind,
            device_id=int(opts.get("device_id", 0)),
            roi_pool=used,
            min_input_hw=min_hw,
            precision=precision,
        )

    def _check_io(self) -> None:
        bb, rh = self.backends["backbone_rpn"], self.backends["roi_head"]
        want_bb = ({"image"}, {"res4", "rpn_prob", "rpn_delta"})
        want_rh = ({"res4", "rois"}, {"pool5", "cls_prob", "attr_prob"})
        for name, be, (ins, outs) in (("backbone_rpn", bb, want_bb), ("roi_head", rh, want_rh)):
            got_in, got_out = {t.name for t in be.inputs}, {t.name for t in be.outputs}
            if got_in != ins or not outs <= got_out:
                raise ManifestError(
                    f"detector stage '{name}' has inputs {sorted(got_in)} / outputs "
                    f"{sorted(got_out)}; expected {sorted(ins)} / {sorted(outs)}"
                )
        rois = next(t for t in rh.inputs if t.name == "rois")
        if isinstance(rois.shape[0], int) and rois.shape[0] >= 0 and rois.shape[0] != self.cfg.num_rois:
            raise ManifestError(
                f"roi_head takes {rois.shape[0]} rois, the detector config says num_rois={self.cfg.num_rois}"
            )

    # ------------------------------------------------------------------ running
    def _use_binding(self) -> bool:
        from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

        bb, rh = self.backends["backbone_rpn"], self.backends["roi_head"]
        if self.bind == "never" or not (isinstance(bb, OrtBackend) and isinstance(rh, OrtBackend)):
            return False
        if self.bind == "always":
            return True
        return bb.providers[0] in _GPU_PROVIDERS and rh.providers[0] in _GPU_PROVIDERS

    def _graphs_bound(
        self, blob: np.ndarray, image_hw: tuple[int, int], scale: float, cfg: DetectorConfig, times: dict[str, float]
    ) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
        """Both graphs through ONNX Runtime IOBinding; ``res4`` stays an OrtValue on the first graph's device."""
        bb = self.backends["backbone_rpn"].session
        rh = self.backends["roi_head"].session
        device = "cuda" if bb.get_providers()[0] in _GPU_PROVIDERS else "cpu"
        t = time.perf_counter()
        io = bb.io_binding()
        io.bind_cpu_input("image", np.ascontiguousarray(blob, np.float32))
        io.bind_output("res4", device, self.device_id)
        io.bind_output("rpn_prob")
        io.bind_output("rpn_delta")
        bb.run_with_iobinding(io)
        res4, prob, delta = io.get_outputs()
        rpn_prob, rpn_delta = prob.numpy(), delta.numpy()
        times["backbone_rpn"] += time.perf_counter() - t
        t = time.perf_counter()
        rois, n_valid = propose(rpn_prob, rpn_delta, image_hw, scale, cfg)
        times["proposals"] += time.perf_counter() - t
        t = time.perf_counter()
        io2 = rh.io_binding()
        io2.bind_ortvalue_input("res4", res4)
        io2.bind_cpu_input("rois", rois)
        names = [o.name for o in rh.get_outputs()]
        for n in names:
            io2.bind_output(n)
        rh.run_with_iobinding(io2)
        head = {n: v.numpy() for n, v in zip(names, io2.get_outputs())}
        times["roi_head"] += time.perf_counter() - t
        return rois, n_valid, head

    def _graphs_plain(
        self, blob: np.ndarray, image_hw: tuple[int, int], scale: float, cfg: DetectorConfig, times: dict[str, float]
    ) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
        t = time.perf_counter()
        a = self.backends["backbone_rpn"].run({"image": blob})
        times["backbone_rpn"] += time.perf_counter() - t
        t = time.perf_counter()
        rois, n_valid = propose(a["rpn_prob"], a["rpn_delta"], image_hw, scale, cfg)
        times["proposals"] += time.perf_counter() - t
        t = time.perf_counter()
        head = self.backends["roi_head"].run({"res4": a["res4"], "rois": rois})
        times["roi_head"] += time.perf_counter() - t
        return rois, n_valid, head

    def config_for(self, num_boxes: int | None = None) -> DetectorConfig:
        """The config a call uses: this detector's, or with ``min_boxes = max_boxes = num_boxes``."""
        if num_boxes is None:
            return self.cfg
        cfg = dataclasses.replace(self.cfg, min_boxes=int(num_boxes), max_boxes=int(num_boxes))
        cfg.validate()
        return cfg

    def detect_one(
        self,
        image: ImageInput,
        num_boxes: int | None = None,
        name: str | None = None,
        _times: dict[str, float] | None = None,
    ) -> Detection:
        """One image (path or array) → :class:`Detection`."""
        cfg = self.config_for(num_boxes)
        times = _times if _times is not None else dict.fromkeys(STEPS, 0.0)
        t = time.perf_counter()
        img = load_image(image, cfg, name)
        label = name or (str(image) if isinstance(image, (str, Path)) else f"image array {list(img.shape)}")
        blob, scale = preprocess_image(img, cfg)
        hw = (int(blob.shape[2]), int(blob.shape[3]))  # the real resized size: proposals are clipped to it
        blob = pad_blob(blob, self.min_input_hw)
        times["preprocess"] += time.perf_counter() - t
        run = self._graphs_bound if self._use_binding() else self._graphs_plain
        rois, n_valid, head = run(blob, hw, scale, cfg, times)
        t = time.perf_counter()
        cls_prob = np.asarray(head["cls_prob"], np.float32)
        sel = select(rois, cls_prob, n_valid, scale, cfg)
        keep = sel.keep
        obj_ids, obj_scores = object_labels(cls_prob, keep)
        attr_ids, attr_scores = attribute_labels(np.asarray(head["attr_prob"], np.float32), keep)
        det = Detection(
            features=np.ascontiguousarray(np.asarray(head["pool5"], np.float32)[keep]),
            boxes=sel.boxes[keep],
            object_ids=obj_ids,
            object_scores=obj_scores,
            attribute_ids=attr_ids,
            attribute_scores=attr_scores,
            image_hw=(int(img.shape[0]), int(img.shape[1])),
            scores=sel.max_conf[keep].astype(np.float32),
            cls_prob=np.ascontiguousarray(cls_prob[keep]),
            num_proposals=n_valid,
            source=label,
        )
        times["selection"] += time.perf_counter() - t
        if _times is None:
            self.last_timings = times
        return det

    def detect(
        self, images: Sequence[ImageInput] | ImageInput, num_boxes: int | None = None, progress: Any = None
    ) -> list[Detection]:
        """Images (paths or ``H×W×3`` uint8 BGR arrays) → one :class:`Detection` each, in order.

        ``num_boxes`` fixes K for this call (``min_boxes = max_boxes``, e.g. 36 for VSRN); ``progress(i, n)`` is
        called after each image. :attr:`last_timings` holds the seconds spent per step over the whole call.
        """
        if isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        images = list(images)
        times = dict.fromkeys(STEPS, 0.0)
        out = []
        for i, im in enumerate(images):
            out.append(self.detect_one(im, num_boxes, _times=times))
            if progress is not None:
                progress(i + 1, len(images))
        self.last_timings = times
        return out

    @property
    def feature_dim(self) -> int:
        """F, the region feature size (the ``pool5`` width)."""
        spec = next(t for t in self.backends["roi_head"].outputs if t.name == "pool5")
        d = spec.shape[-1]
        return int(d) if isinstance(d, int) and d > 0 else self.cfg.feature_dim
