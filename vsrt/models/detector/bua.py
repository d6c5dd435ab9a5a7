"""The bottom-up-attention (BUTD) Faster R-CNN in plain PyTorch: ResNet C4 backbone + RPN head + res5 RoI head.

Module names follow MILVLG/bottom-up-attention.pytorch (detectron2 naming, "caffe" mode with attributes), so its
``.pth`` state dicts load after dropping ``num_batches_tracked`` and the anchor buffer:
``backbone.stem.conv1``, ``backbone.res2..res4``,
``proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}``,
``roi_heads.res5``, ``roi_heads.box_predictor.{cls_score,bbox_pred,cls_embed,attr_linear1,attr_linear2}``.
Every norm is a frozen affine (``FrozenBatchNorm2d``, eps 1e-5); the stem max-pool is Caffe's (k3 s2 p0, ceil);
strides sit in the 1×1 convs; res5 runs at stride 1 with dilation 2 on the 14×14 RoI maps.

Two export-friendly halves (the ``backbone_rpn`` and ``roi_head`` graphs): :class:`BackboneRPN` and
:class:`RoIHead`; :class:`BUADetector` owns the weights under the original names and hands out both.
No NMS, TopK or proposal logic here: those run on the host (``vsrt.runtime.detector``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vsrt.detector_config import DetectorConfig
from vsrt.models.detector.roi_pool import roi_pool_maxroipool, roi_pool_sparse, table_levels

NORM_EPS = 1e-5


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine (detectron2's buffers: weight, bias, running_mean/var)."""

    def __init__(self, channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class ConvNorm(nn.Conv2d):
    """detectron2's ``Conv2d`` with a ``norm`` submodule (bias-free conv → frozen affine)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Stem(nn.Module):
    """conv 7×7/2 + norm → ReLU → Caffe max-pool 3×3/2 (no padding, ceil rounding)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, width, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=0, ceil_mode=True)


class Bottleneck(nn.Module):
    """detectron2 ``BottleneckBlock`` with the stride in the first 1×1 conv (MSRA/Caffe ResNet)."""

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout else None
        self.conv1 = ConvNorm(cin, width, 1, stride=stride)
        self.conv2 = ConvNorm(width, width, 3, padding=dilation, dilation=dilation)
        self.conv3 = ConvNorm(width, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        short = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + short)


def make_stage(blocks: int, cin: int, width: int, cout: int, stride: int, dilation: int = 1) -> nn.Sequential:
    """``blocks`` bottlenecks; the first changes channels and stride."""
    layers = [Bottleneck(cin, width, cout, stride, dilation)]
    layers += [Bottleneck(cout, width, cout, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Backbone(nn.Module):
    """ResNet stem + res2..res4 (C4): ``backbone.*`` keys."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        w = cfg.res2_width
        self.stem = Stem(cfg.stem_width)
        self.res2 = make_stage(cfg.blocks[0], cfg.stem_width, w, 4 * w, 1)
        self.res3 = make_stage(cfg.blocks[1], 4 * w, 2 * w, 8 * w, 2)
        self.res4 = make_stage(cfg.blocks[2], 8 * w, 4 * w, 16 * w, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res4(self.res3(self.res2(self.stem(x))))


class RPNHead(nn.Module):
    """``proposal_generator.rpn_head``: 3×3 conv 512 + ReLU, 2A objectness logits (bg block, fg block), 4A deltas."""

    def __init__(self, cin: int, num_anchors: int, hidden: int = 512) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(cin, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, 2 * num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, 4 * num_anchors, 1)

    def forward(self, res4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(res4))
        logits = self.objectness_logits(t)
        n, _, h, w = logits.shape
        prob = torch.softmax(logits.reshape(n, 2, self.num_anchors, h, w), dim=1)[:, 1]  # Caffe's [1,2,A,h,w]
        return prob, self.anchor_deltas(t)


class ProposalGenerator(nn.Module):
    """Holds ``rpn_head`` (so keys read ``proposal_generator.rpn_head.*``); proposals themselves run on the host."""

    def __init__(self, cin: int, num_anchors: int) -> None:
        super().__init__()
        self.rpn_head = RPNHead(cin, num_anchors)


class BoxPredictor(nn.Module):
    """``roi_heads.box_predictor``: class scores, box deltas (unused by feature extraction), attribute head."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        f = cfg.feature_dim
        self.cls_score = nn.Linear(f, cfg.num_classes)
        self.bbox_pred = nn.Linear(f, 4 * cfg.num_classes)
        self.cls_embed = nn.Embedding(cfg.num_classes, cfg.attribute_embed_dim)
        self.attr_linear1 = nn.Linear(f + cfg.attribute_embed_dim, cfg.attribute_hidden)
        self.attr_linear2 = nn.Linear(cfg.attribute_hidden, cfg.num_attributes)

    def forward(self, pool5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cls_prob, attr_prob)``; attributes are conditioned on argmax over all classes incl. background."""
        scores = self.cls_score(pool5)
        labels = torch.argmax(scores, dim=1)
        attr_in = torch.cat([pool5, self.cls_embed(labels)], dim=1)
        attr = self.attr_linear2(F.relu(self.attr_linear1(attr_in)))
        return torch.softmax(scores, dim=-1), torch.softmax(attr, dim=-1)


class RoIHeads(nn.Module):
    """``roi_heads``: res5 (stride 1, dilation 2) + box predictor."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        w = cfg.res2_width
        self.res5 = make_stage(cfg.blocks[3], 16 * w, 8 * w, 32 * w, stride=1, dilation=2)
        self.box_predictor = BoxPredictor(cfg)


class BUADetector(nn.Module):
    """The whole detector's weights under MILVLG's names. ``backbone_rpn()`` / ``roi_head()`` give the two graphs."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.proposal_generator = ProposalGenerator(cfg.res4_channels, cfg.num_anchors)
        self.roi_heads = RoIHeads(cfg)

    def backbone_rpn(self) -> BackboneRPN:
        """The ``backbone_rpn`` graph (shares this module's parameters)."""
        return BackboneRPN(self).eval()

    def roi_head(self, variant: str = "sparse") -> RoIHead:
        """The ``roi_head`` graph; ``variant`` ``sparse`` (standard ops) or ``maxroipool`` (ONNX MaxRoiPool)."""
        return RoIHead(self, variant).eval()


class BackboneRPN(nn.Module):
    """``image`` [1,3,H,W] (BGR − means) → ``res4``, ``rpn_prob`` [1,A,h,w], ``rpn_delta`` [1,4A,h,w]."""

    def __init__(self, det: BUADetector) -> None:
        super().__init__()
        self.backbone = det.backbone
        self.rpn_head = det.proposal_generator.rpn_head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        res4 = self.backbone(image)
        prob, delta = self.rpn_head(res4)
        return res4, prob, delta


class RoIHead(nn.Module):
    """``res4`` [1,C4,h,w] + ``rois`` [R,4] (x1,y1,x2,y2, resized-image pixels) → ``pool5``, ``cls_prob``,
    ``attr_prob``."""

    def __init__(self, det: BUADetector, variant: str = "sparse") -> None:
        super().__init__()
        if variant not in ("sparse", "maxroipool"):
            raise ValueError(f"unknown roi_head variant '{variant}' (sparse | maxroipool)")
        cfg = det.cfg
        self.variant = variant
        self.pool_size = cfg.pool_size
        self.spatial_scale = 1.0 / cfg.feat_stride
        self.levels = table_levels(cfg.test_max_size, cfg.pool_size)
        self.res5 = det.roi_heads.res5
        self.box_predictor = det.roi_heads.box_predictor

    def pool(self, res4: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIPool 14×14 of ``rois`` on ``res4`` → [R, C4, P, P]."""
        fn = roi_pool_sparse if self.variant == "sparse" else roi_pool_maxroipool
        return fn(res4, rois, self.pool_size, self.spatial_scale, self.levels)

    def forward(self, res4: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool5 = self.res5(self.pool(res4, rois)).mean(dim=(2, 3))
        cls_prob, attr_prob = self.box_predictor(pool5)
        return pool5, cls_prob, attr_prob


def init_random(det: BUADetector, seed: int = 0) -> BUADetector:
    """Random weights whose activations stay O(1) through any depth (for tests and benchmarks only).

    Convs: He-normal; frozen affines: per-channel scale that normalises the conv's input scale, with the last norm of
    every residual branch damped (1/√blocks) so the residual sum does not grow; small random means/biases.
    The stem is scaled for Caffe-mean-subtracted pixel values (|x| ≲ 130).
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    def set_norm(norm: FrozenBatchNorm2d, gain: float) -> None:
        c = norm.weight.numel()
        norm.running_var.copy_(uniform((c,), 0.5, 2.0))
        norm.running_mean.copy_(normal((c,), 0.05))
        norm.weight.copy_(uniform((c,), 0.7, 1.0) * gain * torch.sqrt(norm.running_var + norm.eps))
        norm.bias.copy_(normal((c,), 0.05))

    def set_conv(conv: nn.Conv2d, input_scale: float = 1.0) -> None:
        fan_in = conv.weight[0].numel()
        conv.weight.copy_(normal(tuple(conv.weight.shape), math.sqrt(2.0 / fan_in) / input_scale))
        if conv.bias is not None:
            conv.bias.copy_(normal(tuple(conv.bias.shape), 0.01))

    def set_stage(stage: nn.Sequential) -> None:
        damp = 1.0 / math.sqrt(len(stage))
        for block in stage:
            for name in ("conv1", "conv2", "conv3"):
                conv = getattr(block, name)
                set_conv(conv)
                set_norm(conv.norm, damp if name == "conv3" else 1.0)
            if block.shortcut is not None:
                set_conv(block.shortcut)
                set_norm(block.shortcut.norm, 0.7)

    def set_linear(lin: nn.Linear, std_scale: float = 1.0) -> None:
        lin.weight.copy_(normal(tuple(lin.weight.shape), std_scale / math.sqrt(lin.in_features)))
        lin.bias.copy_(normal(tuple(lin.bias.shape), 0.01))

    with torch.no_grad():
        set_conv(det.backbone.stem.conv1, input_scale=60.0)
        set_norm(det.backbone.stem.conv1.norm, 1.0)
        for stage in (det.backbone.res2, det.backbone.res3, det.backbone.res4, det.roi_heads.res5):
            set_stage(stage)
        head = det.proposal_generator.rpn_head
        set_conv(head.conv, input_scale=2.0)
        for conv in (head.objectness_logits, head.anchor_deltas):
            set_conv(conv, input_scale=4.0)
        bp = det.roi_heads.box_predictor
        set_linear(bp.cls_score, 3.0)
        set_linear(bp.bbox_pred, 0.1)
        bp.cls_embed.weight.copy_(normal(tuple(bp.cls_embed.weight.shape), 1.0))
        set_linear(bp.attr_linear1, 1.0)
        set_linear(bp.attr_linear2, 3.0)
    return det


def build_detector(cfg: DetectorConfig, random_seed: int | None = None) -> BUADetector:
    """A detector in eval mode; random O(1)-activation weights when ``random_seed`` is given."""
    det = BUADetector(cfg)
    if random_seed is not None:
        init_random(det, random_seed)
    return det.eval()
