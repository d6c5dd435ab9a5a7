"""TensorRT engine files: their names, their manifest entries, and whether one fits this machine. No torch.

An engine is tied to the TensorRT version that built it and to the GPU's compute capability (TensorRT-RTX engines
to the list of compute capabilities they were built for), and it is only valid for the ONNX it was built from.
The name says the first two — ``<stage>_<precision>_trt<version>_sm<XY>.engine`` (``trtrtx<version>`` for
TensorRT-RTX) — and the manifest entry records all of them with the engine's SHA-256, so a runtime can refuse
a mismatch *before* deserialising, with a message that says how to rebuild.

The runtime imports this module; it must stay free of torch (and of TensorRT: everything about "this machine"
comes in as a :class:`DeviceInfo`, from :func:`probe_device` or from a test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsrt.errors import BackendUnavailableError, EngineMismatchError
from vsrt.io import sha256_file
from vsrt.manifest import Manifest

#: builders (Python modules) an engine can come from
BUILDERS = ("tensorrt", "tensorrt_rtx")
ENGINE_DIR = "engines"


@dataclass(frozen=True)
class DeviceInfo:
    """What decides whether an engine loads here: the TensorRT flavour and version, and the GPU.

    ``sm`` is the compute capability as digits (``"87"`` for Orin, ``"90"`` for H100); ``None`` when no GPU.
    """

    builder: str
    trt_version: str
    sm: str | None
    name: str = ""


def short_version(version: str) -> str:
    """``10.3.0.26`` → ``10.3.0`` (what engine file names carry)."""
    return ".".join(version.split(".")[:3])


def engine_filename(stage: str, precision: str, trt_version: str, sm: str, builder: str = "tensorrt") -> str:
    """``visual_fp16_trt10.3.0_sm87.engine``; TensorRT-RTX: ``visual_fp16_trtrtx1.7.1_sm86.engine``.

    ``sm`` may list several compute capabilities joined by ``-`` (TensorRT-RTX multi-target builds).
    """
    if builder not in BUILDERS:
        raise ValueError(f"unknown builder '{builder}'")
    tag = ("rtx" if builder == "tensorrt_rtx" else "") + short_version(trt_version)
    return f"{stage}_{precision}_trt{tag}_sm{sm}.engine"


def engine_entry(
    model_dir: str | Path,
    rel_path: str,
    stage: str,
    precision: str,
    builder: str,
    trt_version: str,
    sm: str,
    device: str,
    profile: dict[str, dict[str, list[int]]],
    onnx_file: str,
    onnx_sha256: str,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest entry of an engine file already written at ``model_dir/rel_path`` (its SHA-256 computed)."""
    path = Path(model_dir) / rel_path
    return {
        "file": rel_path,
        "stage": stage,
        "precision": precision,
        "builder": builder,
        "trt_version": trt_version,
        "sm": sm,
        "device": device,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "profile": profile,
        "onnx_file": onnx_file,
        "onnx_sha256": onnx_sha256,
        **extra,
    }


def rebuild_hint(model_dir: str | Path, stage: str, precision: str) -> str:
    """The command that rebuilds an engine on this machine."""
    return f"rebuild it here with `vsrt build {model_dir} --stage {stage} --precision {precision}`"


def sm_list(sm: str) -> list[str]:
    """The compute capabilities an entry's ``sm`` field covers (``"86-89"`` → ``["86", "89"]``)."""
    return [s for s in str(sm).split("-") if s]


def engine_problems(
    entry: dict[str, Any], model_dir: str | Path, manifest: Manifest, device: DeviceInfo, verify_checksum: bool = True
) -> list[str]:
    """Why ``entry`` cannot run on ``device`` (empty list: it can). Cheap checks first; the checksum last."""
    problems = []
    if entry.get("builder", "tensorrt") != device.builder:
        problems.append(f"built with {entry.get('builder')} but this runtime uses {device.builder}")
    if entry.get("trt_version") != device.trt_version:
        problems.append(
            f"built with {entry.get('builder', 'tensorrt')} {entry.get('trt_version')}, "
            f"this machine has {device.trt_version}"
        )
    if device.sm is None:
        problems.append("no CUDA GPU found on this machine")
    elif device.sm not in sm_list(entry.get("sm", "")):
        problems.append(f"built for compute capability sm{entry.get('sm')}, this GPU is sm{device.sm}"
                        + (f" ({device.name})" if device.name else ""))
    stage, precision = entry.get("stage", ""), entry.get("precision", "")
    st = manifest.stages.get(stage)
    onnx_now = st.files.get(precision) if st is not None else None
    if onnx_now is not None and entry.get("onnx_sha256") and onnx_now.sha256 != entry["onnx_sha256"]:
        problems.append(f"the {precision} ONNX of stage '{stage}' changed after the engine was built (stale engine)")
    path = Path(model_dir) / entry.get("file", "")
    if not path.is_file():
        problems.append(f"engine file {path} is missing")
    elif verify_checksum and not problems and sha256_file(path) != entry.get("sha256"):
        problems.append(f"engine file {path} does not match its manifest checksum (corrupted or replaced)")
    return problems


def select_engine(
    model_dir: str | Path,
    manifest: Manifest,
    stage: str,
    precision: str,
    device: DeviceInfo,
    verify_checksum: bool = True,
) -> tuple[dict[str, Any], Path]:
    """The registered engine for ``stage``/``precision`` that runs on ``device``, and its path.

    No engine registered → :class:`BackendUnavailableError` (say how to build one). Engines registered but none
    fits → :class:`EngineMismatchError` listing why each was refused and how to rebuild.
    """
    cands = [e for e in manifest.engines if e.get("stage") == stage and e.get("precision") == precision]
    if not cands:
        raise BackendUnavailableError(
            f"no TensorRT engine for stage '{stage}' at {precision} in {model_dir}; build one with "
            f"`vsrt build {model_dir} --stage {stage} --precision {precision}`"
        )
    # prefer the entry whose name matches this device exactly
    cands.sort(key=lambda e: (e.get("builder") != device.builder, e.get("trt_version") != device.trt_version,
                              device.sm not in sm_list(e.get("sm", ""))))
    reasons = []
    for e in cands:
        problems = engine_problems(e, model_dir, manifest, device, verify_checksum)
        if not problems:
            return e, Path(model_dir) / e["file"]
        reasons.append(f"{e.get('file')}: " + "; ".join(problems))
    raise EngineMismatchError(
        f"no engine for stage '{stage}' at {precision} fits this machine ({device.builder} {device.trt_version}, "
        f"sm{device.sm}): " + " | ".join(reasons) + ". Engines are tied to one TensorRT version and GPU: "
        + rebuild_hint(model_dir, stage, precision)
    )


#: a function returning this machine's :class:`DeviceInfo` for a TensorRT flavour
DeviceProbe = Callable[[str], DeviceInfo]


def probe_device(builder: str = "tensorrt", device_id: int = 0) -> DeviceInfo:
    """This machine's TensorRT version (``builder`` module) and GPU compute capability, without torch.

    Raises :class:`BackendUnavailableError` when the TensorRT module is not installed. ``sm`` is ``None`` when no
    GPU (or no CUDA Python binding) is found.
    """
    import importlib

    try:
        trt = importlib.import_module(builder)
    except ImportError as exc:
        raise BackendUnavailableError(f"{builder} is not installed ({exc})") from None
    from vsrt.runtime.backends.tensorrt_backend import gpu_info

    info = gpu_info(device_id)
    return DeviceInfo(builder, str(trt.__version__), info[0] if info else None, info[1] if info else "")
