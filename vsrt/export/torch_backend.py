"""A PyTorch stage behind the runtime's Backend interface, for side-by-side evaluation (torch)."""

from __future__ import annotations

import numpy as np
import torch

from vsrt.export.spec import StageExport
from vsrt.manifest import TensorSpec
from vsrt.runtime.backends.base import check_feeds


class TorchBackend:
    """Runs a stage's PyTorch computation: the original-faithful reference where the family defines one
    (e.g. VSRN's packed GRU), else the export module. Same feeds and outputs as the ONNX graph."""

    name = "torch"

    def __init__(self, se: StageExport) -> None:
        self.se = se
        se.module.eval()

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.se.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.se.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.se.name, self.se.inputs, feeds)
        args = tuple(torch.from_numpy(np.array(feeds[s.name], dtype=s.dtype, order="C")) for s in self.se.inputs)
        with torch.no_grad():
            own = self.se.module(*args)
            ref = self.se.reference(*args) if self.se.reference else own
        return {
            spec.name: (ref[i] if ref[i] is not None else own[i]).numpy() for i, spec in enumerate(self.se.outputs)
        }


def torch_backends(model_dir: str) -> dict[str, TorchBackend]:
    """``{stage: TorchBackend}`` for every stage of the model in ``model_dir`` (weights from safetensors)."""
    from vsrt.export.model_export import load_torch_model

    fam, cfg, modules = load_torch_model(model_dir)
    return {se.name: TorchBackend(se) for se in fam.stage_exports(cfg, modules)}
