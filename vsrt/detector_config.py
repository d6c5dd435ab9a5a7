"""Hyper-parameters of the bottom-up-attention (BUTD) detector, shared by the PyTorch reference
(:mod:`vsrt.models.detector`), the exporter and the runtime (:mod:`vsrt.runtime.detector`). No torch.

The defaults are the original Caffe pipeline's (``peteanderson80/bottom-up-attention``: ``test.prototxt``,
``lib/fast_rcnn/config.py``, ``tools/generate_tsv.py``) as MILVLG/bottom-up-attention.pytorch reproduces them in
"caffe" mode: ResNet-101 C4, 1600 object classes + background, 400 attributes + "no attribute", 12 anchors
(scales 4, 8, 16, 32 × ratios 0.5, 1, 2 on a 16-pixel stride), RPN pre-NMS top 6000 / NMS 0.7 / post-NMS top 300,
RoIPool 14×14 at 1/16, dilated res5, per-class NMS 0.3, confidence 0.2, 10–100 boxes.

A model directory keeps it in ``config.json`` under the key ``"detector"`` (:meth:`DetectorConfig.to_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vsrt.errors import InputError

#: Caffe's PIXEL_MEANS, BGR order, subtracted before resizing
CAFFE_PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)


@dataclass
class DetectorConfig:
    """The detector's architecture and its pre/post-processing.

    Architecture (ResNet C4 + RPN + res5 RoI head): ``blocks`` per stage res2..res5 (``[3, 4, 23, 3]`` is
    ResNet-101), ``stem_width`` (64), ``res2_width`` (bottleneck width of res2, 64; doubles per stage; outputs are
    4× the width), ``num_anchors`` = len(anchor_scales) × len(anchor_ratios). A tiny variant for tests only
    changes these numbers (and ``num_rois``, image sizes), never the code path.

    Post-processing (host): ``pre_nms_top_n`` / ``rpn_nms_thresh`` / ``num_rois`` (post-NMS top N, the fixed R of
    the ``roi_head`` graph), ``rpn_min_size`` (in input-image pixels, scaled by the resize factor),
    ``conf_thresh`` / ``nms_thresh`` / ``min_boxes`` / ``max_boxes`` of generate_tsv (``min_boxes == max_boxes``
    means a fixed number of boxes, e.g. 36 for SCAN/VSRN precomp features).
    """

    num_classes: int = 1601  # background + 1600 Visual Genome objects
    num_attributes: int = 401  # "no attribute" + 400
    blocks: list[int] = field(default_factory=lambda: [3, 4, 23, 3])
    stem_width: int = 64
    res2_width: int = 64
    attribute_embed_dim: int = 256
    attribute_hidden: int = 512
    anchor_scales: list[float] = field(default_factory=lambda: [4.0, 8.0, 16.0, 32.0])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    feat_stride: int = 16
    pool_size: int = 14
    pixel_means_bgr: list[float] = field(default_factory=lambda: list(CAFFE_PIXEL_MEANS_BGR))
    test_scale: int = 600  # shortest side
    test_max_size: int = 1000  # longest side bound
    pre_nms_top_n: int = 6000
    rpn_nms_thresh: float = 0.7
    num_rois: int = 300
    rpn_min_size: float = 16.0
    conf_thresh: float = 0.2
    nms_thresh: float = 0.3
    min_boxes: int = 10
    max_boxes: int = 100
    max_image_pixels: int = 100_000_000  # decompression-bomb guard on decoded images

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell."""
        return len(self.anchor_scales) * len(self.anchor_ratios)

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled region features (res5 output): 2048 for ResNet-101."""
        return self.res2_width * 8 * 4

    @property
    def res4_channels(self) -> int:
        """Channels of the shared res4 feature map: 1024 for ResNet-101."""
        return self.res2_width * 4 * 4

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``config.json["detector"]`` holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        if not isinstance(d, dict):
            raise InputError(f"detector config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"detector config has unknown keys: {', '.join(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`~vsrt.errors.InputError` for inconsistent values."""
        if len(self.blocks) != 4 or any(int(b) < 1 for b in self.blocks):
            raise InputError(f"detector 'blocks' must be 4 positive counts (res2..res5), got {self.blocks}")
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise InputError(f"detector needs 1 <= min_boxes <= max_boxes, got {self.min_boxes}, {self.max_boxes}")
        if self.max_boxes > self.num_rois:
            raise InputError(f"detector max_boxes {self.max_boxes} exceeds num_rois {self.num_rois}")
        if self.test_scale > self.test_max_size:
            raise InputError(f"detector test_scale {self.test_scale} exceeds test_max_size {self.test_max_size}")

    @classmethod
    def tiny(cls, **overrides: Any) -> DetectorConfig:
        """A small variant for fast tests: same code path, fewer/narrower blocks, few RoIs, small images."""
        base: dict[str, Any] = dict(
            num_classes=31, num_attributes=11, blocks=[1, 1, 1, 1], stem_width=8, res2_width=8,
            attribute_embed_dim=16, attribute_hidden=32, test_scale=224, test_max_size=320, pre_nms_top_n=600,
            num_rois=32, min_boxes=4, max_boxes=10,
        )
        base.update(overrides)
        return cls.from_dict(base)
