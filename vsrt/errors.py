"""Errors that carry a message meant for the user.

The CLI prints a :class:`VsrtError` as one clear line (no traceback) and exits with its ``exit_code``.
"""

from __future__ import annotations


class VsrtError(Exception):
    """Base class: something the user can fix, described in words."""

    exit_code = 2


class InputError(VsrtError):
    """A file, argument or array given by the user is missing or malformed."""


class CheckpointError(InputError):
    """An original checkpoint or vocabulary cannot be loaded or does not fit the model."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global that the restricted loader does not allow."""


class ManifestError(VsrtError):
    """A model directory's manifest is missing, malformed, or disagrees with the files beside it."""


class EngineMismatchError(ManifestError):
    """A TensorRT engine was built for another TensorRT version or GPU."""


class ParityError(VsrtError):
    """An exported graph does not reproduce the PyTorch model within tolerance."""

    exit_code = 3


class AccuracyBudgetError(VsrtError):
    """A reduced-precision model loses more retrieval accuracy than the budget allows."""

    exit_code = 3


class BackendUnavailableError(VsrtError):
    """The requested inference backend is not installed or cannot run here."""
