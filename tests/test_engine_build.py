"""Engine builds with TensorRT-RTX on the CPU (ahead of time, compute capability given): every stage of every
registered family at FP32, FP16 and INT8 Q/DQ, names and manifest entries, the CLI, and the full-size VSRN (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import pytest
from _precision_helpers import generic_feeds, generic_stage_onnx, random_vsrn_dir, tiny_family_dir

from vsrt.calibration.pipeline import CalibrateOptions, calibrate_model
from vsrt.cli import main
from vsrt.errors import InputError
from vsrt.export.engine_build import BuildOptions, build_model, build_stage
from vsrt.io import sha256_file
from vsrt.manifest import Manifest, Stage, TensorSpec
from vsrt.models.registry import family_names

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip tensorrt-rtx-cu12, in the test extra) is needed")
RTX = BuildOptions(builder="tensorrt_rtx", compute_capabilities=["86"], workspace_mib=512)


def _calibrated_dir(path: Path, **kw) -> Path:  # noqa: ANN003
    d = random_vsrn_dir(path, **kw)
    calibrate_model(d, CalibrateOptions(random_inputs=True, guard=False, count=32, batch_size=8))
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _calibrated_dir(tmp_path_factory.mktemp("rtx") / "model")


def _build_all_precisions(d: Path) -> list[str]:
    """Build every stage of ``d`` at FP32, FP16 and INT8 Q/DQ; check names and manifest entries; return stages."""
    version = trt.__version__
    short = ".".join(version.split(".")[:3])
    stages = sorted(s for s, st in Manifest.load(d).stages.items() if "fp32" in st.files)
    for precision in ("fp32", "fp16", "int8"):
        entries = build_model(d, None, BuildOptions(**{**RTX.__dict__, "precision": precision}))
        assert sorted(e["stage"] for e in entries) == stages
        for e in entries:
            assert e["file"] == f"engines/{e['stage']}_{precision}_trtrtx{short}_sm86.engine"
            assert e["onnx_file"] == f"onnx/{e['stage']}.{precision}.onnx"
            assert e["typing"] == "strong" and e["flags"] == [] and e["builder"] == "tensorrt_rtx"
            assert sha256_file(d / e["file"]) == e["sha256"] and e["size_bytes"] > 0
            assert e["trt_version"] == version and e["sm"] == "86"
    m = Manifest.load(d)
    assert len(m.engines) == 3 * len(stages) and m.versions["tensorrt_rtx"] == version
    return stages


def test_vsrn_every_stage_every_precision_builds(model_dir: Path) -> None:
    assert _build_all_precisions(model_dir) == ["text", "visual"]
    m = Manifest.load(model_dir)
    assert m.engines[0]["profile"]["regions"] == {"min": [1, 36, 64], "opt": [32, 36, 64], "max": [128, 36, 64]}
    text = next(e for e in m.engines if e["stage"] == "text")
    assert text["profile"]["tokens"] == {"min": [1, 2], "opt": [32, 16], "max": [128, 64]}
    # rebuilding replaces the entry instead of adding a second one
    build_model(model_dir, ["visual"], RTX)
    assert len(Manifest.load(model_dir).engines) == 6


@pytest.mark.parametrize("family", [f for f in family_names() if f != "vsrn"])
def test_every_family_every_stage_builds(family: str, tmp_path: Path) -> None:
    """Every registered family (tiny random-weight config), every stage it exports, at FP32, FP16 and INT8 Q/DQ:
    the generic path ``vsrt export`` → ``vsrt calibrate`` → ``vsrt build`` with nothing family-specific."""
    d = tiny_family_dir(tmp_path / family, family)
    calibrate_model(d, CalibrateOptions(random_inputs=True, guard=False, count=16, batch_size=8))
    stages = _build_all_precisions(d)
    expected = {"vsrpp": ["pair_scorer", "text", "visual"], "resg": ["text", "visual"],
                "dsran-gru": ["grid", "text", "visual"], "dsran-bert": ["grid", "text", "visual"]}
    assert stages == expected.get(family, stages)


def test_profile_override_and_multi_target(model_dir: Path) -> None:
    opts = BuildOptions(**{**RTX.__dict__, "compute_capabilities": ["86", "89"],
                           "shapes": {"regions": ([1, 36, 64], [4, 36, 64], [8, 36, 64])}})
    (e,) = build_model(model_dir, ["visual"], opts)
    assert e["sm"] == "86-89" and e["file"].endswith("_sm86-89.engine")
    assert e["profile"]["regions"]["max"] == [8, 36, 64]
    with pytest.raises(InputError, match="cannot target sm90"):
        build_model(model_dir, ["visual"], BuildOptions(**{**RTX.__dict__, "compute_capabilities": ["90"]}))


def test_refusals(model_dir: Path, tmp_path: Path) -> None:
    bare = random_vsrn_dir(tmp_path / "bare")
    with pytest.raises(InputError, match="no fp16 ONNX.*vsrt calibrate"):
        build_model(bare, ["visual"], BuildOptions(**{**RTX.__dict__, "precision": "fp16"}))
    with pytest.raises(InputError, match="implicit"):
        build_model(model_dir, ["visual"], BuildOptions(**{**RTX.__dict__, "precision": "int8", "mode": "implicit"}))
    with pytest.raises(InputError, match="has no stage 'roi_head'"):
        build_model(model_dir, ["roi_head"], RTX)


def test_generic_stage_with_conv_gemm_qdq_builds(tmp_path: Path) -> None:
    """Conv / Gemm Q/DQ with per-channel weights and float biases, GRU in float: TensorRT-RTX takes it."""
    import numpy as np

    from vsrt.calibration.int8 import collect_stats, quantize_int8
    from vsrt.calibration.sources import ArraySource

    (tmp_path / "onnx").mkdir()
    fp32 = generic_stage_onnx(tmp_path / "onnx" / "generic.fp32.onnx")
    feats = np.concatenate([f["feats"] for f in generic_feeds(4)])
    stats = collect_stats(fp32, ArraySource("generic", {"feats": feats}, 4))
    quantize_int8(fp32, tmp_path / "onnx" / "generic.int8.onnx", stats)
    m = Manifest("generic")
    m.set_stage(Stage("generic", [TensorSpec("feats", "float32", ["batch", 12, 16], [1, 12, 16], [4, 12, 16],
                                             [16, 12, 16])], [TensorSpec("embedding", "float32", ["batch", 24]),
                                                              TensorSpec("steps", "float32", ["batch", 12, 24])]))
    m.add_file(tmp_path, "generic", "fp32", "onnx/generic.fp32.onnx")
    m.add_file(tmp_path, "generic", "int8", "onnx/generic.int8.onnx")
    e = build_stage(tmp_path, m, "generic", BuildOptions(**{**RTX.__dict__, "precision": "int8"}))
    assert (tmp_path / e["file"]).stat().st_size > 0
    q = onnx.load(str(tmp_path / "onnx" / "generic.int8.onnx"))
    assert sum(n.op_type == "DequantizeLinear" for n in q.graph.node) >= 4


def test_build_cli(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vsrt.runtime.backends.tensorrt_backend import gpu_info

    rc = main(["build", str(model_dir), "--builder", "tensorrt_rtx", "--precision", "fp16", "--stage", "text",
               "--compute-capability", "86", "--shape", "tokens:1x2/8x8/16x32", "--shape", "lengths:1/8/16"])
    assert rc == 0
    e = next(e for e in Manifest.load(model_dir).engines if e["stage"] == "text" and e["precision"] == "fp16")
    assert e["profile"]["tokens"]["max"] == [16, 32]
    capsys.readouterr()
    if gpu_info(0) is None:
        rc = main(["build", str(model_dir), "--builder", "tensorrt_rtx", "--stage", "text"])
        err = capsys.readouterr().err
        assert rc == 2 and "--compute-capability" in err and "Traceback" not in err
    rc = main(["build", str(model_dir), "--builder", "tensorrt_rtx", "--shape", "tokens:8x2/1x2/4x2",
               "--compute-capability", "86"])
    assert rc == 2 and "min ≤ opt ≤ max" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_vsrn_all_precisions(tmp_path: Path) -> None:
    """Full-size VSRN (D=2048, 2048-d regions, 300-d words): export, FP16/INT8 graphs and TensorRT-RTX builds.

    Prints the build times (the issue asks them measured at full size).
    """
    t0 = time.perf_counter()
    d = random_vsrn_dir(tmp_path / "full", embed_size=2048, img_dim=2048, word_dim=300, cache=False)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibrate_model(d, CalibrateOptions(random_inputs=True, guard=False, count=16, batch_size=8))
    t_calib = time.perf_counter() - t0
    times = {}
    for precision in ("fp32", "fp16", "int8"):
        for e in build_model(d, None, BuildOptions(**{**RTX.__dict__, "precision": precision})):
            times[f"{e['stage']}_{precision}"] = e["build_seconds"]
            assert (d / e["file"]).stat().st_size > 1e6
    m = Manifest.load(d)
    assert m.stages["visual"].files["fp16"].parity["min_cosine"] >= 0.999
    assert m.stages["visual"].files["int8"].parity["min_cosine"] > 0.98
    print(json.dumps({"export_s": round(t_export, 1), "calibrate_s": round(t_calib, 1), "build_s": times}))
