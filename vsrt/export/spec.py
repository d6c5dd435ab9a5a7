"""What a family tells the exporter about each of its stages (torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from vsrt.manifest import TensorSpec


@dataclass
class StageExport:
    """One stage to export.

    Attributes:
        name: stage name (``visual``, ``text``, ``pair_scorer``…); file ``onnx/<name>.<precision>.onnx``.
        module: export-friendly module; ``forward(*inputs)`` returns a tuple in the order of ``outputs``.
        inputs / outputs: tensor specs (symbolic dims are names; inputs carry TensorRT min/opt/max shapes).
        make_inputs: ``(batch, seed, **dims) -> tuple of tensors``: valid random inputs for parity checks.
        reference: the original-faithful PyTorch computation (e.g. the packed GRU) on the same inputs, returning the
            outputs in the same order; ``None`` entries mean "compare against ``module`` itself".
        parity_cases: ``(batch, dims)`` pairs on which parity is measured.
        min_cosine: export fails below this per-sample cosine (FP32).
        expect_ops: op types whose attributes the exporter validates (e.g. GRU ``linear_before_reset``).
    """

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    make_inputs: Callable[..., tuple[torch.Tensor, ...]]
    reference: Callable[..., tuple[torch.Tensor | None, ...]] | None = None
    parity_cases: list[tuple[int, dict[str, int]]] = field(default_factory=lambda: [(1, {}), (4, {})])
    min_cosine: float = 0.99999
    info: dict = field(default_factory=dict)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes from the symbolic dims of the specs."""
        axes: dict[str, dict[int, str]] = {}
        for t in [*self.inputs, *self.outputs]:
            dims = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if dims:
                axes[t.name] = dims
        return axes
