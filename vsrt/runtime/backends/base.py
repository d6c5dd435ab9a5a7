"""The one small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from vsrt.manifest import TensorSpec


@runtime_checkable
class Backend(Protocol):
    """Runs one stage graph. Inputs and outputs are numpy arrays keyed by tensor name.

    Every backend returns the same outputs for the same inputs, within the tolerance stated for its
    precision (see README, "Backends").
    """

    name: str

    @property
    def inputs(self) -> list[TensorSpec]:
        """The graph inputs (names, dtypes, shapes with symbolic dims)."""
        ...

    @property
    def outputs(self) -> list[TensorSpec]:
        """The graph outputs."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on ``feeds`` and return every output by name."""
        ...


class FixedSpecs:
    """``inputs`` / ``outputs`` for a backend whose tensor specs are fixed when it is built (``_inputs``,
    ``_outputs``)."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs


def check_feeds(stage: str, specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> None:
    """Raise a clear :class:`InputError` when ``feeds`` do not fit ``specs`` (names, rank, fixed dims)."""
    from vsrt.errors import InputError

    want = {s.name for s in specs}
    got = set(feeds)
    if want != got:
        raise InputError(
            f"stage '{stage}' takes inputs {sorted(want)}, got {sorted(got)}"
        )
    for s in specs:
        a = feeds[s.name]
        if a.ndim != len(s.shape):
            raise InputError(
                f"stage '{stage}' input '{s.name}' must have {len(s.shape)} dims {s.shape}, got shape {a.shape}"
            )
        for i, (d, g) in enumerate(zip(s.shape, a.shape)):
            if isinstance(d, int) and d >= 0 and d != g:
                raise InputError(
                    f"stage '{stage}' input '{s.name}' dim {i} must be {d} (shape {s.shape}), got {a.shape}"
                )
