"""`vsrt doctor`: the real report on this CPU-only machine, and fake Jetson / GPU-server machines."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

from vsrt.runtime.doctor import Probe, diagnose, summary, system_metadata


def _by_name(checks: list) -> dict:
    return {c.name: c for c in checks}


def test_report_on_this_machine() -> None:
    checks = _by_name(diagnose())
    assert checks["onnxruntime"].status == "ok" and "CPUExecutionProvider" in checks["onnxruntime"].detail
    for c in checks.values():
        assert c.status in ("ok", "missing", "info")
        if c.status == "missing":
            assert c.next_step, f"{c.name} is missing but has no next step"
    if not Path("/proc/driver/nvidia/version").exists() and not importlib.util.find_spec("pynvml"):
        import shutil

        if shutil.which("nvidia-smi") is None:
            assert checks["gpu"].status == "missing" and "NVIDIA GPU" in checks["gpu"].next_step
            assert checks["ort-cuda"].status == "missing" and "onnxruntime-gpu" in checks["ort-cuda"].next_step
    if importlib.util.find_spec("tensorrt") is None:
        assert checks["tensorrt"].status == "missing" and "pip install tensorrt" in checks["tensorrt"].next_step
    if importlib.util.find_spec("pycuda") is None and importlib.util.find_spec("cuda") is None:
        assert checks["cuda-bindings"].status == "missing" and "cuda-python" in checks["cuda-bindings"].next_step
    assert ("faiss" in checks) and (checks["faiss"].status == "ok") == (importlib.util.find_spec("faiss") is not None)
    assert "jetson" not in checks or Path("/etc/nv_tegra_release").exists()


def test_cli_json() -> None:
    r = subprocess.run([sys.executable, "-m", "vsrt", "doctor", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert "onnxruntime" in rep["usable_backends"]
    assert {c["name"] for c in rep["checks"]} >= {"onnxruntime", "gpu", "tensorrt", "cuda-bindings", "faiss"}
    assert all(c["next_step"] for c in rep["checks"] if c["status"] == "missing")
    r = subprocess.run([sys.executable, "-m", "vsrt", "doctor"], capture_output=True, text=True)
    assert r.returncode == 0 and "usable backends here" in r.stdout


def _fake_imports(present: dict[str, types.ModuleType]):
    def imp(name: str):
        if name in present:
            return present[name]
        if name in ("tensorrt", "tensorrt_rtx", "pycuda", "cuda", "cuda.bindings", "faiss", "tritonclient"):
            raise ImportError(name)
        return importlib.import_module(name)
    return imp


def _ort(providers: list[str]) -> types.ModuleType:
    m = types.ModuleType("onnxruntime")
    m.__version__ = "1.19.0"
    m.get_available_providers = lambda: list(providers)
    return m


def test_fake_jetson(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC"
    )
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "8.5.2.2"
    probe = Probe(root=tmp_path, which=lambda c: "/usr/sbin/nvpmodel" if c == "nvpmodel" else None,
                  run=lambda cmd: "NV Power Mode: MAXN\n0\n" if cmd[0] == "nvpmodel" else None,
                  import_module=_fake_imports({"tensorrt": trt, "onnxruntime": _ort(["CPUExecutionProvider"])}))
    checks = _by_name(diagnose(probe))
    assert checks["jetson"].status == "ok"
    assert checks["jetson"].detail == "L4T 35.4.1 (JetPack 5.1.2), power mode MAXN"
    assert checks["gpu"].status == "ok" and "Jetson AGX Orin" in checks["gpu"].detail
    assert checks["tensorrt"].status == "ok" and "8.5.2.2" in checks["tensorrt"].detail
    assert "Jetson" in checks["ort-cuda"].next_step
    assert checks["cuda-bindings"].status == "missing"
    meta = system_metadata(probe)
    assert meta["jetson"]["power_mode"] == "MAXN" and meta["jetson"]["l4t"] == "35.4.1"
    # a Jetson without nvpmodel: power mode unknown, with the command to find it
    probe.which = lambda c: None
    assert "nvpmodel" in _by_name(diagnose(probe))["jetson"].next_step


def test_fake_gpu_server() -> None:
    probe = Probe(root=Path("/nonexistent-root"),
                  which=lambda c: "/usr/bin/nvidia-smi" if c == "nvidia-smi" else None,
                  run=lambda cmd: "NVIDIA H100 80GB HBM3, 9.0, 550.54.15, 81559 MiB\n",
                  import_module=_fake_imports({"onnxruntime": _ort(["CPUExecutionProvider"])}))
    checks = _by_name(diagnose(probe))
    assert checks["gpu"].status == "ok" and "compute capability 9.0" in checks["gpu"].detail
    assert checks["ort-cuda"].next_step.startswith("pip uninstall onnxruntime && pip install onnxruntime-gpu")
    assert "tensorrt-cu12" in checks["tensorrt"].next_step
    s = summary(diagnose(probe))
    assert s["usable_backends"] == ["onnxruntime"] and "tensorrt" in s["missing"]


def test_search_kernel_check() -> None:
    """The native scan kernel: reported with the CPU kernel it runs when built, with the fix when it is not."""
    scan = types.ModuleType("vsrt.runtime._scan")
    scan.isa = lambda i=0: {0: "avx2", 1: "generic", 2: "avx2"}.get(i)
    built = Probe(root=Path("/nonexistent-root"), which=lambda c: None, run=lambda cmd: None,
                  import_module=_fake_imports({"onnxruntime": _ort(["CPUExecutionProvider"]),
                                               "vsrt.runtime._scan": scan}))
    check = _by_name(diagnose(built))["search-kernel"]
    assert check.status == "ok" and "'avx2'" in check.detail and check.data["isas"] == ["avx2", "generic"]
    assert check.data["filter"] is None and "filtered" not in check.detail
    scan.isa = lambda i=0: {0: "avx512bf16", 1: "generic", 6: "avx512bf16"}.get(i)
    scan.filter = lambda i=0: {"arithmetic": "bf16", "min_queries": 6, "rows": 3, "queries_per_tile": 8}
    check = _by_name(diagnose(built))["search-kernel"]
    assert "'avx512bf16'" in check.detail and "6+ queries filtered in BF16" in check.detail
    assert check.data["filter"]["arithmetic"] == "bf16"

    def no_scan(name: str):
        if name == "vsrt.runtime._scan":
            raise ImportError(name)
        return _fake_imports({"onnxruntime": _ort(["CPUExecutionProvider"])})(name)

    missing = Probe(root=Path("/nonexistent-root"), which=lambda c: None, run=lambda cmd: None, import_module=no_scan)
    check = _by_name(diagnose(missing))["search-kernel"]
    assert check.status == "missing" and "C compiler" in check.next_step and "ONNX Runtime" in check.detail
