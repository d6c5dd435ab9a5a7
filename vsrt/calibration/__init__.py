"""Reduced precision for every stage: calibration data, FP16 and INT8 Q/DQ ONNX, the TensorRT 10 calibration
cache, and the accuracy guard.

* :mod:`~vsrt.calibration.sources` — calibration/eval data (region features, captions, images, random inputs)
  serving ONNX Runtime, Polygraphy and TensorRT 10 calibrators;
* :mod:`~vsrt.calibration.fp16` — FP16 graphs with FP32 I/O and FP32 norms/reductions;
* :mod:`~vsrt.calibration.int8` — statistics and TensorRT-compatible Q/DQ graphs;
* :mod:`~vsrt.calibration.trt10_cache` — TensorRT 10 implicit-INT8 cache and entropy calibrator;
* :mod:`~vsrt.calibration.guard` — recall/cosine vs FP32 and the sensitivity pass;
* :mod:`~vsrt.calibration.pipeline` — ``vsrt calibrate`` over a model directory.
"""
