"""ONNX Runtime backend (CPU by default; CUDA / TensorRT execution providers when installed and asked for)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import BackendUnavailableError, InputError
from vsrt.manifest import TensorSpec
from vsrt.runtime.backends.base import FixedSpecs, check_feeds

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(double)": "float64",
}

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    """ONNX Runtime execution providers usable in this process."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _shape_list(profile: dict[str, dict[str, list[int]]], key: str) -> str:
    """ONNX Runtime's TensorRT profile syntax: ``regions:1x36x2048,tokens:1x2``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in p[key])}" for name, p in profile.items())


def tensorrt_ep_options(
    profile: dict[str, dict[str, list[int]]] | None = None,
    cache_dir: str | Path | None = None,
    precision: str = "fp32",
    workspace_mib: int = 2048,
    device_id: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """Options for ONNX Runtime's ``TensorrtExecutionProvider`` for one stage graph.

    * explicit optimisation profile (``trt_profile_min/opt/max_shapes``) from the manifest's min/opt/max, so the
      provider builds one engine for the whole range instead of rebuilding per new shape;
    * engine and timing caches under ``cache_dir`` (delete it when ONNX Runtime, TensorRT or the GPU change);
    * precision comes from the graph itself: FP16 graphs are already typed, INT8 graphs carry Q/DQ nodes
      (``trt_int8_enable`` without a calibration table — tables must not be combined with Q/DQ).

    ``overrides`` (any documented ``trt_*`` option) win over these defaults.
    """
    opts: dict[str, Any] = {
        "device_id": device_id,
        "trt_max_workspace_size": int(workspace_mib) << 20,
        "trt_fp16_enable": precision == "fp16",
        "trt_int8_enable": precision == "int8",
        "trt_int8_use_native_calibration_table": False,
    }
    if cache_dir is not None:
        cache = str(cache_dir)
        opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                     "trt_timing_cache_enable": True, "trt_timing_cache_path": cache})
    if profile:
        opts.update({"trt_profile_min_shapes": _shape_list(profile, "min"),
                     "trt_profile_opt_shapes": _shape_list(profile, "opt"),
                     "trt_profile_max_shapes": _shape_list(profile, "max")})
    opts.update(overrides)
    return opts


def cuda_ep_options(device_id: int = 0, **overrides: Any) -> dict[str, Any]:
    """Options for ONNX Runtime's ``CUDAExecutionProvider`` (exhaustive cuDNN search off: stable start-up time)."""
    opts: dict[str, Any] = {
        "device_id": device_id,
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": True,
    }
    opts.update(overrides)
    return opts


def resolve_providers(
    providers: list[str] | None, provider_options: dict[str, dict[str, Any]] | None = None
) -> list[Any]:
    """Turn short names (``cpu``, ``cuda``, ``tensorrt``) into ONNX Runtime provider entries.

    A provider that is asked for but not installed is an error naming what to install, never a silent
    fallback.
    """
    avail = available_providers()
    names = [PROVIDER_ALIASES.get(p, p) for p in (providers or ["cpu"])]
    out: list[Any] = []
    for n in names:
        if n not in avail:
            hint = "pip install 'vsrt[gpu]' (onnxruntime-gpu) on a CUDA machine" if n != "CPUExecutionProvider" else ""
            raise BackendUnavailableError(
                f"ONNX Runtime provider {n} is not available here (available: {', '.join(avail)}). {hint}".strip()
            )
        opts = (provider_options or {}).get(n)
        out.append((n, opts) if opts else n)
    if "CPUExecutionProvider" not in names:
        out.append("CPUExecutionProvider")
    return out


class OrtBackend(FixedSpecs):
    """Runs one ONNX file with ONNX Runtime.

    Args:
        path: the ONNX file.
        providers: short or full provider names in priority order (default ``["cpu"]``).
        provider_options: per-provider option dicts, keyed by full provider name.
        intra_op_threads: threads for one op (default: ONNX Runtime's choice, or ``VSRT_ORT_THREADS``).
        stage: stage name used in error messages.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        provider_options: dict[str, dict[str, Any]] | None = None,
        intra_op_threads: int | None = None,
        stage: str = "",
    ) -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise InputError(f"ONNX file not found: {p}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = intra_op_threads or int(os.environ.get("VSRT_ORT_THREADS", "0") or 0)
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.stage = stage or p.stem
        self.path = p
        try:
            self.session = ort.InferenceSession(
                str(p), sess_options=so, providers=resolve_providers(providers, provider_options)
            )
        except BackendUnavailableError:
            raise
        except Exception as exc:
            raise InputError(f"ONNX Runtime could not load {p}: {exc}") from None
        self._inputs = [self._spec(i) for i in self.session.get_inputs()]
        self._outputs = [self._spec(o) for o in self.session.get_outputs()]

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) else (d or "?") for d in arg.shape]
        return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses."""
        return list(self.session.get_providers())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.stage, self._inputs, feeds)
        cast = {}
        for s in self._inputs:
            a = np.asarray(feeds[s.name])
            want = np.dtype(s.dtype) if s.dtype in _ORT_TYPES.values() else a.dtype
            cast[s.name] = np.ascontiguousarray(a, dtype=want)
        outs = self.session.run(None, cast)
        return {o.name: v for o, v in zip(self._outputs, outs)}
