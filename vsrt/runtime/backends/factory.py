"""Pick and open the backend for one stage of a model directory."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from vsrt.errors import BackendUnavailableError, EngineMismatchError
from vsrt.manifest import Manifest
from vsrt.runtime.backends.base import Backend
from vsrt.runtime.backends.onnxruntime_backend import (
    PROVIDER_ALIASES,
    OrtBackend,
    available_providers,
    cuda_ep_options,
    tensorrt_ep_options,
)

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
            except EngineMismatchError as exc:  # refused engine: say so, then use the next backend
                warnings.warn(f"TensorRT engine not used: {exc}", stacklevel=2)
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
    options["provider_options"] = ep_options(model_dir, manifest, stage, precision, providers,
                                             options.pop("provider_options", None), options.pop("device_id", 0))
    return OrtBackend(path, providers=providers, stage=stage, **options)


def ep_options(
    model_dir: str | Path,
    manifest: Manifest,
    stage: str,
    precision: str,
    providers: list[str],
    user: dict[str, dict[str, Any]] | None = None,
    device_id: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per-provider options for ONNX Runtime's CUDA / TensorRT providers; ``user`` entries override them.

    The TensorRT provider gets the stage's optimisation profile from the manifest and an engine cache in
    ``engines/ort_trt/<stage>_<precision>/``.
    """
    from vsrt.export.engine_names import ENGINE_DIR

    names = {PROVIDER_ALIASES.get(p, p) for p in providers}
    out: dict[str, dict[str, Any]] = {}
    if "CUDAExecutionProvider" in names:
        out["CUDAExecutionProvider"] = cuda_ep_options(device_id)
    if "TensorrtExecutionProvider" in names:
        st = manifest.stage(stage)
        profile = {t.name: {"min": t.min, "opt": t.opt, "max": t.max} for t in st.inputs
                   if t.min is not None and t.opt is not None and t.max is not None}
        cache = Path(model_dir) / ENGINE_DIR / "ort_trt" / f"{stage}_{precision}"
        out["TensorrtExecutionProvider"] = tensorrt_ep_options(profile or None, cache, precision,
                                                               device_id=device_id)
    for name, opts in (user or {}).items():
        out.setdefault(name, {}).update(opts)
    return out
