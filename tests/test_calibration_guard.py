"""The accuracy guard on a trained model: FP16 / INT8 within the R@1 budget through ONNX Runtime CPU, refusal
(exit 3, nothing written) when over budget, and the sensitivity pass that returns harmful layers to FP32.

The model is a small VSRN (D=32) trained here for 8 epochs on a small concept dataset in the SCAN layout written
by the test (400 train images, each 36 noisy copies of three concept prototypes; captions name the concepts): it
retrieves far above chance, which is all the guard's mechanics need. The recall of the
project's synthetic benchmark per precision is measured by ``benchmarks/precision.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vsrt.text.tokenize", reason="needs vsrt.text.tokenize (caption tokenizer)")

from conftest import write_original_vocab  # noqa: E402

from vsrt.calibration.int8 import CalibrationStats  # noqa: E402
from vsrt.calibration.pipeline import CalibrateOptions, calibrate_model  # noqa: E402
from vsrt.calibration.trt10_cache import read_calibration_cache  # noqa: E402
from vsrt.cli import main  # noqa: E402
from vsrt.errors import AccuracyBudgetError, InputError  # noqa: E402
from vsrt.manifest import Manifest  # noqa: E402

FILLERS = ["a", "the", "with", "and", "near"]


def write_concept_data(d: Path, n_train: int = 400, n_test: int = 200, feat: int = 32, concepts: int = 40,
                       seed: int = 0) -> Path:
    """``{split}_ims.npy`` [N, 36, feat], ``{split}_caps.txt`` (5 per image), ``vocab.pkl`` (original format)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(concepts, feat)).astype(np.float32)
    words = [f"c{k}" for k in range(concepts)]
    for split, n in (("train", n_train), ("dev", n_test), ("test", n_test)):
        chosen = np.stack([rng.choice(concepts, 3, replace=False) for _ in range(n)])
        ims = protos[chosen[:, np.arange(36) % 3]] + 0.5 * rng.normal(size=(n, 36, feat)).astype(np.float32)
        np.save(d / f"{split}_ims.npy", np.maximum(ims, 0).astype(np.float32))
        caps = [" ".join(f"{rng.choice(FILLERS)} {words[c]}" for c in rng.permutation(cs)) + " ."
                for cs in chosen for _ in range(5)]
        (d / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
    write_original_vocab(d / "vocab.pkl", [*words, *FILLERS, "."])
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(model_dir, data_dir)``: a VSRN (D=32) trained 8 epochs on the concept data, converted and exported."""
    from vsrt.export.model_export import export_model
    from vsrt.models.convert import convert_checkpoint
    from vsrt.training.run import train
    from vsrt.training.trainer import TrainConfig

    root = tmp_path_factory.mktemp("guard")
    data = write_concept_data(root / "data")
    ckpt = root / "vsrn.pth.tar"
    train("vsrn", data, ckpt, TrainConfig(epochs=8, batch_size=100, learning_rate=2e-3, seed=0, threads=2,
                                          lr_update=10),
          {"embed_size": 32, "word_dim": 16, "variant": "coco"})
    model = convert_checkpoint(ckpt, root / "model", data / "vocab.pkl", force=True)
    export_model(model)
    return model, data


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def test_fp16_and_int8_within_budget(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = trained
    d = _copy(model, tmp_path)
    results = calibrate_model(d, CalibrateOptions(data_dir=data, count=128))
    m = Manifest.load(d)
    for p in ("fp16", "int8"):
        g = results[p]["guard"]
        assert g["passed"] and g["fp32"]["i2t_r1"] > 2 and g["fp32"]["t2i_r1"] > 2  # 4× chance (0.5) at least
        assert abs(g["drop_points"]["i2t_r1"]) <= 1.0 and abs(g["drop_points"]["t2i_r1"]) <= 1.0, g["drop_points"]
        assert m.calibration[p]["guard"] == g
        for stage in ("visual", "text"):
            assert m.stages[stage].files[p].path == f"onnx/{stage}.{p}.onnx"
            m.file_path(d, stage, p)  # checksum verified
    assert min(c["min"] for c in results["fp16"]["guard"]["embedding_cosine"].values()) >= 0.999
    assert results["int8"]["guard"]["embedding_cosine"]["visual"]["min"] > 0.98
    header, scales = read_calibration_cache(d / "calibration/visual.trt10.cache")
    stats = CalibrationStats.load(d / "calibration/visual.minmax.json")
    assert header == "TRT-100300-EntropyCalibration2"
    assert scales["regions"] == pytest.approx(stats.amax("regions") / 127, rel=1e-6)
    assert stats.source["kind"] == "region_features" and stats.source["count"] == 128
    assert m.stages["visual"].files["int8"].extra["statistics"] == "calibration/visual.minmax.json"


def test_over_budget_is_refused(trained: tuple[Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    model, data = trained
    d = _copy(model, tmp_path)
    rc = main(["calibrate", str(d), "--data", str(data), "--precision", "int8", "--method", "percentile",
               "--percentile", "20", "--count", "64", "--no-sensitivity"])
    err = capsys.readouterr().err
    assert rc == 3 and "int8 loses" in err and "budget 1.00" in err and "Traceback" not in err
    m = Manifest.load(d)
    assert "int8" not in m.stages["visual"].files and not (d / "onnx/visual.int8.onnx").exists()
    assert m.calibration["int8"]["refused"] and not m.calibration["int8"]["guard"]["passed"]
    with pytest.raises(AccuracyBudgetError):
        calibrate_model(d, CalibrateOptions(data_dir=data, precisions=("int8",), method="percentile",
                                            percentile=20.0, count=64, sensitivity=False))


def test_sensitivity_pass_returns_harmful_layers(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = trained
    d = _copy(model, tmp_path)
    res = calibrate_model(d, CalibrateOptions(data_dir=data, precisions=("int8",), method="percentile",
                                              percentile=20.0, count=64))["int8"]
    sens = res["sensitivity"]
    kept = sens["kept_higher_precision"]["visual"]
    assert res["guard"]["passed"] and sens["passed"] and kept
    assert len(kept) == len(sens["steps"]) and sens["steps"][-1]["r1_drop"] <= 1.0
    harm = [h["error"] for h in sens["harm"]]
    assert harm == sorted(harm, reverse=True) and kept[0] == sens["harm"][0]["node"]
    m = Manifest.load(d)
    f = m.stages["visual"].files["int8"]
    assert f.extra["kept_higher_precision"] == kept and all(k in f.extra["excluded"] for k in kept)
    m.file_path(d, "visual", "int8")


def test_guard_needs_eval_data(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = trained
    d = _copy(model, tmp_path)
    with pytest.raises(InputError, match=r"no calibration data for stage\(s\) 'visual', 'text'"):
        calibrate_model(d, CalibrateOptions(precisions=("fp16", "int8")))
    assert not (d / "onnx/visual.fp16.onnx").exists()  # refused before anything was written
    rc = main(["calibrate", str(d), "--precision", "fp16", "--stage", "nope"])
    assert rc == 2
