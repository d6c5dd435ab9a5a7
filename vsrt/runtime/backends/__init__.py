"""Inference backends behind one interface (:class:`~vsrt.runtime.backends.base.Backend`)."""

from vsrt.runtime.backends.base import Backend, check_feeds
from vsrt.runtime.backends.onnxruntime_backend import OrtBackend, available_providers

__all__ = ["Backend", "OrtBackend", "available_providers", "check_feeds"]
