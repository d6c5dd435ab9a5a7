"""Stage weights as safetensors (``MODEL_DIR/weights/<stage>.safetensors``), written atomically."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vsrt.errors import CheckpointError
from vsrt.io import atomic_path
from vsrt.models.checkpoints import check_state_dict


def save_stage_weights(model_dir: str | Path, stage: str, state: dict[str, torch.Tensor]) -> Path:
    """Write a state dict (contiguous CPU copies; ``num_batches_tracked`` kept) to ``weights/<stage>.safetensors``."""
    path = Path(model_dir) / "weights" / f"{stage}.safetensors"
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "stage": stage})
    return path


def load_stage_weights(model_dir: str | Path, stage: str, module: torch.nn.Module) -> torch.nn.Module:
    """Load ``weights/<stage>.safetensors`` into ``module`` after checking keys and shapes; returns it in eval mode."""
    path = Path(model_dir) / "weights" / f"{stage}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: model directory has no weights for stage '{stage}'")
    state = load_file(str(path))
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_state_dict(state, expected, f"{path}")
    module.load_state_dict(state, strict=False)
    return module.eval()
