"""Export one stage to ONNX, validate the graph, and measure parity against the PyTorch reference."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from vsrt.errors import ParityError
from vsrt.export.parity import compare_arrays, merge_parity
from vsrt.export.spec import StageExport
from vsrt.io import atomic_path
from vsrt.manifest import Manifest, Stage

DEFAULT_OPSET = 17


def check_rnn_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Validate every GRU node: PyTorch's GRU semantics need ``linear_before_reset=1``.

    (torch's dynamo exporter once wrote ``linear_before_reset=0``, a silent error of up to 14%.)
    Returns a description of each GRU found.
    """
    found = []
    for node in model.graph.node:
        if node.op_type != "GRU":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        lbr = int(attrs.get("linear_before_reset", 0))
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        if lbr != 1:
            raise ParityError(
                f"GRU node '{node.name}' has linear_before_reset={lbr}; PyTorch GRUs need 1 "
                "(export with the TorchScript exporter, dynamo=False)"
            )
        found.append({"node": node.name, "hidden_size": int(attrs.get("hidden_size", 0)), "direction": direction})
    return found


def _slim(path: Path) -> bool:
    """Clean the graph with onnxslim (constant folding, dead-node removal) in place; False if unavailable."""
    try:
        import onnxslim
    except ImportError:
        return False
    with contextlib.redirect_stdout(io.StringIO()):
        slimmed = onnxslim.slim(str(path))
    onnx.save(slimmed, str(path))
    return True


def _to_numpy_feeds(se: StageExport, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {spec.name: t.detach().cpu().numpy() for spec, t in zip(se.inputs, inputs)}


def measure_parity(se: StageExport, onnx_path: Path, threads: int | None = None) -> dict[str, Any]:
    """Run ``se``'s parity cases through PyTorch (reference) and ONNX Runtime CPU; worst case per output."""
    from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

    backend = OrtBackend(onnx_path, stage=se.name, intra_op_threads=threads)
    results = []
    for i, (batch, dims) in enumerate(se.parity_cases):
        inputs = se.make_inputs(batch, 1000 + i, **dims)
        with torch.no_grad():
            ref = se.reference(*inputs) if se.reference else se.module(*inputs)
            own = se.module(*inputs) if se.reference else ref
        got = backend.run(_to_numpy_feeds(se, inputs))
        case = {}
        for j, spec in enumerate(se.outputs):
            r = ref[j] if ref[j] is not None else own[j]
            case[spec.name] = compare_arrays(r.detach().cpu().numpy(), got[spec.name])
        results.append(case)
    return merge_parity(results)


def export_stage(
    se: StageExport,
    model_dir: str | Path,
    manifest: Manifest,
    opset: int = DEFAULT_OPSET,
    slim: bool = True,
) -> dict[str, Any]:
    """Export ``se`` to ``onnx/<stage>.fp32.onnx``, check it, measure parity, register it in ``manifest``.

    The file appears only if every check passes (``onnx.checker``, GRU attributes, parity ≥ ``se.min_cosine``);
    otherwise a :class:`ParityError` is raised and nothing is written. The manifest is not saved here.
    """
    model_dir = Path(model_dir)
    rel = f"onnx/{se.name}.fp32.onnx"
    se.module.eval()
    example = se.make_inputs(2, 0)
    with atomic_path(model_dir / rel) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            se.module,
            example,
            str(tmp),
            input_names=[t.name for t in se.inputs],
            output_names=[t.name for t in se.outputs],
            dynamic_axes=se.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        slimmed = _slim(tmp) if slim else False
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model)
        rnns = check_rnn_nodes(model)
        parity = measure_parity(se, tmp)
        if parity["min_cosine"] < se.min_cosine:
            raise ParityError(
                f"stage '{se.name}': ONNX Runtime vs PyTorch min cosine {parity['min_cosine']:.7f} < "
                f"{se.min_cosine} (max abs err {parity['max_abs_err']:.3g}); export refused"
            )
    parity.update({"reference": "pytorch eager fp32", "backend": "onnxruntime cpu fp32", "threshold": se.min_cosine})
    info = dict(se.info)
    info.update({"opset": opset, "onnxslim": slimmed, "rnn_nodes": rnns})
    manifest.set_stage(Stage(se.name, se.inputs, se.outputs, info=info))
    manifest.stages[se.name].files = {}
    manifest.add_file(model_dir, se.name, "fp32", rel, parity=parity)
    return parity
