"""``vsrt doctor``: what is installed and usable here, and the concrete next step for each missing piece. No torch.

Every probe is read-only and quick: imports of optional packages, ``nvidia-smi`` / ``/proc/driver/nvidia``, on a
Jetson ``/etc/nv_tegra_release`` and ``nvpmodel -q``. Probes take a :class:`Probe` so tests can stand in a fake file
system and fake commands (a Jetson on a CPU-only machine).
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: L4T release → JetPack release (NVIDIA's JetPack archive); used to name the JetPack a Jetson runs
L4T_TO_JETPACK = {
    "32.7": "4.6.x", "34.1": "5.0 DP", "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2",
    "35.5": "5.1.3", "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2", "38.2": "7.0",
}


@dataclass
class Check:
    """One line of the report: ``status`` is ``ok``, ``missing`` (with a ``next_step``) or ``info``."""

    name: str
    status: str
    detail: str
    next_step: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "next_step": self.next_step,
                **({"data": self.data} if self.data else {})}


@dataclass
class Probe:
    """The machine as the doctor sees it (replaceable in tests)."""

    root: Path = Path("/")
    which: Callable[[str], str | None] = shutil.which
    run: Callable[[list[str]], str | None] = None  # type: ignore[assignment]
    import_module: Callable[[str], Any] = importlib.import_module

    def __post_init__(self) -> None:
        if self.run is None:
            self.run = _run

    def read(self, path: str) -> str | None:
        p = self.root / path.lstrip("/")
        try:
            return p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def module(self, name: str) -> Any | None:
        try:
            return self.import_module(name)
        except Exception:  # ImportError, or a broken install raising anything at import
            return None


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _version(mod: Any) -> str:
    return str(getattr(mod, "__version__", "") or getattr(mod, "VERSION", "") or "?")


# ---------------------------------------------------------------------------------------------------- probes
def gpus(probe: Probe) -> list[dict[str, str]]:
    """NVIDIA GPUs from ``nvidia-smi``: ``name``, ``compute_cap`` (``"8.6"``), ``driver``, ``memory``."""
    if not probe.which("nvidia-smi"):
        return []
    out = probe.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                     "--format=csv,noheader"])
    rows = []
    for line in (out or "").strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            rows.append({"name": parts[0], "compute_cap": parts[1], "driver": parts[2], "memory": parts[3]})
    return rows


def jetson(probe: Probe) -> dict[str, str] | None:
    """On a Jetson: L4T release, the JetPack it belongs to, the power mode (``nvpmodel -q``); else ``None``."""
    text = probe.read("/etc/nv_tegra_release")
    if text is None:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    l4t = f"{m.group(1)}.{m.group(2)}" if m else "unknown"
    major_minor = ".".join(l4t.split(".")[:2])
    info = {"l4t": l4t, "jetpack": L4T_TO_JETPACK.get(major_minor, "unknown (see NVIDIA's JetPack archive)")}
    model = probe.read("/proc/device-tree/model")
    if model:
        info["model"] = model.strip("\x00 \n")
    if probe.which("nvpmodel"):
        out = probe.run(["nvpmodel", "-q"]) or ""
        pm = re.search(r"NV Power Mode:\s*(.+)", out)
        if pm:
            info["power_mode"] = pm.group(1).strip()
        num = re.findall(r"^\s*(\d+)\s*$", out, flags=re.M)
        if num:
            info["power_mode_id"] = num[-1]
    return info


def cpu_info(probe: Probe) -> dict[str, Any]:
    """CPU model, logical cores and memory (from ``/proc`` where available)."""
    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count()}
    text = probe.read("/proc/cpuinfo") or ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    info["model"] = m.group(1).strip() if m else (platform.processor() or platform.machine())
    mem = probe.read("/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", mem, flags=re.M)
    if m:
        info["memory_gib"] = round(int(m.group(1)) / 2**20, 1)
    return info


# ---------------------------------------------------------------------------------------------------- report
def diagnose(probe: Probe | None = None) -> list[Check]:
    """Every check, in the order a user fixes them."""
    probe = probe or Probe()
    checks: list[Check] = []
    from vsrt import __version__

    checks.append(Check("vsrt", "ok", f"vsrt {__version__}, Python {platform.python_version()}",
                        data={"version": __version__, "python": platform.python_version()}))
    cpu = cpu_info(probe)
    checks.append(Check("cpu", "info", f"{cpu['model']}, {cpu['cores']} logical cores"
                        + (f", {cpu['memory_gib']} GiB RAM" if "memory_gib" in cpu else ""), data=cpu))
    np_mod = probe.module("numpy")
    checks.append(Check("numpy", "ok" if np_mod else "missing", _version(np_mod) if np_mod else "not installed",
                        "" if np_mod else "pip install numpy"))

    # ---- ONNX Runtime
    ort = probe.module("onnxruntime")
    provs: list[str] = []
    if ort is None:
        checks.append(Check("onnxruntime", "missing", "not installed",
                            "pip install onnxruntime (CPU) or onnxruntime-gpu (NVIDIA GPUs)"))
    else:
        provs = list(ort.get_available_providers())
        checks.append(Check("onnxruntime", "ok", f"{_version(ort)}; providers: {', '.join(provs)}",
                            data={"version": _version(ort), "providers": provs}))

    # ---- GPU and driver
    gpu_rows = gpus(probe)
    driver = probe.read("/proc/driver/nvidia/version")
    tegra = jetson(probe)
    if gpu_rows:
        desc = "; ".join(f"{g['name']} (compute capability {g['compute_cap']}, {g['memory']}, driver {g['driver']})"
                         for g in gpu_rows)
        checks.append(Check("gpu", "ok", desc, data={"gpus": gpu_rows}))
    elif tegra is not None:
        checks.append(Check("gpu", "ok", f"integrated Jetson GPU ({tegra.get('model', 'Jetson')})", data=tegra))
    elif driver:
        checks.append(Check("gpu", "ok", driver.strip().splitlines()[0],
                            "install nvidia-smi (comes with the driver utilities) to see the compute capability"))
    else:
        checks.append(Check("gpu", "missing", "no NVIDIA GPU or driver found (no nvidia-smi, no /proc/driver/nvidia)",
                            "CPU inference works (--backend onnxruntime); for TensorRT / CUDA use a machine with an "
                            "NVIDIA GPU and its driver"))
    if tegra is not None:
        pm = tegra.get("power_mode")
        checks.append(Check("jetson", "ok", f"L4T {tegra['l4t']} (JetPack {tegra['jetpack']})"
                            + (f", power mode {pm}" if pm else ""), "" if pm else
                            "nvpmodel not found: power mode unknown (sudo nvpmodel -q)", data=tegra))

    # ---- CUDA execution provider
    if ort is not None:
        if "CUDAExecutionProvider" in provs:
            checks.append(Check("ort-cuda", "ok", "ONNX Runtime CUDA execution provider available"))
        else:
            step = ("pip uninstall onnxruntime && pip install onnxruntime-gpu" if gpu_rows or driver else
                    "needs an NVIDIA GPU; then pip install onnxruntime-gpu")
            if tegra is not None:
                step = "install the onnxruntime-gpu wheel for your JetPack from the Jetson AI Lab / Jetson Zoo index"
            checks.append(Check("ort-cuda", "missing", "ONNX Runtime has no CUDA execution provider", step))
        if "TensorrtExecutionProvider" in provs:
            checks.append(Check("ort-tensorrt", "ok", "ONNX Runtime TensorRT execution provider available"))

    # ---- TensorRT
    trt = probe.module("tensorrt")
    if trt is not None:
        checks.append(Check("tensorrt", "ok", f"TensorRT {_version(trt)}", data={"version": _version(trt)}))
    else:
        step = ("JetPack ships it: sudo apt install python3-libnvinfer (or nvidia-jetpack)" if tegra is not None
                else "pip install tensorrt-cu12 (x86-64 Linux/Windows with an NVIDIA GPU)")
        checks.append(Check("tensorrt", "missing", "TensorRT Python package not installed", step))
    rtx = probe.module("tensorrt_rtx")
    if rtx is not None:
        checks.append(Check("tensorrt_rtx", "ok", f"TensorRT-RTX {_version(rtx)} (builds engines ahead of time; "
                            "running them needs an RTX-class GPU)", data={"version": _version(rtx)}))
    else:
        checks.append(Check("tensorrt_rtx", "info", "TensorRT-RTX not installed (optional)",
                            "pip install tensorrt-rtx-cu12 to build RTX engines ahead of time"))

    # ---- CUDA Python bindings (TensorRT backend memory)
    pycuda = probe.module("pycuda")
    cudapy = probe.module("cuda.bindings") or probe.module("cuda")
    if pycuda is not None or cudapy is not None:
        which = ", ".join(n for n, m in (("pycuda", pycuda), ("cuda-python", cudapy)) if m is not None)
        checks.append(Check("cuda-bindings", "ok", f"{which} installed"))
    else:
        checks.append(Check("cuda-bindings", "missing", "neither pycuda nor cuda-python is installed",
                            "pip install cuda-python (or pycuda): the TensorRT backend needs one to manage GPU memory"))

    # ---- optional libraries
    faiss = probe.module("faiss")
    if faiss is not None:
        ngpu = getattr(faiss, "get_num_gpus", lambda: 0)()
        checks.append(Check("faiss", "ok", f"faiss {_version(faiss)} ({ngpu} GPUs visible to faiss)"))
    else:
        checks.append(Check("faiss", "missing", "faiss not installed (optional: large galleries; exact search works "
                            "without it)", "pip install faiss-cpu (faiss-gpu on x86-64 CUDA servers)"))
    scan = probe.module("vsrt.runtime._scan")
    if scan is not None:
        from vsrt.runtime.search import available_isas

        isas = available_isas(scan)
        filt = scan.filter(0) if hasattr(scan, "filter") else None
        how = (f"; FP16 batches of {filt['min_queries']}+ queries filtered in {filt['arithmetic'].upper()}, then "
               "re-scored exactly" if filt else "")
        checks.append(Check("search-kernel", "ok", f"native fused scan kernel built; runs '{scan.isa(0)}' here "
                            f"(available: {', '.join(isas)}{how})",
                            data={"isa": scan.isa(0), "isas": isas, "filter": filt}))
    else:
        checks.append(Check("search-kernel", "missing", "native scan kernel not built: exact search falls back to "
                            "ONNX Runtime (several times slower on FP16/INT8 galleries)",
                            "install a C compiler (sudo apt install build-essential), then reinstall vsrt from "
                            "source: pip install --force-reinstall --no-deps --no-binary vsrt vsrt"))
    cv2 = probe.module("cv2")
    checks.append(Check("opencv", "ok" if cv2 else "missing", f"OpenCV {_version(cv2)}" if cv2 else "not installed",
                        "" if cv2 else "pip install opencv-python-headless (image decoding for the detector)"))
    mpl = probe.module("matplotlib")
    checks.append(Check("matplotlib", "ok" if mpl else "info", f"matplotlib {_version(mpl)}" if mpl else
                        "not installed: vsrt profile writes JSON but no PNG plot",
                        "" if mpl else "pip install matplotlib (optional)"))
    triton = probe.module("tritonclient")
    checks.append(Check("tritonclient", "ok" if triton else "info",
                        "tritonclient installed" if triton else
                        "not installed (optional: clients of vsrt export-triton)",
                        "" if triton else "pip install 'tritonclient[grpc]' (optional)"))
    return checks


def summary(checks: list[Check]) -> dict[str, Any]:
    """JSON form of a report, with which backends can run here."""
    by = {c.name: c for c in checks}
    usable = ["onnxruntime"] if by.get("onnxruntime") and by["onnxruntime"].status == "ok" else []
    if by.get("ort-cuda") and by["ort-cuda"].status == "ok":
        usable.append("ort-cuda")
    if (by.get("tensorrt") and by["tensorrt"].status == "ok" and by.get("gpu") and by["gpu"].status == "ok"
            and by.get("cuda-bindings") and by["cuda-bindings"].status == "ok"):
        usable.append("tensorrt")
    return {"checks": [c.to_json() for c in checks], "usable_backends": usable,
            "missing": [c.name for c in checks if c.status == "missing"]}


def system_metadata(probe: Probe | None = None) -> dict[str, Any]:
    """Device and software metadata for benchmark and profile reports."""
    probe = probe or Probe()
    meta: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": cpu_info(probe)}
    for name in ("numpy", "onnxruntime", "tensorrt", "tensorrt_rtx", "faiss", "cv2"):
        mod = probe.module(name)
        if mod is not None:
            meta[name] = _version(mod)
    ort = probe.module("onnxruntime")
    if ort is not None:
        meta["onnxruntime_providers"] = list(ort.get_available_providers())
    g = gpus(probe)
    if g:
        meta["gpus"] = g
    tegra = jetson(probe)
    if tegra:
        meta["jetson"] = tegra
    from vsrt import __version__

    meta["vsrt"] = __version__
    return meta
