"""TensorRT backend: runs a stage's engine on the GPU. No torch; TensorRT and the CUDA binding load lazily.

* The engine is chosen and checked against the manifest *before* it is deserialised
  (:func:`vsrt.export.engine_names.select_engine`: TensorRT flavour and version, GPU compute capability, ONNX and
  engine checksums); a mismatch is refused with the command that rebuilds it.
* Name-based I/O (TensorRT ≥ 10): ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
* Device buffers sized once for the profile's largest shapes, pinned host staging buffers, one CUDA stream per
  execution context; with ``cuda_graph=True`` each distinct input shape is captured once into a CUDA graph and
  replayed after.
* Memory through pycuda (the design card's choice) or, where pycuda is absent, cuda-python.
* An input outside the engine's optimisation profile is an :class:`~vsrt.errors.InputError` naming the bounds.

Works with ``tensorrt`` (10.x, 11.x) and ``tensorrt_rtx`` engines: the manifest entry says which built it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import BackendUnavailableError, EngineMismatchError, InputError, ManifestError, VsrtError
from vsrt.manifest import Manifest, TensorSpec
from vsrt.runtime.backends.base import FixedSpecs, check_feeds

#: TensorRT Python modules, preferred first
TRT_MODULES = ("tensorrt", "tensorrt_rtx")
#: options the ONNX Runtime backend takes that mean nothing here (ignored so one options dict serves both)
_ORT_ONLY_OPTIONS = {"intra_op_threads", "providers", "provider_options"}


# ---------------------------------------------------------------------------------------------------- CUDA memory
class DeviceBuffer:
    """A device allocation: ``ptr`` (int), ``nbytes``; freed by :meth:`free` (or when garbage-collected)."""

    def __init__(self, ptr: int, nbytes: int, free: Callable[[], None]) -> None:
        self.ptr, self.nbytes, self._free = int(ptr), int(nbytes), free

    def free(self) -> None:
        if self._free is not None:
            self._free()
            self._free = None  # type: ignore[assignment]

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the driver may be gone already
            self.free()


class _CudaPython:
    """CUDA runtime calls through cuda-python (``cuda.bindings.runtime`` or the older ``cuda.cudart``)."""

    name = "cuda-python"

    def __init__(self, device_id: int = 0) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]
        self.rt = cudart
        self._check(cudart.cudaSetDevice(device_id), "cudaSetDevice")

    def _check(self, result: Any, what: str) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise VsrtError(f"CUDA call {what} failed: {err}")
        if isinstance(result, tuple):
            return result[1] if len(result) == 2 else result[1:]
        return None

    def malloc(self, nbytes: int) -> DeviceBuffer:
        ptr = self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc")
        return DeviceBuffer(int(ptr), nbytes, lambda: self.rt.cudaFree(ptr))

    def pinned(self, nbytes: int) -> np.ndarray:
        ptr = self._check(self.rt.cudaMallocHost(max(int(nbytes), 1)), "cudaMallocHost")
        arr = np.ctypeslib.as_array((ctypes.c_uint8 * max(int(nbytes), 1)).from_address(int(ptr)))
        holder = _PinnedHolder(lambda: self.rt.cudaFreeHost(ptr))
        return _keep(arr, holder)

    def stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    @staticmethod
    def handle(stream: Any) -> int:
        return int(stream)

    def h2d(self, buf: DeviceBuffer, host: np.ndarray, stream: Any = None) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            self._check(self.rt.cudaMemcpy(buf.ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
        else:
            self._check(self.rt.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, kind, stream),
                        "cudaMemcpyAsync")

    def d2h(self, host: np.ndarray, buf: DeviceBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, buf.ptr, nbytes, kind, stream), "cudaMemcpyAsync")

    def sync(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def capture(self, stream: Any, launch: Callable[[], None]) -> Any:
        """Record what ``launch`` enqueues on ``stream`` into an instantiated CUDA graph."""
        rt = self.rt
        self._check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                    "cudaStreamBeginCapture")
        try:
            launch()
        finally:
            graph = self._check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")


class _PyCuda:
    """CUDA through pycuda, on the device's primary context (the one TensorRT uses)."""

    name = "pycuda"

    def __init__(self, device_id: int = 0) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.ctx = cuda.Device(device_id).retain_primary_context()
        self.ctx.push()
        self.device_id = device_id
        self._graphs: _CudaPython | None = None

    def malloc(self, nbytes: int) -> DeviceBuffer:
        alloc = self.cuda.mem_alloc(max(int(nbytes), 1))
        return DeviceBuffer(int(alloc), nbytes, alloc.free)

    def pinned(self, nbytes: int) -> np.ndarray:
        return self.cuda.pagelocked_empty(max(int(nbytes), 1), np.uint8)

    def stream(self) -> Any:
        return self.cuda.Stream()

    @staticmethod
    def handle(stream: Any) -> int:
        return int(stream.handle)

    def h2d(self, buf: DeviceBuffer, host: np.ndarray, stream: Any = None) -> None:
        if stream is None:
            self.cuda.memcpy_htod(buf.ptr, host)
        else:
            self.cuda.memcpy_htod_async(buf.ptr, host, stream)

    def d2h(self, host: np.ndarray, buf: DeviceBuffer, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(host[:nbytes], buf.ptr, stream)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def _cp(self) -> _CudaPython:
        if self._graphs is None:
            try:
                self._graphs = _CudaPython(self.device_id)
            except ImportError:
                raise BackendUnavailableError(
                    "CUDA graph capture needs cuda-python (pip install cuda-python)"
                ) from None
        return self._graphs

    def capture(self, stream: Any, launch: Callable[[], None]) -> Any:
        return self._cp().capture(self.handle(stream), launch)

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._cp().launch(graph_exec, self.handle(stream))


class _PinnedHolder:
    def __init__(self, free: Callable[[], Any]) -> None:
        self._free = free

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._free()


def _keep(arr: np.ndarray, holder: Any) -> np.ndarray:
    """A view of ``arr`` that keeps ``holder`` (the pinned allocation's owner) alive."""

    class _Pinned(np.ndarray):
        pass

    view = arr.view(_Pinned)
    view._owner = holder  # type: ignore[attr-defined]
    return view


def cuda_api(device_id: int = 0, prefer: str | None = None) -> _PyCuda | _CudaPython:
    """The CUDA memory helper: pycuda when installed (design card), else cuda-python.

    Raises :class:`BackendUnavailableError` when neither is installed.
    """
    order = [prefer] if prefer else ["pycuda", "cuda-python"]
    errors = []
    for name in order:
        try:
            return _PyCuda(device_id) if name == "pycuda" else _CudaPython(device_id)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendUnavailableError(
        "TensorRT needs a CUDA Python binding: pip install pycuda (or cuda-python). " + "; ".join(errors)
    )


def gpu_info(device_id: int = 0) -> tuple[str, str] | None:
    """``(compute capability digits, device name)`` of a GPU, or ``None`` without a GPU or CUDA binding."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            cudart = None
    if cudart is not None:
        try:
            err, count = cudart.cudaGetDeviceCount()
            if int(err) != 0 or count <= device_id:
                return None
            attr = cudart.cudaDeviceAttr
            _, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device_id)
            _, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device_id)
            _, props = cudart.cudaGetDeviceProperties(device_id)
            name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else ""
            return f"{major}{minor}", name
        except Exception:
            return None
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() <= device_id:
            return None
        dev = cuda.Device(device_id)
        major, minor = dev.compute_capability()
        return f"{major}{minor}", dev.name()
    except Exception:
        return None


def installed_trt_modules() -> list[str]:
    """TensorRT Python modules importable here (``tensorrt``, ``tensorrt_rtx``)."""
    out = []
    for name in TRT_MODULES:
        try:
            importlib.import_module(name)
            out.append(name)
        except Exception:
            continue
    return out


def is_available() -> bool:
    """True when a TensorRT module, a CUDA Python binding and a GPU are all present. Never raises."""
    try:
        if not installed_trt_modules():
            return False
        return gpu_info(0) is not None
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------------- backend
class TensorRTBackend(FixedSpecs):
    """Runs one stage's TensorRT engine (see the module docstring).

    Prefer :meth:`from_model_dir`, which picks and checks the engine from the manifest.

    Args:
        engine_path: the serialized engine.
        stage: stage name (error messages).
        inputs / outputs: the stage's tensor specs from the manifest (names are checked against the engine).
        builder: ``tensorrt`` or ``tensorrt_rtx`` (the module that built the engine).
        device_id: CUDA device.
        cuda_graph: capture each input shape into a CUDA graph once and replay it.
        cuda: a CUDA helper (:func:`cuda_api`); default: pycuda, else cuda-python.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        stage: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        builder: str = "tensorrt",
        device_id: int = 0,
        cuda_graph: bool = False,
        cuda: Any | None = None,
    ) -> None:
        try:
            trt = importlib.import_module(builder)
        except ImportError as exc:
            raise BackendUnavailableError(f"{builder} is not installed: {exc}") from None
        self.trt, self.stage, self.builder, self.path = trt, stage, builder, Path(engine_path)
        if cuda is None and gpu_info(device_id) is None:
            raise BackendUnavailableError(
                f"no CUDA GPU {device_id} found (or no CUDA Python binding: pip install pycuda or cuda-python)"
            )
        self.cuda = cuda or cuda_api(device_id)
        self.cuda_graph = cuda_graph
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(
                f"TensorRT could not deserialize {self.path} (built by another TensorRT version or for another GPU); "
                f"rebuild it with `vsrt build <model_dir> --stage {stage}`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        eng_in = [n for n in names if is_in[n]]
        eng_out = [n for n in names if not is_in[n]]
        if sorted(eng_in) != sorted(s.name for s in inputs) or sorted(eng_out) != sorted(s.name for s in outputs):
            raise ManifestError(
                f"engine {self.path} has inputs {eng_in} / outputs {eng_out}, the manifest's stage '{stage}' has "
                f"{[s.name for s in inputs]} / {[s.name for s in outputs]}; rebuild the engine"
            )
        self._inputs, self._outputs = inputs, outputs
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.profile = {n: tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(n, 0))
                        for n in eng_in}
        # size every buffer for the profile's largest shapes
        for n in eng_in:
            self.context.set_input_shape(n, self.profile[n][2])
        max_shapes = {n: self.profile[n][2] for n in eng_in}
        for n in eng_out:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise BackendUnavailableError(
                    f"output '{n}' of {self.path} has a data-dependent shape {shape}; this backend sizes outputs "
                    "from the profile and does not support that"
                )
            max_shapes[n] = shape
        self.stream = self.cuda.stream()
        self.device: dict[str, Any] = {}
        self.host: dict[str, np.ndarray] = {}
        for n in names:
            nbytes = int(np.prod(max_shapes[n])) * self.dtypes[n].itemsize
            self.device[n] = self.cuda.malloc(nbytes)
            self.host[n] = self.cuda.pinned(nbytes)
            self.context.set_tensor_address(n, self.device[n].ptr)
        self._graphs: dict[tuple, Any] = {}

    # -------------------------------------------------------------- construction from a model directory
    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        manifest: Manifest,
        stage: str,
        precision: str = "fp32",
        builder: str | None = None,
        device_probe: Callable[[str], Any] | None = None,
        verify_checksum: bool = True,
        device_id: int = 0,
        cuda_graph: bool = False,
        **options: Any,
    ) -> TensorRTBackend:
        """Open the engine registered for ``stage``/``precision`` after checking it fits this machine.

        ``device_probe(builder) -> DeviceInfo`` reports this machine (default
        :func:`vsrt.export.engine_names.probe_device`); tests inject a fake one.
        """
        from vsrt.export.engine_names import probe_device, select_engine

        unknown = set(options) - _ORT_ONLY_OPTIONS
        if unknown:
            raise InputError(f"unknown TensorRT backend option(s): {', '.join(sorted(unknown))}")
        st = manifest.stage(stage)
        probe = device_probe or (lambda b: probe_device(b, device_id))
        candidates = [builder] if builder else (installed_trt_modules() if device_probe is None else list(TRT_MODULES))
        if not candidates:
            raise BackendUnavailableError(
                "TensorRT is not installed (pip install 'vsrt[trt]', or JetPack's python3-libnvinfer)"
            )
        errors: list[VsrtError] = []
        for b in candidates:
            device = probe(b)
            if device.sm is None:
                errors.append(BackendUnavailableError(f"{b} is installed but no CUDA GPU was found"))
                continue
            try:
                entry, path = select_engine(model_dir, manifest, stage, precision, device, verify_checksum)
            except (BackendUnavailableError, EngineMismatchError) as exc:
                errors.append(exc)
                continue
            return cls(path, stage, st.inputs, st.outputs, entry.get("builder", b), device_id, cuda_graph)
        mismatch = [e for e in errors if isinstance(e, EngineMismatchError)]
        if mismatch:
            raise mismatch[0]
        raise errors[0]

    # -------------------------------------------------------------- Backend protocol
    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile[name]
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InputError(
                f"stage '{self.stage}' input '{name}' has shape {list(shape)}, outside the engine's optimization "
                f"profile (min {list(lo)}, max {list(hi)}); split the batch or rebuild with larger bounds "
                f"(`vsrt build … --shape {name}:MIN/OPT/MAX`)"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.stage, self._inputs, feeds)
        shapes = []
        for spec in self._inputs:
            a = np.ascontiguousarray(feeds[spec.name], dtype=self.dtypes[spec.name])
            self._check_profile(spec.name, a.shape)
            host = self.host[spec.name]
            host[: a.nbytes] = a.reshape(-1).view(np.uint8)
            self.cuda.h2d(self.device[spec.name], host[: a.nbytes], self.stream)
            if not self.context.set_input_shape(spec.name, a.shape):
                raise InputError(f"TensorRT rejected shape {list(a.shape)} for input '{spec.name}'")
            shapes.append(a.shape)
        handle = self.cuda.handle(self.stream)
        if self.cuda_graph:
            key = tuple(shapes)
            if key not in self._graphs:
                self._execute(handle)  # first run of a shape outside capture (TensorRT allocates lazily)
                self._graphs[key] = self.cuda.capture(self.stream, lambda: self._execute(handle))
            self.cuda.launch(self._graphs[key], self.stream)
        else:
            self._execute(handle)
        out_shapes = {}
        for spec in self._outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * self.dtypes[spec.name].itemsize
            self.cuda.d2h(self.host[spec.name], self.device[spec.name], nbytes, self.stream)
            out_shapes[spec.name] = (shape, nbytes)
        self.cuda.sync(self.stream)
        result = {}
        for name, (shape, nbytes) in out_shapes.items():
            arr = np.array(self.host[name][:nbytes]).view(self.dtypes[name]).reshape(shape)
            result[name] = arr.astype(np.float32) if arr.dtype == np.float16 else arr
        return result

    def _execute(self, handle: int) -> None:
        if not self.context.execute_async_v3(handle):
            raise VsrtError(f"TensorRT failed to execute stage '{self.stage}' ({self.path})")
