"""Pure-PyTorch bottom-up-attention detector (the reference and export source of the two detector graphs)."""

from vsrt.models.detector.anchors import config_anchors, generate_anchors
from vsrt.models.detector.bua import BackboneRPN, BUADetector, RoIHead, build_detector, init_random
from vsrt.models.detector.roi_pool import roi_pool_loop, roi_pool_maxroipool, roi_pool_sparse, table_levels

__all__ = [
    "BUADetector",
    "BackboneRPN",
    "RoIHead",
    "build_detector",
    "init_random",
    "config_anchors",
    "generate_anchors",
    "roi_pool_loop",
    "roi_pool_maxroipool",
    "roi_pool_sparse",
    "table_levels",
]
