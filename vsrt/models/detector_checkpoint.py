"""MILVLG bottom-up-attention.pytorch checkpoints (``.pth``) → the detector's state dict, validated.

The file is read through the restricted unpickler (:func:`vsrt.models.checkpoints.load_torch_checkpoint`), so a
pickle that asks for anything but tensors and containers is refused before it runs. Accepted layouts:
``{"model": state_dict, ...}`` (detectron2's ``DetectionCheckpointer``) or a bare state dict. ``num_batches_tracked``
buffers are dropped; the anchor buffer (``proposal_generator.anchor_generator.cell_anchors.0``) is checked against
the 12 Caffe anchors and dropped. Every other key must match the model exactly (name and shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsrt.detector_config import DetectorConfig
from vsrt.errors import CheckpointError
from vsrt.models.checkpoints import check_state_dict, load_torch_checkpoint
from vsrt.models.detector.anchors import config_anchors
from vsrt.models.detector.bua import BUADetector

ANCHOR_PREFIX = "proposal_generator.anchor_generator.cell_anchors"


def extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object (``{"model": sd}`` or a bare ``sd``)."""
    sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{source} holds no state dict (expected {{'model': state_dict}} or a state dict)")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state dict entries that are not tensors: {', '.join(bad[:8])}")
    return dict(sd)


def check_anchors(state: dict[str, torch.Tensor], cfg: DetectorConfig, source: str) -> None:
    """Compare every ``cell_anchors`` buffer with the Caffe anchors; an error naming the key if they differ."""
    want = config_anchors(cfg)
    for key in [k for k in state if k.startswith(ANCHOR_PREFIX)]:
        got = state[key].detach().cpu().numpy().astype(np.float32)
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-3):
            raise CheckpointError(
                f"{source}: '{key}' {list(got.shape)} is not the 12 Caffe anchors (scales {cfg.anchor_scales} × ratios "
                f"{cfg.anchor_ratios}, ratio-major); first row {got.reshape(-1)[:4].tolist()} vs {want[0].tolist()} "
                "— not a caffe-mode bottom-up-attention checkpoint"
            )


def clean_state_dict(state: dict[str, torch.Tensor], cfg: DetectorConfig, source: str) -> dict[str, torch.Tensor]:
    """Drop ``num_batches_tracked`` and (checked) anchor buffers; validate keys and shapes against the model."""
    check_anchors(state, cfg, source)
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") and not k.startswith(ANCHOR_PREFIX)}
    model = BUADetector(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(kept, expected, source)
    return {k: kept[k].detach().to(torch.float32).contiguous() for k in expected}


def load_butd_checkpoint(path: str | Path, cfg: DetectorConfig) -> dict[str, torch.Tensor]:
    """Read a MILVLG ``.pth`` safely and return the validated state dict (float32, model key order)."""
    obj = load_torch_checkpoint(path)
    return clean_state_dict(extract_state_dict(obj, str(path)), cfg, str(path))


def add_detector(
    model_dir: str | Path,
    state: dict[str, torch.Tensor],
    cfg: DetectorConfig,
    source: dict[str, Any],
    force: bool = False,
) -> Path:
    """Write ``weights/detector.safetensors`` and ``config.json["detector"]`` into ``model_dir``.

    An existing model directory (with ``config.json``) gains the detector beside its other stages; otherwise a
    ``family: "detector"`` directory is created. The manifest is rewritten last with the new config checksum and the
    source recorded under ``source["detector"]``. An existing detector is replaced only with ``force``.
    """
    from vsrt.errors import InputError
    from vsrt.io import atomic_write_json
    from vsrt.manifest import Manifest
    from vsrt.modeldir import CONFIG_NAME, config_digest, open_manifest, read_model_info
    from vsrt.models.weights import save_stage_weights

    model_dir = Path(model_dir)
    cfg.validate()
    if (model_dir / CONFIG_NAME).is_file():
        info = read_model_info(model_dir)
        manifest = open_manifest(model_dir)
        raw = dict(info.raw)
        if "detector" in raw and not force:
            raise InputError(f"{model_dir} already has a detector; pass --force to replace it")
    else:
        if model_dir.exists() and any(model_dir.iterdir()):
            raise InputError(f"{model_dir} exists, is not empty and is not a vsrt model directory")
        raw = {"family": "detector", "config": {}}
        manifest = Manifest(family="detector")
    raw["detector"] = cfg.to_dict()
    save_stage_weights(model_dir, "detector", state)
    atomic_write_json(model_dir / CONFIG_NAME, raw)
    for stage in ("backbone_rpn", "roi_head"):  # graphs of a previous detector no longer match its weights
        manifest.stages.pop(stage, None)
    manifest.engines = [e for e in manifest.engines if e.get("stage") not in ("backbone_rpn", "roi_head")]
    manifest.config_sha256 = config_digest(raw)
    manifest.source["detector"] = source
    manifest.save(model_dir)
    return model_dir
