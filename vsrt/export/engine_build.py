"""``vsrt build``: TensorRT engines from a model directory's ONNX files, for TensorRT 10.x, 11.x and TensorRT-RTX.

Which ONNX and which builder settings (:func:`build_plan`):

* **TensorRT 11 / TensorRT-RTX** are strongly typed: precision comes from the ONNX alone — ``fp32`` builds
  ``onnx/<stage>.fp32.onnx``, ``fp16`` the FP16 graph and ``int8`` the Q/DQ graph written by ``vsrt calibrate``.
* **TensorRT 10** (JetPack 6) builds the same typed graphs as strongly typed networks; when only the FP32 ONNX
  exists (or ``mode="implicit"``) it uses the weak-typing path instead: ``BuilderFlag.FP16`` and, for INT8,
  ``BuilderFlag.INT8`` with a calibrator that reads the calibration cache ``vsrt calibrate`` wrote from the same
  statistics as the Q/DQ graph.
* FP32 builds clear ``BuilderFlag.TF32`` so the engine matches ONNX Runtime's FP32.

Every build gets one optimisation profile from the manifest's min/opt/max (overridable), a workspace limit, a
persistent timing cache (``engines/timing_<builder><version>.cache``), optional DLA core (TensorRT 10, Jetson), and
TensorRT-RTX compute-capability targets (so engines build ahead of time on a machine without a GPU). Engines are
written atomically as ``engines/<stage>_<precision>_trt<ver>_sm<XY>.engine`` and registered in the manifest.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsrt.errors import BackendUnavailableError, InputError, VsrtError
from vsrt.export.engine_names import ENGINE_DIR, engine_entry, engine_filename, short_version
from vsrt.io import atomic_write_bytes
from vsrt.manifest import PRECISIONS, Manifest, Stage

#: TensorRT-RTX compute capabilities an engine can target (``ComputeCapability.SM<XY>``)
RTX_TARGETS = ("75", "80", "86", "89", "120", "121")


@dataclass
class BuildOptions:
    """Settings of one ``vsrt build`` (see its ``--help``).

    Attributes:
        precision: ``fp32`` | ``fp16`` | ``int8``.
        builder: ``auto`` (``tensorrt`` if installed, else ``tensorrt_rtx``) | ``tensorrt`` | ``tensorrt_rtx``.
        shapes: per input ``(min, opt, max)`` overriding the manifest's profile.
        workspace_mib: workspace memory-pool limit.
        timing_cache: timing-cache file (default ``engines/timing_<builder><version>.cache``); ``None`` with
            ``use_timing_cache=False`` disables it.
        compute_capabilities: TensorRT-RTX targets as digits (``["86"]``); default: this GPU.
        dla_core: build for this DLA core (TensorRT 10 on Jetson; FP16/INT8 and static shapes only).
        gpu_fallback: let layers DLA cannot run fall back to the GPU.
        mode: ``auto`` | ``typed`` (use the fp16/int8 ONNX) | ``implicit`` (TensorRT 10: FP32 ONNX + builder flags).
        calibration_cache: TensorRT 10 implicit INT8 cache (default ``calibration/<stage>.trt10.cache``).
        optimization_level: builder optimisation level 0–5 (TensorRT default 3).
    """

    precision: str = "fp32"
    builder: str = "auto"
    shapes: dict[str, tuple[list[int], list[int], list[int]]] = field(default_factory=dict)
    workspace_mib: int | None = 2048
    timing_cache: Path | None = None
    use_timing_cache: bool = True
    compute_capabilities: list[str] | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    mode: str = "auto"
    calibration_cache: Path | None = None
    optimization_level: int | None = None
    verbose: bool = False


def load_trt(builder: str = "auto") -> tuple[Any, str]:
    """``(module, name)`` of the TensorRT flavour to build with."""
    names = ("tensorrt", "tensorrt_rtx") if builder == "auto" else (builder,)
    if builder not in ("auto", "tensorrt", "tensorrt_rtx"):
        raise InputError(f"unknown builder '{builder}' (choose auto, tensorrt or tensorrt_rtx)")
    errors = []
    for n in names:
        try:
            return importlib.import_module(n), n
        except ImportError as exc:
            errors.append(f"{n}: {exc}")
    raise BackendUnavailableError(
        "no TensorRT builder is installed (pip install tensorrt, or tensorrt-rtx-cu12 to build ahead of time "
        "without a GPU): " + "; ".join(errors)
    )


@dataclass(frozen=True)
class BuildPlan:
    """What a build does: which ONNX precision it reads, typing, and the precision builder flags."""

    onnx_precision: str
    typing: str  # "strong" | "weak"
    flags: tuple[str, ...]  # BuilderFlag names to set
    calibrator: bool  # TensorRT 10 implicit INT8 (reads the calibration cache)


def build_plan(builder: str, trt_version: str, precision: str, typed_onnx: set[str], mode: str = "auto") -> BuildPlan:
    """Decide the ONNX file and builder flags for ``precision`` (pure; see the module docstring).

    ``typed_onnx`` is the set of precisions the stage has ONNX files for.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    if mode not in ("auto", "typed", "implicit"):
        raise InputError(f"unknown build mode '{mode}' (auto, typed or implicit)")
    major = int(trt_version.split(".")[0])
    strong_only = builder == "tensorrt_rtx" or major >= 11
    if "fp32" not in typed_onnx:
        raise InputError("the stage has no fp32 ONNX; run `vsrt export` first")
    if precision == "fp32":
        return BuildPlan("fp32", "strong" if strong_only else "weak", (), False)
    if mode == "implicit" and strong_only:
        what = "TensorRT-RTX" if builder == "tensorrt_rtx" else f"TensorRT {trt_version}"
        raise InputError(f"{what} is strongly typed: implicit {precision} (builder flags) does not exist there; "
                         f"build the {precision} ONNX from `vsrt calibrate`")
    if mode != "implicit" and precision in typed_onnx:
        return BuildPlan(precision, "strong", (), False)
    if mode == "typed" or strong_only:
        raise InputError(
            f"the stage has no {precision} ONNX, which "
            + ("this TensorRT needs (strongly typed)" if strong_only else "--mode typed needs")
            + f"; create it with `vsrt calibrate MODEL_DIR --precision {precision}`"
        )
    flags = ("FP16",) if precision == "fp16" else ("INT8", "FP16")
    return BuildPlan("fp32", "weak", flags, precision == "int8")


def parse_shape_override(text: str) -> tuple[str, tuple[list[int], list[int], list[int]]]:
    """``regions:1x36x2048/32x36x2048/128x36x2048`` → ``("regions", (min, opt, max))``; one shape = static."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise InputError(f"shape override '{text}' must look like NAME:MIN/OPT/MAX (e.g. regions:1x36x2048/…)")
    parts = rest.split("/")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise InputError(f"shape override '{text}' needs 1 or 3 shapes separated by '/'")
    try:
        shapes = [[int(d) for d in p.lower().split("x")] for p in parts]
    except ValueError:
        raise InputError(f"shape override '{text}': dims must be integers joined by 'x'") from None
    if len({len(s) for s in shapes}) != 1 or any(a > b for lo, hi in zip(shapes, shapes[1:]) for a, b in zip(lo, hi)):
        raise InputError(f"shape override '{text}': shapes must have the same rank and min ≤ opt ≤ max")
    return name, (shapes[0], shapes[1], shapes[2])


def stage_profile(stage: Stage, overrides: dict[str, tuple[list[int], list[int], list[int]]]) -> dict[str, Any]:
    """The optimisation profile of a stage: ``{input: {"min", "opt", "max"}}`` from the manifest and overrides."""
    names = {t.name for t in stage.inputs}
    for n in overrides:
        if n not in names:
            raise InputError(f"stage '{stage.name}' has no input '{n}' (inputs: {', '.join(sorted(names))})")
    prof: dict[str, Any] = {}
    for t in stage.inputs:
        if t.name in overrides:
            lo, opt, hi = overrides[t.name]
        elif t.min is not None and t.opt is not None and t.max is not None:
            lo, opt, hi = t.min, t.opt, t.max
        elif all(isinstance(d, int) for d in t.shape):
            lo = opt = hi = [int(d) for d in t.shape]  # type: ignore[misc]
        else:
            raise InputError(
                f"stage '{stage.name}' input '{t.name}' has dynamic dims {t.shape} but no min/opt/max in the manifest; "
                f"give --shape {t.name}:MIN/OPT/MAX"
            )
        if len(lo) != len(t.shape):
            raise InputError(f"profile for '{t.name}' has rank {len(lo)}, the input has rank {len(t.shape)}")
        for i, d in enumerate(t.shape):
            if isinstance(d, int) and not (lo[i] == opt[i] == hi[i] == d):
                raise InputError(f"profile for '{t.name}' dim {i} must be {d} (fixed in the graph)")
        prof[t.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    return prof


def _parse_onnx(trt: Any, network: Any, logger: Any, path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path)) if hasattr(parser, "parse_from_file") else parser.parse(path.read_bytes())
    if not ok:
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() if hasattr(e, "node_name") else e.node()
            errs.append(f"node {node}: {e.desc()}")
        raise InputError(f"TensorRT could not parse {path}: " + "; ".join(errs[:5]))


def _timing_cache_path(model_dir: Path, builder: str, version: str) -> Path:
    tag = ("rtx" if builder == "tensorrt_rtx" else "") + short_version(version)
    return model_dir / ENGINE_DIR / f"timing_{tag}.cache"


def build_stage(
    model_dir: str | Path,
    manifest: Manifest,
    stage: str,
    options: BuildOptions,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build one stage's engine, write it atomically and register it in ``manifest`` (not saved here).

    Returns the manifest entry.
    """
    say = log or (lambda _m: None)
    model_dir = Path(model_dir)
    trt, builder_name = load_trt(options.builder)
    version = str(trt.__version__)
    st = manifest.stage(stage)
    plan = build_plan(builder_name, version, options.precision, set(st.files), options.mode)
    onnx_path = manifest.file_path(model_dir, stage, plan.onnx_precision)
    profile = stage_profile(st, options.shapes)

    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    net_flags = 0
    if plan.typing == "strong" and builder_name == "tensorrt" and int(version.split(".")[0]) < 11:
        net_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(net_flags)
    _parse_onnx(trt, network, logger, onnx_path)

    config = builder.create_builder_config()
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 engines match ONNX Runtime's FP32
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if options.optimization_level is not None:
        config.builder_optimization_level = int(options.optimization_level)
    trt_profile = builder.create_optimization_profile()
    for name, p in profile.items():
        trt_profile.set_shape(name, p["min"], p["opt"], p["max"])
    config.add_optimization_profile(trt_profile)

    calib_cache = None
    if plan.calibrator:
        from vsrt.calibration.trt10_cache import make_entropy_calibrator

        calib_cache = Path(options.calibration_cache or model_dir / f"calibration/{stage}.trt10.cache")
        if not calib_cache.is_file():
            raise InputError(f"implicit INT8 needs the calibration cache {calib_cache}; run `vsrt calibrate` first")
        config.int8_calibrator = make_entropy_calibrator(trt, None, calib_cache)
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(trt_profile)

    if options.dla_core is not None:
        _configure_dla(trt, builder, config, options, profile, plan)

    sm = _configure_targets(trt, builder_name, config, options)
    from vsrt.runtime.backends.tensorrt_backend import gpu_info

    gpu = gpu_info(0)
    gpu_name = gpu[1] if gpu and (builder_name == "tensorrt" or not options.compute_capabilities) else ""

    cache_path = None  # the timing cache holds measured tactic timings: only meaningful with a GPU present
    if options.use_timing_cache and gpu is not None and hasattr(config, "create_timing_cache"):
        cache_path = Path(options.timing_cache or _timing_cache_path(model_dir, builder_name, version))
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        timing_cache = config.create_timing_cache(blob)
        config.set_timing_cache(timing_cache, ignore_mismatch=True)

    say(f"{stage}: building {options.precision} engine with {builder_name} {version} from {onnx_path.name} "
        f"({plan.typing}ly typed{', flags ' + '+'.join(plan.flags) if plan.flags else ''})")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise VsrtError(f"TensorRT failed to build stage '{stage}' at {options.precision} (see messages above)")
    rel = f"{ENGINE_DIR}/" + engine_filename(stage, options.precision, version, sm, builder_name)
    atomic_write_bytes(model_dir / rel, bytes(memoryview(serialized)))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    entry = engine_entry(
        model_dir, rel, stage, options.precision, builder_name, version, sm,
        gpu_name or ("ahead-of-time (no GPU)" if builder_name == "tensorrt_rtx" else ""),
        profile, onnx_path.relative_to(model_dir).as_posix(), st.files[plan.onnx_precision].sha256,
        typing=plan.typing, flags=list(plan.flags), build_seconds=round(seconds, 3),
        workspace_mib=options.workspace_mib, dla_core=options.dla_core,
        timing_cache=_rel_or_abs(cache_path, model_dir), calibration_cache=_rel_or_abs(calib_cache, model_dir),
    )
    manifest.add_engine(entry)
    say(f"{stage}: wrote {rel} ({entry['size_bytes'] / 1e6:.1f} MB) in {seconds:.1f} s")
    return entry


def _rel_or_abs(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


def _configure_targets(trt: Any, builder_name: str, config: Any, options: BuildOptions) -> str:
    """Set TensorRT-RTX compute-capability targets; return the engine's ``sm`` tag."""
    from vsrt.runtime.backends.tensorrt_backend import gpu_info

    if builder_name == "tensorrt":
        if options.compute_capabilities:
            raise InputError("--compute-capability is a TensorRT-RTX option; TensorRT builds for the GPU it runs on")
        info = gpu_info(0)
        if info is None:
            raise BackendUnavailableError(
                "TensorRT builds need a CUDA GPU (none found); build ahead of time with --builder tensorrt_rtx "
                "--compute-capability XY, or build on the target device"
            )
        return info[0]
    targets = options.compute_capabilities
    if not targets:
        info = gpu_info(0)
        if info is None:
            raise InputError(
                "no GPU here to build for: give the target compute capability, e.g. --compute-capability 86 "
                f"(TensorRT-RTX targets: {', '.join(RTX_TARGETS)})"
            )
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
        return info[0]
    bad = [t for t in targets if t not in RTX_TARGETS]
    if bad:
        raise InputError(f"TensorRT-RTX cannot target sm{', sm'.join(bad)} (targets: {', '.join(RTX_TARGETS)})")
    config.num_compute_capabilities = len(targets)
    for i, t in enumerate(targets):
        config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{t}"), i)
    return "-".join(targets)


def _configure_dla(trt: Any, builder: Any, config: Any, options: BuildOptions, profile: dict[str, Any],
                   plan: BuildPlan) -> None:
    """DLA: TensorRT 10 on Jetson, FP16/INT8, static shapes (min = opt = max), optional GPU fallback."""
    if not hasattr(trt, "DeviceType") or getattr(builder, "num_DLA_cores", 0) <= 0:
        raise InputError("this machine has no DLA core (DLA exists on Jetson AGX/NX Orin and Xavier)")
    if options.dla_core is None or not 0 <= options.dla_core < builder.num_DLA_cores:
        raise InputError(f"DLA core {options.dla_core} does not exist (this device has {builder.num_DLA_cores})")
    if options.precision == "fp32":
        raise InputError("DLA runs FP16 or INT8 only; build with --precision fp16 or int8")
    for name, p in profile.items():
        if not (p["min"] == p["opt"] == p["max"]):
            raise InputError(f"DLA needs static shapes: give --shape {name}:{'x'.join(map(str, p['opt']))}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(options.dla_core)
    if options.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def build_model(
    model_dir: str | Path,
    stages: list[str] | None,
    options: BuildOptions,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Build engines for ``stages`` (default: every stage with an ONNX file) and save the manifest once, last."""
    from vsrt.modeldir import open_manifest

    model_dir = Path(model_dir)
    manifest = open_manifest(model_dir)
    have = [s for s, st in manifest.stages.items() if st.files]
    if not have:
        raise InputError(f"{model_dir} has no ONNX files; run `vsrt export` first")
    for s in stages or []:
        if s not in manifest.stages:
            raise InputError(f"model has no stage '{s}' (stages: {', '.join(have)})")
    entries = [build_stage(model_dir, manifest, s, options, log) for s in (stages or have)]
    trt, name = load_trt(options.builder)
    manifest.versions[name] = str(trt.__version__)
    manifest.save(model_dir)
    return entries
