"""`vsrt profile`: statistics, input synthesis from specs, a real profile of a tiny ONNX model with JSON + PNG, and
the TensorRT phase split against a fake engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _retrieval_helpers import tiny_model_dir

from vsrt.errors import InputError
from vsrt.manifest import TensorSpec
from vsrt.runtime.profiler import make_feeds, measure, plot, profile_model, stats, tensorrt_phases

FAST = {"warmup_s": 0.0, "duration_s": 0.02, "min_iterations": 3}


def test_stats_nearest_rank() -> None:
    s = stats([float(v) for v in range(100, 0, -1)], batch=4)
    assert (s["min_ms"], s["max_ms"], s["median_ms"], s["mean_ms"]) == (1.0, 100.0, 50.5, 50.5)
    assert (s["p90_ms"], s["p95_ms"], s["p99_ms"]) == (90.0, 95.0, 99.0)
    assert s["throughput_per_s"] == pytest.approx(4 / 0.0505) and s["iterations"] == 100
    with pytest.raises(InputError):
        stats([])


def test_measure_warms_up_then_times() -> None:
    calls = []
    times = measure(lambda: calls.append(1), warmup_s=0.0, duration_s=0.0, min_iterations=7)
    assert len(times) == 7 and len(calls) == 9  # two warm-up runs at least
    assert all(t >= 0 for t in times)


def test_make_feeds_from_specs() -> None:
    specs = [TensorSpec("tokens", "int64", ["batch", "seq"], [1, 2], [8, 20], [32, 64]),
             TensorSpec("lengths", "int64", ["batch"]),
             TensorSpec("regions", "float32", ["batch", 36, 2048]),
             TensorSpec("attention_mask", "int64", ["batch", "seq"])]
    f = make_feeds(specs, 5, vocab_size=50)
    assert f["tokens"].shape == (5, 20) and f["tokens"].max() < 50 and (f["tokens"][:, 0] == 1).all()
    assert (f["lengths"] == 20).all() and f["regions"].shape == (5, 36, 2048) and f["regions"].min() >= 0
    assert f["attention_mask"].shape == (5, 12) and (f["attention_mask"] == 1).all()  # no opt: default text length
    with pytest.raises(InputError, match="--dim"):
        make_feeds([TensorSpec("x", "float32", ["batch", "mystery"])], 2)
    assert make_feeds([TensorSpec("x", "float32", ["batch", "mystery"])], 2, {"mystery": 3})["x"].shape == (2, 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("prof") / "model")


def test_profile_tiny_model_json_and_png(model: Path, tmp_path: Path) -> None:
    rep = profile_model(model, "onnxruntime", ["fp32", "fp16"], [1, 4, 64], gallery_size=5000, **FAST)
    got = {(r["stage"], r["precision"], r["batch"]) for r in rep.results}
    for b in (1, 4):
        assert {("tokenize", "-", b), ("visual", "fp32", b), ("text", "fp32", b), ("search", "-", b)} <= got
    assert ("visual", "fp32", 64) not in got  # above the manifest profile's max batch (32): skipped with a reason
    assert any(s["stage"] == "visual" and s["batch"] == 64 and "maximum 32" in s["reason"] for s in rep.skipped)
    assert any(s["stage"] == "visual" and s["precision"] == "fp16" and "no fp16 file" in s["reason"]
               for s in rep.skipped)
    for r in rep.results:
        assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["iterations"] >= 3 and r["throughput_per_s"] > 0
    vis = next(r for r in rep.results if r["stage"] == "visual" and r["batch"] == 4)
    assert vis["input_shapes"] == {"regions": [4, 36, 32]} and vis["backend"] == "onnxruntime"
    js = rep.to_json()
    assert js["metadata"]["onnxruntime"] and js["metadata"]["cpu"]["cores"] and js["metadata"]["model"]["family"]
    png = plot(rep, tmp_path / "p.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_profile(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vsrt.cli import main

    out = tmp_path / "prof.json"
    rc = main(["profile", str(model), "--backend", "onnxruntime", "--batch", "1,2", "--duration", "0.02",
               "--warmup", "0", "--min-iterations", "3", "--gallery-size", "2000", "--stages", "visual,search",
               "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "visual" in text and "p99" in text and "JSON:" in text
    data = json.loads(out.read_text())
    assert {r["stage"] for r in data["results"]} == {"visual", "search"}
    assert out.with_suffix(".png").is_file()
    assert main(["profile", str(model), "--precision", "fp64"]) == 2


def test_profile_over_a_real_gallery(model: Path, tmp_path: Path) -> None:
    from vsrt.runtime import open_model
    from vsrt.runtime.gallery import Gallery, model_info_of

    m = open_model(model, backend="onnxruntime")
    g = Gallery.create(tmp_path / "g", m.embed_dim, "int8", model_info_of(m))
    g.add([str(i) for i in range(30)], m.encode_regions(np.random.default_rng(0).random((30, 36, 32), np.float32)))
    rep = profile_model(model, "onnxruntime", ["fp32"], [2], stages=["search"], gallery=tmp_path / "g", **FAST)
    assert rep.results[0]["gallery"]["items"] == 30 and rep.results[0]["gallery"]["storage"] == "int8"


class _FakeCuda:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def h2d(self, buf, host, stream) -> None:  # noqa: ANN001
        self.log.append("h2d")

    def d2h(self, host, buf, nbytes, stream) -> None:  # noqa: ANN001
        self.log.append(f"d2h:{nbytes}")

    def sync(self, stream) -> None:  # noqa: ANN001
        self.log.append("sync")

    def handle(self, stream) -> int:  # noqa: ANN001
        return 0


class _FakeContext:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        return (self.shapes["regions"][0], 8)


class _FakeTrtBackend:
    name = "tensorrt"

    def __init__(self) -> None:
        self.log: list[str] = []
        self.cuda, self.context, self.stream = _FakeCuda(self.log), _FakeContext(), object()
        self.inputs = [TensorSpec("regions", "float32", ["batch", 36, 4])]
        self.outputs = [TensorSpec("embedding", "float32", ["batch", 8])]
        self.dtypes = {"regions": np.dtype(np.float32), "embedding": np.dtype(np.float16)}
        self.host = {"regions": np.zeros(32 * 36 * 4 * 4, np.uint8), "embedding": np.zeros(32 * 8 * 2, np.uint8)}
        self.device = {"regions": object(), "embedding": object()}

    def _execute(self, handle: int) -> None:
        self.log.append("execute")


def test_tensorrt_phase_split_with_a_fake_engine() -> None:
    be = _FakeTrtBackend()
    run = tensorrt_phases(be, make_feeds(be.inputs, 3))
    assert run is not None
    phases = run()
    assert set(phases) == {"h2d", "compute", "d2h"} and all(v >= 0 for v in phases.values())
    assert be.log == ["h2d", "sync", "execute", "sync", f"d2h:{3 * 8 * 2}", "sync"]
    assert be.context.shapes["regions"] == (3, 36, 4)
    assert tensorrt_phases(object(), {}) is None  # ONNX Runtime backends have no phases


def test_profile_reports_tensorrt_phases() -> None:
    from vsrt.manifest import Manifest, Stage

    class Backend(_FakeTrtBackend):
        def run(self, feeds: dict) -> dict:
            return {"embedding": np.zeros((len(feeds["regions"]), 8), np.float32)}

    class Model:
        family, embed_dim = "fake", 8

        def __init__(self) -> None:
            self.manifest = Manifest("fake", "0" * 64)
            self.manifest.set_stage(Stage("visual", [TensorSpec("regions", "float32", ["batch", 36, 4],
                                                                [1, 36, 4], [8, 36, 4], [32, 36, 4])],
                                          [TensorSpec("embedding", "float32", ["batch", 8])]))
            self.manifest.stage("visual").files["fp32"] = object()

        def stage(self, name: str) -> Backend:
            return Backend()

    rep = profile_model("fake-dir", "tensorrt", ["fp32"], [2], stages=["visual"], open_model=lambda *a, **k: Model(),
                        **FAST)
    stages = [r["stage"] for r in rep.results]
    assert stages == ["visual", "visual:h2d", "visual:compute", "visual:d2h"]
    assert rep.results[1]["mode"].startswith("synchronised after each phase")


def test_model_without_visual_stage_skips_search_with_a_reason(tmp_path: Path) -> None:
    """A detector-only model directory has no embedding dimension: search is skipped (with why), not a crash."""
    from vsrt.manifest import Manifest

    md = tiny_model_dir(tmp_path / "model")
    m = Manifest.load(md)
    del m.stages["visual"]
    m.save(md)
    rep = profile_model(md, "onnxruntime", ["fp32"], [1], stages=["text", "search"], **FAST)
    assert {r["stage"] for r in rep.results} == {"text"}
    assert any(s["stage"] == "search" and "no visual stage" in s["reason"] for s in rep.skipped)
