"""Engine names, manifest entries and the engine ↔ machine compatibility check — no GPU needed: "this machine" is a
fake :class:`DeviceInfo` given through the injectable probe."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vsrt.errors import BackendUnavailableError, EngineMismatchError, InputError
from vsrt.export.engine_build import build_plan, parse_shape_override, stage_profile
from vsrt.export.engine_names import (
    DeviceInfo,
    engine_entry,
    engine_filename,
    engine_problems,
    select_engine,
    short_version,
)
from vsrt.io import atomic_write_bytes, sha256_file
from vsrt.manifest import Manifest, Stage, TensorSpec
from vsrt.runtime.backends import tensorrt_backend
from vsrt.runtime.backends.tensorrt_backend import TensorRTBackend

JETSON = DeviceInfo("tensorrt", "10.3.0", "87", "Orin")


def _model(tmp_path: Path) -> tuple[Path, Manifest]:
    """A model dir with a visual stage (fp32 ONNX stand-in file) and one engine built on a 'Jetson'."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "visual.fp32.onnx").write_bytes(b"onnx-bytes")
    m = Manifest("vsrn")
    spec = TensorSpec("regions", "float32", ["batch", 36, 2048], [1, 36, 2048], [32, 36, 2048], [128, 36, 2048])
    m.set_stage(Stage("visual", [spec], [TensorSpec("embedding", "float32", ["batch", 2048])]))
    m.add_file(tmp_path, "visual", "fp32", "onnx/visual.fp32.onnx")
    name = engine_filename("visual", "fp32", "10.3.0.26", "87")
    atomic_write_bytes(tmp_path / "engines" / name, b"plan-bytes")
    entry = engine_entry(tmp_path, f"engines/{name}", "visual", "fp32", "tensorrt", "10.3.0", "87", "Orin",
                         {"regions": {"min": [1, 36, 2048], "opt": [32, 36, 2048], "max": [128, 36, 2048]}},
                         "onnx/visual.fp32.onnx", m.stages["visual"].files["fp32"].sha256)
    m.add_engine(entry)
    m.save(tmp_path)
    return tmp_path, m


def test_engine_filename() -> None:
    assert engine_filename("visual", "fp16", "10.3.0.26", "87") == "visual_fp16_trt10.3.0_sm87.engine"
    name = engine_filename("text", "int8", "1.7.1.116", "86-89", "tensorrt_rtx")
    assert name == "text_int8_trtrtx1.7.1_sm86-89.engine"
    assert short_version("11.1") == "11.1"
    with pytest.raises(ValueError):
        engine_filename("visual", "fp32", "10.3", "87", "onnxruntime")


def test_matching_engine_is_selected(tmp_path: Path) -> None:
    d, m = _model(tmp_path)
    entry, path = select_engine(d, m, "visual", "fp32", JETSON)
    assert path.name == "visual_fp32_trt10.3.0_sm87.engine" and entry["sha256"] == sha256_file(path)
    assert entry["profile"]["regions"]["max"] == [128, 36, 2048] and entry["builder"] == "tensorrt"


@pytest.mark.parametrize(
    ("device", "why"),
    [
        (DeviceInfo("tensorrt", "10.7.0", "87"), "built with tensorrt 10.3.0, this machine has 10.7.0"),
        (DeviceInfo("tensorrt", "10.3.0", "90", "H100"), "sm87, this GPU is sm90 (H100)"),
        (DeviceInfo("tensorrt_rtx", "10.3.0", "87"), "built with tensorrt but this runtime uses tensorrt_rtx"),
        (DeviceInfo("tensorrt", "10.3.0", None), "no CUDA GPU"),
    ],
)
def test_mismatch_is_refused_with_rebuild_hint(tmp_path: Path, device: DeviceInfo, why: str) -> None:
    d, m = _model(tmp_path)
    with pytest.raises(EngineMismatchError) as exc:
        select_engine(d, m, "visual", "fp32", device)
    msg = str(exc.value)
    assert why in msg and f"vsrt build {d} --stage visual --precision fp32" in msg


def test_checksum_missing_and_stale(tmp_path: Path) -> None:
    d, m = _model(tmp_path)
    engine = d / m.engines[0]["file"]
    engine.write_bytes(b"tampered")
    assert any("checksum" in p for p in engine_problems(m.engines[0], d, m, JETSON))
    assert engine_problems(m.engines[0], d, m, JETSON, verify_checksum=False) == []
    engine.unlink()
    assert any("missing" in p for p in engine_problems(m.engines[0], d, m, JETSON))
    atomic_write_bytes(engine, b"plan-bytes")
    (d / "onnx" / "visual.fp32.onnx").write_bytes(b"new onnx")  # re-exported after the build
    m.add_file(d, "visual", "fp32", "onnx/visual.fp32.onnx")
    with pytest.raises(EngineMismatchError, match="stale engine"):
        select_engine(d, m, "visual", "fp32", JETSON)


def test_no_engine_is_unavailable_not_mismatch(tmp_path: Path) -> None:
    d, m = _model(tmp_path)
    with pytest.raises(BackendUnavailableError, match="vsrt build .* --precision fp16"):
        select_engine(d, m, "visual", "fp16", JETSON)


def test_the_fitting_one_of_several_engines(tmp_path: Path) -> None:
    d, m = _model(tmp_path)
    name = engine_filename("visual", "fp32", "10.3.0", "90")
    atomic_write_bytes(d / "engines" / name, b"hopper-plan")
    m.add_engine(engine_entry(d, f"engines/{name}", "visual", "fp32", "tensorrt", "10.3.0", "90", "H100", {},
                              "onnx/visual.fp32.onnx", m.stages["visual"].files["fp32"].sha256))
    assert select_engine(d, m, "visual", "fp32", DeviceInfo("tensorrt", "10.3.0", "90"))[1].name == name
    assert select_engine(d, m, "visual", "fp32", JETSON)[1].name.endswith("sm87.engine")
    rtx = DeviceInfo("tensorrt_rtx", "1.7.1.116", "89")
    m.add_engine({**m.engines[0], "file": m.engines[0]["file"], "builder": "tensorrt_rtx",
                  "trt_version": "1.7.1.116", "sm": "86-89"})
    assert select_engine(d, m, "visual", "fp32", rtx)[0]["builder"] == "tensorrt_rtx"


def test_backend_checks_manifest_before_touching_the_gpu(tmp_path: Path) -> None:
    d, m = _model(tmp_path)
    with pytest.raises(EngineMismatchError, match="this machine has 10.7.0"):
        TensorRTBackend.from_model_dir(d, m, "visual", "fp32",
                                       device_probe=lambda b: DeviceInfo(b, "10.7.0", "87"))
    with pytest.raises(InputError, match="unknown TensorRT backend option"):
        TensorRTBackend.from_model_dir(d, m, "visual", "fp32", device_probe=lambda b: JETSON, colour="red")


@pytest.mark.skipif(tensorrt_backend.is_available(), reason="this machine can run TensorRT: covered by GPU tests")
def test_matching_engine_without_gpu_runtime_is_unavailable(tmp_path: Path) -> None:
    """A fitting entry gets past the manifest check and then needs TensorRT + CUDA: a clear 'unavailable'."""
    d, m = _model(tmp_path)
    with pytest.raises(BackendUnavailableError, match="not installed|no CUDA GPU"):
        TensorRTBackend.from_model_dir(d, m, "visual", "fp32", device_probe=lambda b: JETSON, builder="tensorrt")
    m.engines[0].update(builder="tensorrt_rtx", trt_version="1.7.1.116")
    rtx = DeviceInfo("tensorrt_rtx", "1.7.1.116", "87")
    with pytest.raises(BackendUnavailableError, match="not installed|no CUDA GPU"):
        TensorRTBackend.from_model_dir(d, m, "visual", "fp32", device_probe=lambda b: rtx)


def test_runtime_modules_import_without_torch_or_tensorrt() -> None:
    code = (
        "import sys\n"
        "import vsrt.runtime.backends.tensorrt_backend as t, vsrt.export.engine_names, vsrt.runtime.backends.factory\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'tensorrt' not in sys.modules and 'tensorrt_rtx' not in sys.modules, 'tensorrt imported eagerly'\n"
        "print(t.is_available())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = bool(tensorrt_backend.installed_trt_modules()) and tensorrt_backend.gpu_info(0) is not None
    assert out.stdout.strip() == str(expected)


def test_auto_falls_back_to_onnxruntime_on_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``backend="auto"`` refuses a mismatched engine with a warning and uses ONNX Runtime."""
    from vsrt.runtime.backends import factory

    d, m = _model(tmp_path)
    monkeypatch.setattr(tensorrt_backend, "is_available", lambda: True)
    monkeypatch.setattr(tensorrt_backend, "installed_trt_modules", lambda: ["tensorrt"])
    monkeypatch.setattr("vsrt.export.engine_names.probe_device", lambda b, i=0: DeviceInfo(b, "10.9.0", "87"))
    calls = []
    monkeypatch.setattr(factory, "OrtBackend", lambda path, **kw: calls.append((path, kw)) or "ort")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert factory.create_backend(d, m, "visual", "auto", "fp32") == "ort"
    assert any("this machine has 10.9.0" in str(w.message) for w in caught)
    assert calls and calls[0][0].name == "visual.fp32.onnx"


def test_onnxruntime_provider_options(tmp_path: Path) -> None:
    from vsrt.runtime.backends.factory import ep_options

    d, m = _model(tmp_path)
    opts = ep_options(d, m, "visual", "int8", ["tensorrt", "cuda"],
                      {"TensorrtExecutionProvider": {"trt_max_workspace_size": 1 << 20}}, device_id=1)
    trt = opts["TensorrtExecutionProvider"]
    assert trt["trt_profile_min_shapes"] == "regions:1x36x2048"
    assert trt["trt_profile_max_shapes"] == "regions:128x36x2048"
    assert trt["trt_int8_enable"] and not trt["trt_int8_use_native_calibration_table"]
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"].endswith("engines/ort_trt/visual_int8")
    assert trt["trt_max_workspace_size"] == 1 << 20 and trt["device_id"] == 1
    assert opts["CUDAExecutionProvider"]["device_id"] == 1
    assert ep_options(d, m, "visual", "fp32", ["cpu"]) == {}


@pytest.mark.parametrize(
    ("builder", "version", "precision", "typed", "mode", "expect"),
    [
        ("tensorrt", "10.3.0", "fp32", {"fp32"}, "auto", ("fp32", "weak", (), False)),
        ("tensorrt", "11.1.0", "fp32", {"fp32"}, "auto", ("fp32", "strong", (), False)),
        ("tensorrt", "10.3.0", "fp16", {"fp32", "fp16"}, "auto", ("fp16", "strong", (), False)),
        ("tensorrt", "10.3.0", "fp16", {"fp32"}, "auto", ("fp32", "weak", ("FP16",), False)),
        ("tensorrt", "10.3.0", "int8", {"fp32", "int8"}, "implicit", ("fp32", "weak", ("INT8", "FP16"), True)),
        ("tensorrt", "10.3.0", "int8", {"fp32"}, "auto", ("fp32", "weak", ("INT8", "FP16"), True)),
        ("tensorrt", "11.1.0", "int8", {"fp32", "int8"}, "auto", ("int8", "strong", (), False)),
        ("tensorrt_rtx", "1.7.1", "fp16", {"fp32", "fp16"}, "auto", ("fp16", "strong", (), False)),
    ],
)
def test_build_plan(builder: str, version: str, precision: str, typed: set, mode: str, expect: tuple) -> None:
    p = build_plan(builder, version, precision, typed, mode)
    assert (p.onnx_precision, p.typing, p.flags, p.calibrator) == expect


@pytest.mark.parametrize(
    ("builder", "version", "precision", "typed", "mode", "match"),
    [
        ("tensorrt", "11.0.0", "fp16", {"fp32"}, "auto", "strongly typed.*vsrt calibrate"),
        ("tensorrt_rtx", "1.7.1", "int8", {"fp32"}, "auto", "strongly typed"),
        ("tensorrt_rtx", "1.7.1", "int8", {"fp32", "int8"}, "implicit", "implicit int8"),
        ("tensorrt", "10.3.0", "fp16", {"fp32"}, "typed", "--mode typed"),
        ("tensorrt", "10.3.0", "bf16", {"fp32"}, "auto", "unknown precision"),
        ("tensorrt", "10.3.0", "fp16", {"fp16"}, "auto", "vsrt export"),
    ],
)
def test_build_plan_refusals(builder: str, version: str, precision: str, typed: set, mode: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        build_plan(builder, version, precision, typed, mode)


def test_profiles_and_overrides() -> None:
    assert parse_shape_override("tokens:1x2/32x16/128x64") == ("tokens", ([1, 2], [32, 16], [128, 64]))
    assert parse_shape_override("regions:8x36x2048")[1] == ([8, 36, 2048],) * 3
    for bad in ("tokens", "tokens:1x2/3", "tokens:4x2/1x2/8x2", "tokens:ax2", "tokens:1x2/1x2x3/1x2"):
        with pytest.raises(InputError):
            parse_shape_override(bad)
    st = Stage("text", [TensorSpec("tokens", "int64", ["batch", "seq"], [1, 2], [32, 16], [128, 64]),
                        TensorSpec("lengths", "int64", ["batch"], [1], [32], [128])], [])
    prof = stage_profile(st, {"tokens": ([1, 2], [8, 8], [16, 32])})
    assert prof["tokens"] == {"min": [1, 2], "opt": [8, 8], "max": [16, 32]} and prof["lengths"]["max"] == [128]
    with pytest.raises(InputError, match="no input 'words'"):
        stage_profile(st, {"words": ([1], [1], [1])})
    vis = Stage("visual", [TensorSpec("regions", "float32", ["batch", 36, 64])], [])
    with pytest.raises(InputError, match="no min/opt/max"):
        stage_profile(vis, {})
    with pytest.raises(InputError, match="dim 1 must be 36"):
        stage_profile(vis, {"regions": ([1, 30, 64], [2, 30, 64], [4, 30, 64])})
