"""The training loop's learning-rate schedule: step decay, and the factor applied once hardest negatives start."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from vsrt.training.trainer import TrainConfig, fit


class _Quadratic:
    """A one-parameter trainable whose dev similarities always rank the true caption first."""

    def __init__(self) -> None:
        self.w = torch.nn.Parameter(torch.ones(3))
        self.hard_flags: list[bool] = []

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.w]

    def train_mode(self, on: bool) -> None:
        pass

    def loss(self, batch: Any, max_violation: bool) -> torch.Tensor:
        self.hard_flags.append(max_violation)
        return (self.w**2).sum()

    def similarities(self, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        n = len(images)
        return np.repeat(np.eye(n, dtype=np.float32), 5, axis=1)

    def state(self) -> Any:
        return {"w": self.w.detach().clone()}

    def load_state(self, state: Any) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])


def _run(**kw: Any) -> tuple[list[dict[str, Any]], list[bool]]:
    model = _Quadratic()
    dev = (np.zeros((4, 2, 2), np.float32), np.zeros((20, 3), np.int64), np.full(20, 3, np.int64))
    cfg = TrainConfig(epochs=5, learning_rate=1e-2, lr_update=4, threads=1, **kw)
    result = fit(model, [object(), object()], dev, cfg)
    return result.history, model.hard_flags


def test_hard_negative_scale_applies_from_the_switch() -> None:
    history, flags = _run(warmup_epochs=2, hard_negative_lr_scale=0.3)
    assert [h["hardest_negative"] for h in history] == [False, False, True, True, True]
    assert flags == [False] * 4 + [True] * 6
    assert [h["lr"] for h in history] == pytest.approx([1e-2, 1e-2, 3e-3, 3e-3, 3e-4])


def test_default_schedule_is_plain_step_decay() -> None:
    history, _ = _run()
    assert [h["lr"] for h in history] == pytest.approx([1e-2, 1e-2, 1e-2, 1e-2, 1e-3])
