"""INT8 explicit quantization: Q/DQ ONNX that TensorRT (10, 11, RTX) accepts and ONNX Runtime runs.

Built with ONNX Runtime's ``quantize_static`` in ``QuantFormat.QDQ`` with the settings TensorRT needs:

* symmetric INT8 activations (zero point 0; ``ActivationSymmetric``) and symmetric per-channel INT8 weights on
  the output-channel axis;
* float biases: ``QuantizeBias=False`` — ONNX Runtime would otherwise write an int32 bias behind a
  DequantizeLinear, which TensorRT's Q/DQ fusion does not take;
* only compute-heavy ops are quantized (:data:`QUANTIZE_OP_TYPES`), Conv/Gemm on their inputs only (TensorRT's
  recommended Q/DQ placement), MatMul also on its output (see the comment in :func:`quantize_int8`); recurrent
  ops (GRU/LSTM/RNN) and loops are never quantized and stay in float (ONNX Runtime has no quantized GRU and
  TensorRT runs GRUs as float loops), nor are matrix-vector products with a rank-1 constant (nothing to gain, no
  channel axis), nor ops whose input has no finite range (a -inf attention mask).

Calibration statistics are collected once (:func:`collect_stats`, MinMax / entropy / percentile) over every float
tensor, kept in a JSON file, and reused for re-quantizing with different exclusions (the accuracy guard's
sensitivity pass) and for TensorRT 10's implicit calibration cache (:mod:`vsrt.calibration.trt10_cache`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vsrt.calibration.fp16 import ensure_node_names
from vsrt.calibration.sources import CalibrationSource
from vsrt.errors import InputError
from vsrt.io import atomic_path, atomic_write_text

#: the reason recorded for a node kept in float by name (the accuracy guard's sensitivity pass, or the user)
INT8_GUARD_REASON = "kept in float (accuracy guard)"
#: op types quantized by default
QUANTIZE_OP_TYPES = ("MatMul", "Gemm", "Conv", "ConvTranspose")
#: op types never quantized
NEVER_QUANTIZE_OP_TYPES = frozenset({"GRU", "LSTM", "RNN", "Loop", "Scan", "If"})
#: calibration methods by CLI name
METHODS = ("minmax", "entropy", "percentile")


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if method not in table:
        raise InputError(f"unknown calibration method '{method}' (choose from {', '.join(METHODS)})")
    return table[method]


@dataclass
class CalibrationStats:
    """Activation ranges of one stage graph: ``{tensor name: (min, max)}`` from one calibration run."""

    method: str
    ranges: dict[str, tuple[float, float]]
    source: dict[str, Any]

    def amax(self, name: str) -> float:
        """Symmetric range ``max(|min|, |max|)`` of a tensor."""
        lo, hi = self.ranges[name]
        return float(max(abs(lo), abs(hi)))

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "source": self.source,
                "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CalibrationStats:
        return cls(d["method"], {k: (float(v[0]), float(v[1])) for k, v in d["ranges"].items()}, d.get("source", {}))

    def save(self, path: str | Path) -> None:
        """Write the statistics as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationStats:
        from vsrt.io import read_json

        return cls.from_json(read_json(path, "calibration statistics"))

    def to_ort(self) -> Any:
        """The statistics as ONNX Runtime's ``TensorsData``."""
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        data = {k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                for k, (lo, hi) in self.ranges.items()}
        return TensorsData(_ort_method(self.method), data)


def collect_stats(
    onnx_path: str | Path,
    source: CalibrationSource,
    method: str = "minmax",
    percentile: float = 99.999,
    num_bins: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationStats:
    """Run ``source`` through the FP32 graph with ONNX Runtime and compute tensor ranges.

    ``minmax`` keeps the extremes; ``entropy`` picks the range that minimises the KL divergence of the INT8
    histogram (TensorRT's EntropyCalibration2 idea); ``percentile`` clips at ``percentile`` of ``|x|``.
    MinMax and percentile cover every float tensor (so the TensorRT 10 cache has a scale for each); entropy's
    threshold search is slow in ONNX Runtime, so it covers the tensors around :data:`QUANTIZE_OP_TYPES` nodes —
    all the Q/DQ graph needs.
    """
    from onnxruntime.quantization.calibrate import create_calibrator

    ort_method = _ort_method(method)
    extra: dict[str, Any] = {"symmetric": True}  # batches are fed 4 at a time: each collect_data call merges them
    op_types: list[str] | None = None
    if method == "entropy":
        extra.update({"num_bins": num_bins or 512, "num_quantized_bins": 128})
        op_types = list(QUANTIZE_OP_TYPES)
    elif method == "percentile":
        extra.update({"num_bins": num_bins or 2048, "percentile": percentile})
    total = len(source)
    with tempfile.TemporaryDirectory(prefix="vsrt-calib-") as tmp, _quiet():
        calibrator = create_calibrator(
            Path(onnx_path), op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=ort_method, extra_options=extra,
        )
        chunk: list[dict[str, np.ndarray]] = []
        done = 0
        for feeds in source.batches():
            chunk.append(feeds)
            if len(chunk) == 4:
                calibrator.collect_data(_ListReader(chunk))
                done += len(chunk)
                chunk = []
                if progress:
                    progress(done, total)
        if chunk:
            calibrator.collect_data(_ListReader(chunk))
            done += len(chunk)
            if progress:
                progress(done, total)
        if done == 0:
            raise InputError(f"calibration source for stage '{source.stage}' yielded no data")
        data = calibrator.compute_data()
    ranges = {}
    nonfinite = []
    for name, td in data.items():
        lo, hi = td.range_value
        lo, hi = float(np.min(lo)), float(np.max(hi))
        if np.isfinite(lo) and np.isfinite(hi):
            ranges[name] = (lo, hi)
        else:  # e.g. a -inf attention mask: no INT8 scale exists, the tensor stays in float
            nonfinite.append(name)
    desc = dict(source.describe())
    desc.update({"digest": source.digest(), "percentile": percentile if method == "percentile" else None})
    if nonfinite:
        desc["nonfinite_tensors"] = sorted(nonfinite)
    return CalibrationStats(method, ranges, desc)


class _ListReader:
    """A CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


@contextlib.contextmanager
def _quiet():
    """Silence ONNX Runtime's quantization chatter (pre-processing advice, per-tensor warnings)."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(old)


def default_exclusions(model: onnx.ModelProto, op_types: Iterable[str] = QUANTIZE_OP_TYPES) -> dict[str, str]:
    """Nodes that are never quantized: ``{name: reason}`` (recurrent ops, loops, matrix-vector products)."""
    ensure_node_names(model)
    inits = {i.name: i for i in model.graph.initializer}
    op_types = set(op_types)
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in NEVER_QUANTIZE_OP_TYPES:
            out[node.name] = f"{node.op_type}: recurrent/control flow, kept in float"
        elif node.op_type == "MatMul" and node.op_type in op_types and len(node.input) > 1:
            b = inits.get(node.input[1])
            if b is not None and len(b.dims) == 1:
                out[node.name] = "MatMul with a rank-1 constant (matrix-vector): nothing to gain"
    return out


def quantizable_nodes(model: onnx.ModelProto, op_types: Iterable[str] = QUANTIZE_OP_TYPES) -> list[str]:
    """Names of the nodes :func:`quantize_int8` would quantize (before any caller exclusions)."""
    ensure_node_names(model)
    excl = default_exclusions(model, op_types)
    types = set(op_types)
    return [n.name for n in model.graph.node if n.op_type in types and n.name not in excl]


def quantize_int8(
    fp32: str | Path,
    dst: str | Path,
    stats: CalibrationStats,
    exclude_nodes: Iterable[str] | Mapping[str, str] = (),
    op_types: Iterable[str] = QUANTIZE_OP_TYPES,
    per_channel: bool = True,
) -> dict[str, Any]:
    """Write the Q/DQ INT8 graph of ``fp32`` to ``dst`` (atomically) using ``stats``.

    ``exclude_nodes``: node names kept in float, or ``{name: reason}`` (the reason is recorded).

    Returns ``{"quantized_nodes": [...], "excluded": {name: reason}, "qdq_nodes": n}``. Raises
    :class:`InputError` when the result fails :func:`check_qdq_for_tensorrt`.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    model = onnx.load(str(fp32))
    ensure_node_names(model)
    names = {n.name for n in model.graph.node}
    op_types = list(op_types)
    excluded = default_exclusions(model, op_types)
    reasons = dict(exclude_nodes) if isinstance(exclude_nodes, Mapping) else dict.fromkeys(
        exclude_nodes, INT8_GUARD_REASON)
    for n, reason in reasons.items():
        if n not in names:
            raise InputError(f"cannot exclude unknown node '{n}' from quantization")
        excluded.setdefault(n, reason)
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:  # an activation without a finite range cannot get a Q/DQ pair
        if node.op_type in op_types and node.name not in excluded:
            missing = [i for i in node.input[:2] if i and i not in inits and i not in stats.ranges]
            if missing:
                excluded[node.name] = f"input {missing[0]} has no finite calibration range, kept in float"
    candidates = [n.name for n in model.graph.node if n.op_type in op_types and n.name not in excluded]
    with tempfile.TemporaryDirectory(prefix="vsrt-q-") as tmp, _quiet():
        src = Path(tmp) / "named.onnx"
        onnx.save(model, str(src))
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(stats.to_ort(), cache)
        out = Path(tmp) / "int8.onnx"
        if candidates:
            quantize_static(
                str(src), str(out), None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=candidates,
                nodes_to_exclude=sorted(excluded),
                calibrate_method=_ort_method(stats.method),
                calibration_cache_path=cache,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "DedicatedQDQPair": False,
                    "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                    # Q/DQ on the inputs of Conv/Gemm only (TensorRT's recommended placement): an output Q/DQ
                    # would round a float result again before the next float op (GRU, norm) reads it. MatMul
                    # keeps its output Q/DQ: without it ONNX Runtime CPU fuses DQ→MatMul into
                    # MatMulIntegerToFloat, whose s8×s8 path saturates on CPUs without VNNI (cosine 0.95
                    # instead of 0.9998 on VSRN's GCN; the unfused graph is exact to 0.9998 either way)
                    "OpTypesToExcludeOutputQuantization": [t for t in op_types if t != "MatMul"],
                },
            )
            qmodel = onnx.load(str(out))
        else:  # nothing to quantize (e.g. a GRU-only text encoder): the graph stays float
            qmodel = model
    problems = check_qdq_for_tensorrt(qmodel)
    if problems:
        raise InputError("INT8 graph is not TensorRT-compatible: " + "; ".join(problems[:5]))
    onnx.checker.check_model(qmodel)
    with atomic_path(dst) as tmp_dst:
        onnx.save(qmodel, str(tmp_dst))
    quantized = _quantized_nodes(qmodel, set(op_types))
    return {
        "quantized_nodes": quantized,
        "excluded": excluded,
        "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in qmodel.graph.node),
        "method": stats.method,
        "settings": "QDQ, symmetric int8 activations, per-channel symmetric int8 weights, float biases",
    }


def _quantized_nodes(model: onnx.ModelProto, op_types: set[str]) -> list[str]:
    """Nodes of ``op_types`` whose two operands (data and weight) both come from DequantizeLinear nodes."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in op_types and len(n.input) > 1 and n.input[0] in dq_out and n.input[1] in dq_out]


def check_qdq_for_tensorrt(model: onnx.ModelProto) -> list[str]:
    """What TensorRT would reject or mis-handle in a Q/DQ graph (empty list: fine).

    Checks: INT8 zero points all 0 (symmetric); no int32 (bias) DequantizeLinear; per-channel scales only on
    constant weights; positive scales; no Q/DQ feeding a recurrent op directly.
    """
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    problems: list[str] = []
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(n.input[1]) if len(n.input) > 1 else None
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        if scale is None:
            problems.append(f"{n.name}: scale is not a constant")
            continue
        if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
            problems.append(f"{n.name}: non-positive or non-finite scale")
        if zp is not None:
            if zp.dtype != np.int8:
                problems.append(f"{n.name}: zero point of type {zp.dtype} (TensorRT needs int8)")
            elif np.any(zp != 0):
                problems.append(f"{n.name}: non-zero zero point (TensorRT needs symmetric quantization)")
        if n.op_type == "DequantizeLinear":
            x = inits.get(n.input[0])
            if x is not None and x.dtype == np.int32:
                problems.append(f"{n.name}: int32 (bias) dequantization; biases must stay float")
            if scale.ndim > 0 and scale.size > 1 and x is None:
                problems.append(f"{n.name}: per-channel scale on an activation")
            for c in consumers.get(n.output[0], []):
                if c.op_type in NEVER_QUANTIZE_OP_TYPES:
                    problems.append(f"{n.name}: feeds recurrent op {c.name}")
    return problems
