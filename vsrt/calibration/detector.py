"""Precision policy of the detector's two graphs (``backbone_rpn``, ``roi_head``) for ``vsrt calibrate``.

What FP16 keeps in float32, on top of :data:`vsrt.calibration.fp16.SENSITIVE_OP_TYPES` (which already keeps the
RPN's 2-way softmax, the class and attribute softmaxes and res5's spatial mean in float32):

* ``roi_head``: the whole **RoI coordinate path** — every node computed from the ``rois`` input alone (scaling by
  the spatial scale, Caffe's half-away rounding, bin sizes, floor/ceil, clipping, the int32 indices of the sparse
  RoIPool table). Box coordinates reach ~1000 pixels at full size, where float16 has a step of 0.5–1 pixel, so a
  float16 ``round(x / 16)`` or ``floor(p · bin)`` moves bin edges and the pooled cells differ from Caffe's; in
  float32 these integers are exact (they are what makes the standard-op RoIPool bit-identical to Caffe's). The
  pooled *values* (maxima of res4 cells) and the res5 / head compute go to float16.
* ``backbone_rpn``: nothing beyond the sensitive ops (the RPN softmax).

INT8: :func:`vsrt.calibration.int8.quantize_int8` only quantizes Conv / Gemm / MatMul, so the coordinate path
(Mul, Floor, Cast, Gather…) stays float32 by construction. The rule added here keeps ``roi_head``'s **box
predictor** in float — every quantizable node downstream of the ``pool5`` output (``cls_score``, the attribute
head's two Gemms): a Q/DQ on ``cls_score``'s input is a Q/DQ on ``pool5`` itself, so the region features the
retrieval models read would be rounded to the INT8 grid, and an INT8 ``cls_score`` can flip the class argmax that
selects the attribute head's class embedding. Measured with MinMax statistics on one photograph (full-size R101,
random O(1) weights; per-RoI min cosine vs FP32, everything quantized → box predictor in float): pool5 0.99976 →
0.99994, cls_prob 0.99848 → 0.99983, attr_prob 0.99884 → 0.99987 (on another photograph attr_prob 0.683 with
everything quantized). Those three Gemms are ~1 % of the head's multiply-adds (res5 is the rest). Calibration data
comes from :class:`vsrt.calibration.sources.ImageFolderSource` (the runtime detector run on a folder of images).
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from vsrt.calibration.fp16 import ensure_node_names

#: the detector's stages (as in ``vsrt.export.detector.stage_specs``)
DETECTOR_STAGES = ("backbone_rpn", "roi_head")
#: ops whose output carries no value of their input (only its shape / type)
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


def coordinate_nodes(
    model: onnx.ModelProto, coordinate_inputs: Iterable[str] = ("rois",), data_inputs: Iterable[str] = ("res4",)
) -> dict[str, str]:
    """Nodes computed from ``coordinate_inputs`` (and constants / shapes) only: ``{node name: reason}``.

    A node is on the coordinate path when at least one of its inputs comes, transitively, from a coordinate input
    and none carries a value of a ``data_inputs`` tensor (a ``Shape`` of the feature map is not a value). Constant
    nodes read only by coordinate nodes are included, so their values are never rounded to float16. Node names must
    be set (:func:`vsrt.calibration.fp16.ensure_node_names`).
    """
    graph = model.graph
    coord = set(coordinate_inputs)
    data = set(data_inputs)
    keep: dict[str, str] = {}
    for node in graph.node:  # graph order is topological (ONNX requires it)
        if node.op_type in _SHAPE_ONLY_OPS:
            continue
        ins = [i for i in node.input if i]
        if any(i in data for i in ins):
            data.update(node.output)
        elif any(i in coord for i in ins):
            coord.update(node.output)
            keep[node.name] = f"{node.op_type}: RoI coordinate arithmetic (exact integers need float32)"
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            users = consumers.get(node.output[0], [])
            if users and all(u in keep for u in users):
                keep[node.name] = "Constant read only by the RoI coordinate path"
    return keep


def fp16_keep_nodes(stage: str, model: onnx.ModelProto) -> dict[str, str]:
    """The detector-specific nodes ``stage`` keeps in float32 in its FP16 graph (see the module docstring);
    empty for stages that are not the detector's."""
    if stage != "roi_head":
        return {}
    names = {i.name for i in model.graph.input}
    if not {"rois", "res4"} <= names:
        return {}
    ensure_node_names(model)
    return coordinate_nodes(model)


def downstream_nodes(model: onnx.ModelProto, tensor: str, op_types: Iterable[str]) -> list[str]:
    """Names of the ``op_types`` nodes that read ``tensor`` directly or transitively (graph order)."""
    reached = {tensor}
    types = set(op_types)
    out = []
    for node in model.graph.node:
        if any(i in reached for i in node.input):
            reached.update(node.output)
            if node.op_type in types:
                out.append(node.name)
    return out


def int8_exclude_nodes(stage: str, model: onnx.ModelProto) -> dict[str, str]:
    """The detector-specific nodes ``stage`` keeps in float in its INT8 graph (see the module docstring): for
    ``roi_head`` the box predictor (quantizable nodes downstream of ``pool5``); empty otherwise."""
    from vsrt.calibration.int8 import QUANTIZE_OP_TYPES

    if stage != "roi_head" or "pool5" not in {o.name for o in model.graph.output}:
        return {}
    ensure_node_names(model)
    reason = "box predictor (reads pool5): kept in float so pool5 and the class argmax are not rounded"
    return dict.fromkeys(downstream_nodes(model, "pool5", QUANTIZE_OP_TYPES), reason)
