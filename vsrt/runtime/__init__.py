"""vsrt's inference runtime. Never imports torch: numpy, ONNX Runtime or TensorRT, OpenCV.

Typical use::

    import vsrt.runtime
    model = vsrt.runtime.open_model("my-model", backend="auto", precision="fp32")
    img = model.encode_regions(regions)          # [N, 36, 2048] → [N, D]
    txt = model.encode_texts(["a dog on a beach"])
"""

from vsrt.runtime.model import RetrievalModel, open_model

open = open_model  # noqa: A001 - the design's spelling: vsrt.runtime.open(model_dir, ...)

__all__ = ["RetrievalModel", "open", "open_model"]
