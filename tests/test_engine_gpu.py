"""GPU tier of the TensorRT backend. Skipped with a reason where there is no GPU (CI).

* With TensorRT (or TensorRT-RTX for a GPU it supports): engines built from the model directory run and match
  ONNX Runtime; inputs outside the profile are refused; CUDA-graph replay gives the same outputs.
* With only a GPU and cuda-python: the backend's CUDA plumbing (device and pinned buffers, async copies, stream,
  CUDA-graph capture, profile checks, dtype handling) runs for real against a stand-in engine whose "kernel" is a
  device-to-device copy — so the memory path is exercised even where TensorRT is absent.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from _precision_helpers import random_vsrn_dir

from vsrt.errors import InputError
from vsrt.manifest import TensorSpec
from vsrt.runtime.backends import tensorrt_backend as tb

GPU = tb.gpu_info(0)
pytestmark = pytest.mark.gpu


def _cuda_python() -> bool:
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401
        except ImportError:
            return False
    return True


def _trt_builder_for_this_gpu() -> str | None:
    """A TensorRT flavour that can build and run engines on this GPU, or None."""
    if GPU is None:
        return None
    mods = tb.installed_trt_modules()
    if "tensorrt" in mods:
        return "tensorrt"
    if "tensorrt_rtx" in mods:
        from vsrt.export.engine_build import RTX_TARGETS

        return "tensorrt_rtx" if GPU[0] in RTX_TARGETS else None
    return None


BUILDER = _trt_builder_for_this_gpu()
needs_trt = pytest.mark.skipif(
    BUILDER is None,
    reason="needs a CUDA GPU with TensorRT (or TensorRT-RTX on an sm75/80/86/89/120 GPU) and pycuda or cuda-python",
)
needs_cuda = pytest.mark.skipif(GPU is None or not _cuda_python(), reason="needs a CUDA GPU and cuda-python")


# ------------------------------------------------------------------------------------------- real TensorRT engines
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vsrt.calibration.pipeline import CalibrateOptions, calibrate_model
    from vsrt.export.engine_build import BuildOptions, build_model

    d = random_vsrn_dir(tmp_path_factory.mktemp("gpu") / "model")
    calibrate_model(d, CalibrateOptions(random_inputs=True, guard=False, count=32, batch_size=8))
    for p in ("fp32", "fp16", "int8"):
        build_model(d, None, BuildOptions(precision=p, builder=BUILDER, workspace_mib=1024))
    return d


@needs_trt
@pytest.mark.parametrize(("precision", "min_cos"), [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.99)])
def test_engine_matches_onnxruntime(built: Path, precision: str, min_cos: float) -> None:
    from vsrt.calibration.compare import per_sample_cosine
    from vsrt.calibration.sources import RandomSource
    from vsrt.manifest import Manifest
    from vsrt.runtime.backends.factory import create_backend

    m = Manifest.load(built)
    for stage in ("visual", "text"):
        ort = create_backend(built, m, stage, "onnxruntime", precision)
        trt = create_backend(built, m, stage, "tensorrt", precision)
        assert trt.name == "tensorrt"
        for feeds in RandomSource(stage, m.stage(stage).inputs, count=24, seed=3, batch_size=12,
                                  vocab_size=74).batches():
            a, b = ort.run(feeds), trt.run(feeds)
            for k in a:
                assert b[k].shape == a[k].shape and b[k].dtype == np.float32
                assert per_sample_cosine(a[k], b[k]).min() >= min_cos, (stage, k)


@needs_trt
def test_engine_profile_bounds_and_cuda_graph(built: Path) -> None:
    from vsrt.manifest import Manifest
    from vsrt.runtime.backends.tensorrt_backend import TensorRTBackend

    m = Manifest.load(built)
    plain = TensorRTBackend.from_model_dir(built, m, "visual", "fp32")
    graph = TensorRTBackend.from_model_dir(built, m, "visual", "fp32", cuda_graph=True)
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match=r"outside the engine's optimization profile \(min \[1, 36, 64\], max"):
        plain.run({"regions": rng.random((129, 36, 64), dtype=np.float32)})
    for n in (4, 4, 7, 4):
        x = rng.random((n, 36, 64), dtype=np.float32)
        a, b = plain.run({"regions": x}), graph.run({"regions": x})
        np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=0, atol=1e-6)
    assert len(graph._graphs) == 2


# ------------------------------------------------------------------------------------------- real CUDA, stand-in engine
def _fake_trt() -> types.ModuleType:
    """A module with the slice of TensorRT's API the backend uses; execution = device-to-device copies."""
    from vsrt.runtime.backends.tensorrt_backend import _CudaPython

    cp = _CudaPython(0)
    mod = types.ModuleType("fake_trt_for_tests")
    mod.__version__ = "10.99.0"

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class Logger:
        WARNING = 0

        def __init__(self, *_a) -> None:  # noqa: ANN002
            pass

    io = {"x": ("in", np.float32), "n": ("in", np.int32), "y": ("out", np.float32), "m": ("out", np.int32)}

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}
            self.addr: dict[str, int] = {}

        def set_input_shape(self, name, shape):  # noqa: ANN001, ANN202
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):  # noqa: ANN001, ANN202
            return self.shapes[{"y": "x", "m": "n"}.get(name, name)]

        def set_tensor_address(self, name, ptr):  # noqa: ANN001, ANN202
            self.addr[name] = ptr

        def execute_async_v3(self, stream):  # noqa: ANN001, ANN202
            kind = cp.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            for src, dst in (("x", "y"), ("n", "m")):
                nbytes = int(np.prod(self.shapes[src])) * 4
                cp._check(cp.rt.cudaMemcpyAsync(self.addr[dst], self.addr[src], nbytes, kind, stream), "copy")
            return True

    class Engine:
        num_io_tensors = 4

        def get_tensor_name(self, i):  # noqa: ANN001, ANN202
            return list(io)[i]

        def get_tensor_mode(self, n):  # noqa: ANN001, ANN202
            return io[n][0]

        def get_tensor_dtype(self, n):  # noqa: ANN001, ANN202
            return io[n][1]

        def get_tensor_profile_shape(self, n, _p):  # noqa: ANN001, ANN202
            return [(1, 3), (4, 3), (8, 3)] if n == "x" else [(1,), (4,), (8,)]

        def create_execution_context(self):  # noqa: ANN202
            return Context()

    class Runtime:
        def __init__(self, _logger) -> None:  # noqa: ANN001
            pass

        def deserialize_cuda_engine(self, blob):  # noqa: ANN001, ANN202
            return Engine() if blob == b"fake-plan" else None

    mod.TensorIOMode, mod.Logger, mod.Runtime = TensorIOMode, Logger, Runtime
    mod.nptype = lambda dt: dt
    return mod


@needs_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_plumbing_with_stand_in_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_graph: bool) -> None:
    monkeypatch.setitem(sys.modules, "fake_trt_for_tests", _fake_trt())
    plan = tmp_path / "x.engine"
    plan.write_bytes(b"fake-plan")
    ins = [TensorSpec("x", "float32", ["batch", 3]), TensorSpec("n", "int64", ["batch"])]
    outs = [TensorSpec("y", "float32", ["batch", 3]), TensorSpec("m", "int64", ["batch"])]
    b = tb.TensorRTBackend(plan, "toy", ins, outs, builder="fake_trt_for_tests", cuda=tb._CudaPython(0),
                           cuda_graph=cuda_graph)
    rng = np.random.default_rng(1)
    for batch in (4, 8, 1, 4):
        x = rng.random((batch, 3), dtype=np.float32)
        n = rng.integers(0, 1000, batch).astype(np.int64)
        got = b.run({"x": x, "n": n})
        np.testing.assert_array_equal(got["y"], x)
        np.testing.assert_array_equal(got["m"], n.astype(np.int32))  # engine dtype int32: cast on the way in
    if cuda_graph:
        assert len(b._graphs) == 3
    with pytest.raises(InputError, match="outside the engine's optimization profile"):
        b.run({"x": np.zeros((9, 3), np.float32), "n": np.zeros(9, np.int64)})
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"garbage")
    from vsrt.errors import EngineMismatchError

    with pytest.raises(EngineMismatchError, match="could not deserialize"):
        tb.TensorRTBackend(bad, "toy", ins, outs, builder="fake_trt_for_tests", cuda=tb._CudaPython(0))


@pytest.mark.skipif(GPU is not None, reason="this machine has a GPU: covered by the tests above")
def test_no_gpu_means_unavailable() -> None:
    assert tb.is_available() is False
