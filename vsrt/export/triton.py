"""A Triton Inference Server model repository from a model directory. No torch: it reads the manifest and copies
(or links) the ONNX files and TensorRT engines it lists.

Layout written (``vsrt export-triton MODEL_DIR -o REPO``)::

    REPO/
      <family>_<stage>_onnx/config.pbtxt        platform "onnxruntime_onnx"
      <family>_<stage>_onnx/1/model.onnx
      <family>_<stage>_trt/config.pbtxt         platform "tensorrt_plan", cc_model_filenames per compute capability
      <family>_<stage>_trt/1/model_sm86.plan    one engine per compute capability (TensorRT engines only)
      vsrt_triton.json                          what was written: model names, stage I/O, skipped stages and why

Per stage:

* **batching** — when every input and output's first dimension is the same symbolic batch dimension, the model
  gets ``max_batch_size`` (the manifest's profile maximum, else ``--max-batch``), dims without the batch dimension
  and ``dynamic_batching`` (``max_queue_delay_microseconds``; ``preferred_batch_size`` = the profile's opt batch);
  otherwise (e.g. ``pair_scorer``, whose inputs have different leading dimensions) ``max_batch_size: 0`` and full
  dims. Other symbolic dimensions become ``-1``. A batched tensor that is only the batch dimension (``lengths``)
  is declared ``dims: [1]`` with ``reshape: { shape: [] }``, since Triton requires non-empty dims.
* **types** — manifest dtypes map to Triton's ``TYPE_FP32``, ``TYPE_FP16``, ``TYPE_INT64``…; a TensorRT engine's
  tensor types may differ from the ONNX graph's (int64 token ids are int32 in an engine built from a graph that
  casts them) — the engine entry's ``io_dtypes`` wins when the manifest records it.
* **engines** — Triton's ``tensorrt_plan`` backend loads engines of full TensorRT only; TensorRT-RTX engines
  (``builder: tensorrt_rtx``) are skipped with the reason in ``vsrt_triton.json``. All engines of a stage and
  precision must come from one TensorRT version (a Triton release ships one).

Text tokenisation and the detector's host steps (proposals, NMS, box selection) stay on the client: the client
tokenises with :mod:`vsrt.text` and sends ``tokens``/``lengths``. See ``docs/scale-out.md``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vsrt.errors import InputError, ManifestError
from vsrt.io import atomic_path, atomic_write_json, atomic_write_text
from vsrt.manifest import Manifest, Stage, TensorSpec

PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}
SUMMARY = "vsrt_triton.json"
LINK_MODES = ("copy", "symlink", "hardlink")


def triton_type(dtype: str) -> str:
    """Triton ``data_type`` of a manifest dtype."""
    if dtype not in TRITON_TYPES:
        raise ManifestError(f"no Triton data type for '{dtype}' (known: {', '.join(TRITON_TYPES)})")
    return TRITON_TYPES[dtype]


def _batch_axis(stage: Stage) -> bool:
    """True when every tensor's first dim is the same symbolic name (the batch dimension)."""
    firsts = {str(t.shape[0]) if t.shape and isinstance(t.shape[0], str) else None
              for t in (*stage.inputs, *stage.outputs)}
    return len(firsts) == 1 and None not in firsts


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    shape = spec.shape[1:] if batched else spec.shape
    return [int(d) if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _max_batch(stage: Stage, default: int) -> tuple[int, int | None]:
    mx = [int(t.max[0]) for t in stage.inputs if t.max]
    opt = [int(t.opt[0]) for t in stage.inputs if t.opt]
    return (min(mx) if mx else default), (min(opt) if opt else None)


def _tensor_block(kind: str, specs: Sequence[TensorSpec], batched: bool, dtypes: dict[str, str]) -> str:
    items = []
    for s in specs:
        d = _dims(s, batched)
        # Triton needs non-empty dims: a tensor that is only the batch dimension (e.g. lengths [batch]) is declared
        # as [1] per item and reshaped to a scalar per item, so the model still receives [batch]
        reshape = "\n    reshape: { shape: [ ] }" if batched and not d else ""
        dims = ", ".join(str(v) for v in (d or [1] if batched else d))
        items.append(f'  {{\n    name: "{s.name}"\n    data_type: {triton_type(dtypes.get(s.name, s.dtype))}\n'
                     f"    dims: [ {dims} ]{reshape}\n  }}")
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_pbtxt(
    name: str,
    platform: str,
    stage: Stage,
    max_batch_default: int = 32,
    max_queue_delay_us: int = 100,
    instance_kind: str = "KIND_GPU",
    instance_count: int = 1,
    cc_files: dict[str, str] | None = None,
    default_file: str | None = None,
    dtypes: dict[str, str] | None = None,
) -> str:
    """The ``config.pbtxt`` text of one stage (Triton's ``ModelConfig`` in protobuf text format)."""
    if platform not in PLATFORMS:
        raise InputError(f"unknown Triton platform '{platform}' (choose from {', '.join(PLATFORMS)})")
    batched = _batch_axis(stage)
    mx, opt = _max_batch(stage, max_batch_default)
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {mx if batched else 0}"]
    if default_file:
        lines.append(f'default_model_filename: "{default_file}"')
    text = "\n".join(lines) + "\n"
    text += _tensor_block("input", stage.inputs, batched, dtypes or {})
    text += _tensor_block("output", stage.outputs, batched, dtypes or {})
    if batched:
        pref = f"\n  preferred_batch_size: [ {opt} ]" if opt and 1 < opt <= mx else ""
        text += f"dynamic_batching {{{pref}\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}\n"
    text += f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: {instance_kind}\n  }}\n]\n"
    for cc, fname in sorted((cc_files or {}).items()):
        text += f'cc_model_filenames [\n  {{\n    key: "{cc}"\n    value: "{fname}"\n  }}\n]\n'
    return text


def _place(src: Path, dst: Path, mode: str) -> None:
    """Put ``src`` at ``dst`` by copying (atomically) or linking."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "copy":
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if mode == "symlink":
        os.symlink(src.resolve(), tmp)
    else:
        os.link(src, tmp)
    os.replace(tmp, dst)


def _cc(sm: str) -> str:
    """``"86"`` → ``"8.6"`` (Triton's compute-capability keys)."""
    return f"{sm[:-1]}.{sm[-1]}"


def export_triton(
    model_dir: str | Path,
    repo: str | Path,
    precision: str = "fp32",
    platforms: Sequence[str] = PLATFORMS,
    stages: Sequence[str] | None = None,
    max_batch: int = 32,
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    onnx_instance_kind: str = "KIND_GPU",
    link: str = "copy",
    version: int = 1,
) -> dict[str, Any]:
    """Write a Triton model repository for ``model_dir`` into ``repo`` (see the module docstring).

    Returns the summary also written to ``repo/vsrt_triton.json``.
    """
    from vsrt.modeldir import open_manifest

    if link not in LINK_MODES:
        raise InputError(f"link must be one of {', '.join(LINK_MODES)}, got '{link}'")
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad:
        raise InputError(f"unknown Triton platform(s) {bad} (choose from {', '.join(PLATFORMS)})")
    if onnx_instance_kind not in ("KIND_GPU", "KIND_CPU", "KIND_AUTO"):
        raise InputError(f"instance kind must be KIND_GPU, KIND_CPU or KIND_AUTO, got '{onnx_instance_kind}'")
    md = Path(model_dir)
    manifest: Manifest = open_manifest(md)
    out = Path(repo)
    out.mkdir(parents=True, exist_ok=True)
    family = manifest.family
    names = list(stages) if stages else list(manifest.stages)
    summary: dict[str, Any] = {"model_dir": str(md.resolve()), "family": family, "precision": precision,
                               "config_sha256": manifest.config_sha256, "models": [], "skipped": []}
    for stage_name in names:
        st = manifest.stage(stage_name)
        io = {"inputs": [t.to_json() for t in st.inputs], "outputs": [t.to_json() for t in st.outputs]}
        if "onnxruntime_onnx" in platforms:
            if precision not in st.files:
                summary["skipped"].append({"stage": stage_name, "platform": "onnxruntime_onnx",
                                           "reason": f"no {precision} ONNX file in the manifest"})
            else:
                src = manifest.file_path(md, stage_name, precision)  # checksum-verified
                name = f"{family}_{stage_name}_onnx"
                _place(src, out / name / str(version) / "model.onnx", link)
                atomic_write_text(out / name / "config.pbtxt", config_pbtxt(
                    name, "onnxruntime_onnx", st, max_batch, max_queue_delay_us, onnx_instance_kind,
                    instance_count))
                summary["models"].append({"name": name, "stage": stage_name, "platform": "onnxruntime_onnx",
                                          "files": ["model.onnx"], **io})
        if "tensorrt_plan" in platforms:
            _trt_model(md, manifest, st, precision, out, family, version, link, max_batch, max_queue_delay_us,
                       instance_count, summary, io)
    atomic_write_json(out / SUMMARY, summary)
    return summary


def _trt_model(md: Path, manifest: Manifest, st: Stage, precision: str, out: Path, family: str, version: int,
               link: str, max_batch: int, max_queue_delay_us: int, instance_count: int, summary: dict[str, Any],
               io: dict[str, Any]) -> None:
    from vsrt.io import sha256_file

    entries = [e for e in manifest.engines if e.get("stage") == st.name and e.get("precision") == precision]
    usable = [e for e in entries if e.get("builder", "tensorrt") == "tensorrt"]
    for e in entries:
        if e not in usable:
            summary["skipped"].append({"stage": st.name, "platform": "tensorrt_plan", "file": e.get("file"),
                                       "reason": f"built by {e.get('builder')}: Triton's tensorrt_plan backend loads "
                                                 "full-TensorRT engines only"})
    if not usable:
        if not entries:
            summary["skipped"].append({"stage": st.name, "platform": "tensorrt_plan",
                                       "reason": f"no {precision} TensorRT engine in the manifest (build one on each "
                                                 f"target GPU with `vsrt build {md} --stage {st.name}`)"})
        return
    versions = {e.get("trt_version") for e in usable}
    if len(versions) > 1:
        raise ManifestError(
            f"stage '{st.name}' has {precision} engines of several TensorRT versions ({', '.join(sorted(versions))}); "
            "a Triton release runs one: keep the engines of the TensorRT your Triton ships"
        )
    name = f"{family}_{st.name}_trt"
    cc_files: dict[str, str] = {}
    files = []
    dtypes: dict[str, str] = {}
    for e in sorted(usable, key=lambda e: str(e.get("sm"))):
        src = md / e["file"]
        if not src.is_file():
            raise ManifestError(f"engine {src} is listed in the manifest but missing")
        if e.get("sha256") and sha256_file(src) != e["sha256"]:
            raise ManifestError(f"engine {src} does not match its manifest checksum; rebuild it")
        sms = [s for s in str(e.get("sm", "")).split("-") if s]
        fname = f"model_sm{'-'.join(sms)}.plan"
        _place(src, out / name / str(version) / fname, link)
        files.append(fname)
        for sm in sms:
            if _cc(sm) in cc_files:
                raise ManifestError(f"two {precision} engines of stage '{st.name}' target compute capability {_cc(sm)}")
            cc_files[_cc(sm)] = fname
        dtypes.update(e.get("io_dtypes", {}))
    atomic_write_text(out / name / "config.pbtxt", config_pbtxt(
        name, "tensorrt_plan", st, max_batch, max_queue_delay_us, "KIND_GPU", instance_count, cc_files, files[0],
        dtypes))
    summary["models"].append({"name": name, "stage": st.name, "platform": "tensorrt_plan", "files": files,
                              "compute_capabilities": sorted(cc_files), "trt_version": versions.pop(), **io})
