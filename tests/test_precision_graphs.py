"""FP16 and INT8 Q/DQ graphs: what stays FP32, what TensorRT needs in a Q/DQ graph, parity, the TensorRT 10 cache."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from _precision_helpers import generic_feeds, generic_stage_onnx, random_vsrn_dir

from vsrt.calibration.compare import compare_graphs
from vsrt.calibration.fp16 import SENSITIVE_OP_TYPES, convert_fp16, sensitive_nodes
from vsrt.calibration.int8 import CalibrationStats, check_qdq_for_tensorrt, collect_stats, quantize_int8
from vsrt.calibration.sources import ArraySource, RandomSource
from vsrt.calibration.trt10_cache import (
    cache_text,
    decode_scale,
    encode_scale,
    make_entropy_calibrator,
    read_calibration_cache,
    trt_version_code,
    write_calibration_cache,
)
from vsrt.errors import InputError
from vsrt.manifest import Manifest

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def generic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generic_stage_onnx(tmp_path_factory.mktemp("generic") / "generic.fp32.onnx")


@pytest.fixture(scope="module")
def vsrn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_vsrn_dir(tmp_path_factory.mktemp("vsrn") / "model")


def _generic_source(n: int = 8, seed: int = 0) -> ArraySource:
    feeds = generic_feeds(n, seed)
    return ArraySource("generic", {"feats": np.concatenate([f["feats"] for f in feeds])}, batch_size=4)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output,
                                                           *inferred.graph.input]}
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


def test_fp16_keeps_io_and_sensitive_ops_in_fp32(generic: Path, tmp_path: Path) -> None:
    dst = tmp_path / "g.fp16.onnx"
    info = convert_fp16(generic, dst)
    m = onnx.load(str(dst))
    assert [i.type.tensor_type.elem_type for i in [*m.graph.input, *m.graph.output]] == [FLOAT] * 3
    types = _types(m)
    by_name = {n.name: n for n in m.graph.node}
    kept = info["fp32_nodes"]
    assert {by_name[n].op_type for n in kept} >= {"Pow", "ReduceSum", "Sqrt", "Div"}
    for name in kept:
        assert all(types[o] == FLOAT for o in by_name[name].output), name
    heavy = [n for n in m.graph.node if n.op_type in ("Conv", "GRU", "Gemm", "MatMul")]
    assert heavy and all(types[n.output[0]] == FLOAT16 for n in heavy)
    assert info["casts"] > 0 and info["fp16_nodes"] > len(kept)
    # the FP32 chain (Pow → ReduceSum → Sqrt → Div → output) never rounds through float16 between its steps
    producer = {o: n for n in m.graph.node for o in n.output}
    for name in kept:
        for i in by_name[name].input:
            p = producer.get(i)
            q = producer.get(p.input[0]) if p is not None and p.op_type == "Cast" else None
            assert not (q is not None and q.op_type == "Cast" and types[q.input[0]] == FLOAT), (name, i)
    assert info["folded_cast_pairs"] > 0
    out = producer["embedding"]
    assert out.op_type == "Identity" and producer[out.input[0]].op_type == "Div"
    parity = compare_graphs(generic, dst, generic_feeds(3))
    assert parity["min_cosine"] >= 0.999


def test_fp16_norm_division_is_found() -> None:
    x = onnx.helper.make_tensor_value_info("x", FLOAT, [2, 4])
    y = onnx.helper.make_tensor_value_info("y", FLOAT, [2, 4])
    nodes = [
        onnx.helper.make_node("ReduceL2", ["x"], ["n"], name="norm", keepdims=1),
        onnx.helper.make_node("Div", ["x", "n"], ["y"], name="apply"),
        onnx.helper.make_node("Div", ["n", "x"], ["z"], name="other"),
    ]
    g = onnx.helper.make_graph(nodes, "g", [x], [y])
    keep = sensitive_nodes(onnx.helper.make_model(g))
    assert set(keep) == {"norm", "apply"} and "ReduceL2" in SENSITIVE_OP_TYPES


def test_fp16_extra_nodes_and_unknown(generic: Path, tmp_path: Path) -> None:
    m = onnx.load(str(generic))
    conv = next(n.name for n in m.graph.node if n.op_type == "Conv")
    info = convert_fp16(generic, tmp_path / "a.onnx", keep_fp32_nodes=[conv])
    assert conv in info["fp32_nodes"]
    a = onnx.load(str(tmp_path / "a.onnx"))
    node = next(n for n in a.graph.node if n.name == conv)
    assert _types(a)[node.output[0]] == FLOAT and _types(a)[node.input[1]] == FLOAT  # fp32 weights too
    with pytest.raises(InputError, match="unknown nodes"):
        convert_fp16(generic, tmp_path / "b.onnx", keep_fp32_nodes=["nope"])


def test_int8_qdq_is_what_tensorrt_needs(generic: Path, tmp_path: Path) -> None:
    stats = collect_stats(generic, _generic_source(), "minmax")
    dst = tmp_path / "g.int8.onnx"
    info = quantize_int8(generic, dst, stats)
    m = onnx.load(str(dst))
    assert check_qdq_for_tensorrt(m) == []
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    ops = {n.name: n for n in m.graph.node}
    kinds = {ops[n].op_type for n in info["quantized_nodes"]}
    assert kinds == {"Conv", "Gemm"}
    dq_by_out = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    for name in info["quantized_nodes"]:
        node = ops[name]
        w_dq = dq_by_out[node.input[1]]
        w_q, scale, zp = (inits[i] for i in w_dq.input)
        assert w_q.dtype == np.int8 and np.all(zp == 0)
        axis = {a.name: a.i for a in w_dq.attribute}.get("axis", 1)
        out_channels = w_q.shape[0]  # Conv [O, I, k]; Gemm transB=1 [O, I]
        assert axis == 0 and scale.shape == (out_channels,), (name, axis, scale.shape)
        assert node.input[0] in dq_by_out  # activation quantized
        bias = node.input[2]
        assert bias in inits and inits[bias].dtype == np.float32  # float bias, no int32 DQ
    gru = next(n for n in m.graph.node if n.op_type == "GRU")
    assert not any(i in dq_by_out for i in gru.input) and gru.name in info["excluded"]
    acts = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(np.all(inits[n.input[2]] == 0) and inits[n.input[2]].dtype == np.int8 for n in acts)
    parity = compare_graphs(generic, dst, generic_feeds(3, seed=5))
    assert parity["min_cosine"] > 0.99


def test_qdq_checker_flags_ort_defaults(generic: Path, tmp_path: Path) -> None:
    """ONNX Runtime's default QDQ (int32 biases, asymmetric activations) is what TensorRT must not get."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src = _generic_source()
    out = tmp_path / "default.onnx"
    quantize_static(str(generic), str(out), src.ort_reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    problems = " | ".join(check_qdq_for_tensorrt(onnx.load(str(out))))
    assert "int32 (bias)" in problems and "zero point" in problems


def test_int8_exclusions_and_methods(generic: Path, tmp_path: Path) -> None:
    src = _generic_source()
    mm = collect_stats(generic, src, "minmax")
    pc = collect_stats(generic, src, "percentile", percentile=90.0)
    en = collect_stats(generic, src, "entropy")
    common = set(mm.ranges) & set(pc.ranges) & set(en.ranges)
    assert common and any(pc.amax(t) < mm.amax(t) * 0.999 for t in common)
    assert all(pc.amax(t) <= mm.amax(t) * 1.0001 + 1e-6 for t in common)
    assert mm.source["digest"] == src.digest() and mm.method == "minmax"
    conv = next(n.name for n in onnx.load(str(generic)).graph.node if n.op_type == "Conv")
    info = quantize_int8(generic, tmp_path / "x.onnx", mm, exclude_nodes=[conv])
    assert conv not in info["quantized_nodes"] and conv in info["excluded"]
    with pytest.raises(InputError, match="unknown node"):
        quantize_int8(generic, tmp_path / "y.onnx", mm, exclude_nodes=["nope"])
    with pytest.raises(InputError, match="unknown calibration method"):
        collect_stats(generic, src, "kl")
    stats_file = tmp_path / "s.json"
    mm.save(stats_file)
    assert CalibrationStats.load(stats_file).ranges == mm.ranges


def test_vsrn_fp16_and_int8_parity(vsrn_dir: Path, tmp_path: Path) -> None:
    man = Manifest.load(vsrn_dir)
    for stage in ("visual", "text"):
        fp32 = man.file_path(vsrn_dir, stage, "fp32")
        src = RandomSource(stage, man.stage(stage).inputs, count=16, seed=1, batch_size=8, vocab_size=74)
        convert_fp16(fp32, tmp_path / f"{stage}.fp16.onnx")
        p16 = compare_graphs(fp32, tmp_path / f"{stage}.fp16.onnx", src.batches())
        assert p16["min_cosine"] >= 0.999, (stage, p16)
        stats = collect_stats(fp32, src, "minmax")
        info = quantize_int8(fp32, tmp_path / f"{stage}.int8.onnx", stats)
        p8 = compare_graphs(fp32, tmp_path / f"{stage}.int8.onnx",
                            RandomSource(stage, man.stage(stage).inputs, count=16, seed=9, vocab_size=74).batches())
        if stage == "visual":
            assert len(info["quantized_nodes"]) == 13  # fc + 4 × (x·proj, x·xᵀ, r·g); matrix-vector x·u excluded
            assert sum("rank-1" in r for r in info["excluded"].values()) == 4
            assert p8["min_cosine"] > 0.99, p8
        else:  # GRU + gathers only: nothing to quantize, graph stays float and exact
            assert info["quantized_nodes"] == [] and p8["max_abs_err"] == 0.0


def test_trt10_cache_format(tmp_path: Path) -> None:
    assert trt_version_code("10.3.0") == 100300 and trt_version_code("8.6.1") == 8601
    assert trt_version_code("10.3") == 100300
    with pytest.raises(InputError):
        trt_version_code("ten")
    assert encode_scale(1.0) == "3f800000" and decode_scale("3f800000") == 1.0
    s = 0.0123
    assert abs(decode_scale(encode_scale(s)) - s) < 1e-9
    stats = CalibrationStats("minmax", {"regions": (0.0, 2.54), "/fc/Add_output_0": (-1.27, 0.5)}, {})
    path = write_calibration_cache(tmp_path / "c.cache", stats, "10.3.0")
    header, scales = read_calibration_cache(path)
    assert header == "TRT-100300-EntropyCalibration2"
    assert scales["regions"] == pytest.approx(2.54 / 127, rel=1e-6)
    assert scales["/fc/Add_output_0"] == pytest.approx(1.27 / 127, rel=1e-6)
    assert cache_text(stats).splitlines()[1].startswith("/fc/Add_output_0: ")
    assert struct.unpack(">f", bytes.fromhex(cache_text(stats).splitlines()[2].split(": ")[1]))[0] > 0
    (tmp_path / "bad.cache").write_text("hello\n")
    with pytest.raises(InputError, match="not a TensorRT calibration cache"):
        read_calibration_cache(tmp_path / "bad.cache")


class _FakeTrt:
    """Just enough of TensorRT 10's Python API for the calibrator class."""

    __version__ = "10.3.0"

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass


class _FakeCuda:
    def __init__(self) -> None:
        self.copies: list[np.ndarray] = []

    def malloc(self, nbytes: int):  # noqa: ANN201
        class Buf:
            ptr = 4096 * (len(self.copies) + 1)

        b = Buf()
        b.nbytes = nbytes
        return b

    def h2d(self, buf, host) -> None:  # noqa: ANN001
        self.copies.append(host.copy())


def test_entropy_calibrator_uses_cache_or_source(tmp_path: Path) -> None:
    src = ArraySource("visual", {"regions": np.arange(2 * 5 * 3, dtype=np.float32).reshape(5, 2, 3)}, batch_size=2)
    cache = tmp_path / "c.cache"
    cuda = _FakeCuda()
    cal = make_entropy_calibrator(_FakeTrt, src, cache, cuda)
    assert isinstance(cal, _FakeTrt.IInt8EntropyCalibrator2)
    assert cal.get_batch_size() == 2 and cal.read_calibration_cache() is None
    ptrs = [cal.get_batch(["regions"]) for _ in range(4)]
    assert ptrs[-1] is None and all(p and isinstance(p[0], int) for p in ptrs[:3])
    assert np.array_equal(np.concatenate(cuda.copies), src.arrays["regions"])
    cal.write_calibration_cache(b"TRT-100300-EntropyCalibration2\nregions: 3c010204\n")
    again = make_entropy_calibrator(_FakeTrt, None, cache)
    assert again.read_calibration_cache().startswith(b"TRT-100300") and again.get_batch(["regions"]) is None

    class Trt11:
        __version__ = "11.1.0"

    with pytest.raises(InputError, match="removed in TensorRT 11"):
        make_entropy_calibrator(Trt11, src, cache)
