"""FP16 ONNX: the weights and most compute in float16, graph inputs/outputs and sensitive ops kept in float32.

TensorRT 11 and TensorRT-RTX are strongly typed: the precision of every layer is the precision written in the
ONNX. This module writes such a graph with ONNX Runtime's float16 converter
(``onnxruntime.transformers.float16.convert_float_to_float16``), which inserts the Cast nodes around the nodes it
is told to keep in float32:

* every node whose type is in :data:`SENSITIVE_OP_TYPES` (reductions, norms, softmax / log-sum-exp, exp/log,
  square roots: float16 overflows or loses the small terms there), and
* the division or multiplication that applies a norm (``x / sqrt(sum(x²))``: VSRN's ``l2norm``), found by
  following the graph from those nodes,
* plus any nodes the caller names (the accuracy guard's sensitivity pass adds the ones it measured as harmful).

The result runs on TensorRT 10 (as a strongly typed network), TensorRT 11 / TensorRT-RTX and ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import onnx

from vsrt.errors import InputError
from vsrt.io import atomic_path

#: the reason recorded for a node kept in FP32 by name (the accuracy guard's sensitivity pass, or the user)
FP16_GUARD_REASON = "measured sensitive (accuracy guard)"
#: op types kept in float32 in every FP16 graph
SENSITIVE_OP_TYPES = frozenset(
    {
        "ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp",
        "ReduceProd", "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
        "LpNormalization", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Erf",
    }
)
#: ops that apply a norm computed by a sensitive op (kept in float32 when fed by one)
_NORM_APPLY_TYPES = frozenset({"Div", "Mul"})
#: ops the float16 converter must never touch (ONNX Runtime's own list plus region ops)
_CONVERTER_BLOCK = ("NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample", "Resize")


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (``<op>_<index>``) so nodes can be listed and excluded by name."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def sensitive_nodes(model: onnx.ModelProto, op_types: Iterable[str] = SENSITIVE_OP_TYPES) -> dict[str, str]:
    """Nodes to keep in float32: ``{node name: reason}``. Names must be set (:func:`ensure_node_names`)."""
    op_types = frozenset(op_types)
    keep: dict[str, str] = {}
    producers: dict[str, onnx.NodeProto] = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in op_types:
            keep[node.name] = f"{node.op_type}: reduction/normalisation"
    for node in model.graph.node:
        if node.op_type in _NORM_APPLY_TYPES and len(node.input) > 1:
            src = producers.get(node.input[1])
            if src is not None and src.name in keep:
                keep[node.name] = f"{node.op_type}: applies the norm computed by {src.name}"
    return keep


def convert_fp16(
    src: str | Path | onnx.ModelProto,
    dst: str | Path,
    keep_fp32_nodes: Iterable[str] | Mapping[str, str] = (),
    keep_fp32_op_types: Iterable[str] = SENSITIVE_OP_TYPES,
) -> dict[str, Any]:
    """Write an FP16 copy of ``src`` to ``dst`` (atomically) with float32 inputs/outputs.

    ``keep_fp32_nodes``: node names to keep in float32 as well, or ``{name: reason}`` (the reason is recorded).

    Returns what was done: ``{"fp32_nodes": {name: reason}, "fp16_nodes": count, "casts": count}``.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src)) if not isinstance(src, onnx.ModelProto) else src
    ensure_node_names(model)
    names = {n.name for n in model.graph.node}
    if isinstance(keep_fp32_nodes, Mapping):
        extra = dict(keep_fp32_nodes)
    else:
        extra = dict.fromkeys(keep_fp32_nodes, FP16_GUARD_REASON)
    unknown = [n for n in extra if n not in names]
    if unknown:
        raise InputError(f"cannot keep unknown nodes in FP32: {', '.join(unknown[:5])}")
    keep = sensitive_nodes(model, keep_fp32_op_types)
    for n, reason in extra.items():
        keep.setdefault(n, reason)
    io_before = _io_types(model)
    casts_before = sum(n.op_type == "Cast" for n in model.graph.node)
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(_CONVERTER_BLOCK)),
        node_block_list=sorted(keep),
    )
    topological_sort(converted)  # the converter appends its input Casts at the end
    folded = fold_cast_pairs(converted)
    if _io_types(converted) != io_before:
        raise InputError("FP16 conversion changed the graph's input/output types; refusing to write it")
    onnx.checker.check_model(converted)
    with atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
    node_count = len(model.graph.node)
    return {
        "fp32_nodes": keep,
        "fp16_nodes": node_count - len(keep),
        "casts": sum(n.op_type == "Cast" for n in converted.graph.node) - casts_before,
        "folded_cast_pairs": folded,
        "converter": "onnxruntime.transformers.float16 (keep_io_types=True)",
    }


def fold_cast_pairs(model: onnx.ModelProto) -> int:
    """Remove float32 → float16 → float32 round trips the converter leaves between float32 nodes.

    The converter keeps each blocked node in float32 on its own: Cast to float16 after it, Cast back before the
    next — so a chain like ``Pow → ReduceSum → Sqrt → Div`` would still round (and could overflow) in float16
    between its steps, and the graph output would be rounded to float16 before its final Cast. Each
    ``Cast(to=float32)`` whose input is a ``Cast(to=float16)`` of a float32 tensor is bypassed (becoming an
    ``Identity`` when it produces a graph output); Casts left without consumers are removed. Returns how many
    round trips were folded.
    """
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    folded = 0
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        src = producer.get(node.input[0])
        if src is None or cast_to(src) != onnx.TensorProto.FLOAT16:
            continue
        if types.get(src.input[0]) != onnx.TensorProto.FLOAT:
            continue
        folded += 1
        if node.output[0] in outputs:
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = src.input[0]
        else:
            rename[node.output[0]] = src.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    while True:  # drop Casts nobody reads any more
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("Cast", "Identity") and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    return folded


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder ``model.graph.node`` in place so every node comes after the producers of its inputs (stable)."""
    graph = model.graph
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    for start in range(len(nodes)):
        stack = [(start, iter(sorted(deps[start])))]
        if state[start]:
            continue
        state[start] = 1
        while stack:
            i, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[i] = 2
                order.append(i)
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
            elif state[nxt] == 1:
                raise InputError(f"graph has a cycle through node '{nodes[nxt].name}'")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _io_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [(v.name, v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]]
