"""vsrt: VSRN-family image-text matching, from research checkpoints to ONNX / TensorRT and a lean runtime.

Importing ``vsrt`` (or ``vsrt.runtime``) never imports torch; only ``vsrt.models``, ``vsrt.export``,
``vsrt.calibration`` and the training code need it.
"""

__version__ = "0.1.0"
