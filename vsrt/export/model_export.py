"""``vsrt export``: every stage of a model directory to parity-checked FP32 ONNX."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vsrt.errors import InputError
from vsrt.export.onnx_export import DEFAULT_OPSET, export_stage
from vsrt.modeldir import config_digest, open_manifest, read_model_info
from vsrt.models.registry import get_family
from vsrt.models.weights import load_stage_weights


def load_torch_model(model_dir: str | Path) -> tuple[Any, Any, dict[str, torch.nn.Module]]:
    """``(family, config, {stage: module in eval mode with the directory's weights})``."""
    info = read_model_info(model_dir)
    fam = get_family(info.family)
    cfg = fam.config_from_dict(info.config)
    modules = fam.build(cfg)
    for stage, module in modules.items():
        load_stage_weights(model_dir, stage, module)
    return fam, cfg, modules


def export_model(
    model_dir: str | Path,
    stages: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
    include_detector: bool = True,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export the model's stages (all, or ``stages``) and the detector's when the directory has one.

    Returns ``{stage: parity}``. The manifest is saved once at the end, after every file is in place.
    """
    model_dir = Path(model_dir)
    manifest = open_manifest(model_dir)
    info = read_model_info(model_dir)
    results: dict[str, dict[str, Any]] = {}
    if info.family != "detector":
        fam, cfg, modules = load_torch_model(model_dir)
        exports = fam.stage_exports(cfg, modules)
        known = [se.name for se in exports]
        for s in stages or []:
            if s not in known and s not in ("backbone_rpn", "roi_head"):
                raise InputError(f"model '{fam.name}' has no stage '{s}' (stages: {', '.join(known)})")
        for se in exports:
            if stages and se.name not in stages:
                continue
            results[se.name] = export_stage(se, model_dir, manifest, opset=opset)
            if on_stage:
                on_stage(se.name, results[se.name])
    manifest.config_sha256 = config_digest(info.raw)
    detector_weights = model_dir / "weights" / "detector.safetensors"
    if include_detector and detector_weights.is_file() and (not stages or {"backbone_rpn", "roi_head"} & set(stages)):
        from vsrt.export.detector import export_detector_stages

        export_detector_stages(model_dir, manifest, opset=opset)
        for s in ("backbone_rpn", "roi_head"):
            if s in manifest.stages and "fp32" in manifest.stages[s].files:
                results[s] = manifest.stages[s].files["fp32"].parity
                if on_stage:
                    on_stage(s, results[s])
    import onnx
    import onnxruntime

    manifest.versions.update(
        {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    )
    manifest.save(model_dir)
    return results
