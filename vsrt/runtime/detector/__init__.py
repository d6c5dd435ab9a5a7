"""The bottom-up-attention detector at run time (no torch): raw images → region features, boxes and labels.

Host stages (numpy / OpenCV): :mod:`.images` (decoding and bad-image rules), :mod:`.preprocess` (Caffe resize),
:mod:`.anchors`, :mod:`.nms` ("+1" NMS), :mod:`.proposals` (RPN decode → RoIs), :mod:`.selection` (generate_tsv's
box selection, exact lazy algorithm); :mod:`.detector` runs them around the ``backbone_rpn`` and ``roi_head``
graphs.
"""

from vsrt.runtime.detector.detector import STEPS, Detection, Detector, read_detector_config, stack_features

__all__ = ["STEPS", "Detection", "Detector", "read_detector_config", "stack_features"]
