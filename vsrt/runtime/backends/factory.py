"""Pick and open the backend for one stage of a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vsrt.errors import BackendUnavailableError
from vsrt.manifest import Manifest
from vsrt.runtime.backends.base import Backend
from vsrt.runtime.backends.onnxruntime_backend import OrtBackend, available_providers

#: backend names accepted by :func:`create_backend` (``auto`` picks the best available)
BACKENDS = ("auto", "onnxruntime", "ort-cuda", "ort-tensorrt", "tensorrt")


def auto_backend_order() -> list[str]:
    """Backends to try for ``backend="auto"``, best first, among those usable here."""
    order: list[str] = []
    try:
        from vsrt.runtime.backends import tensorrt_backend  # noqa: F401  (optional module)

        if tensorrt_backend.is_available():
            order.append("tensorrt")
    except ImportError:
        pass
    provs = available_providers()
    if "CUDAExecutionProvider" in provs:
        order.append("ort-cuda")
    order.append("onnxruntime")
    return order


def create_backend(
    model_dir: str | Path,
    manifest: Manifest,
    stage: str,
    backend: str = "auto",
    precision: str = "fp32",
    **options: Any,
) -> Backend:
    """Open ``stage`` of the model in ``model_dir`` with ``backend`` at ``precision``.

    ``auto`` tries TensorRT (an engine matching this GPU and TensorRT version must exist), then ONNX
    Runtime with CUDA, then ONNX Runtime on the CPU.
    """
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        errors = []
        for cand in auto_backend_order():
            try:
                return create_backend(model_dir, manifest, stage, cand, precision, **options)
            except BackendUnavailableError as exc:
                errors.append(f"{cand}: {exc}")
        raise BackendUnavailableError(f"no backend could open stage '{stage}': " + "; ".join(errors))
    if backend == "tensorrt":
        try:
            from vsrt.runtime.backends.tensorrt_backend import TensorRTBackend
        except ImportError as exc:
            raise BackendUnavailableError(f"TensorRT backend unavailable: {exc}") from None
        return TensorRTBackend.from_model_dir(model_dir, manifest, stage, precision, **options)
    providers = {"onnxruntime": ["cpu"], "ort-cuda": ["cuda"], "ort-tensorrt": ["tensorrt", "cuda"]}[backend]
    providers = options.pop("providers", None) or providers
    path = manifest.file_path(model_dir, stage, precision)
    return OrtBackend(path, providers=providers, stage=stage, **options)
