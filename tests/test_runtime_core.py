"""The runtime: no torch, manifest/checksum checks, ONNX Runtime embeddings equal PyTorch's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vsrt.errors import InputError, ManifestError


def test_runtime_never_imports_torch() -> None:
    code = (
        "import sys, vsrt, vsrt.runtime, vsrt.runtime.model, vsrt.manifest, vsrt.modeldir, vsrt.text.vocab\n"
        "import vsrt.runtime.backends.factory\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def exported_model(tmp_path: Path, small_vsrn) -> Path:
    from vsrt.export.model_export import export_model
    from vsrt.models.convert import convert_checkpoint

    ckpt, vocab = small_vsrn
    out = convert_checkpoint(ckpt, tmp_path / "model", vocab)
    export_model(out)
    return out


def test_onnx_runtime_matches_torch(exported_model: Path) -> None:
    import torch

    from vsrt.export.model_export import load_torch_model
    from vsrt.export.vsrn import random_regions
    from vsrt.runtime import open_model

    model = open_model(exported_model, backend="onnxruntime")
    _, _, mods = load_torch_model(exported_model)
    regions = random_regions(5, 3, 36, 48).numpy()
    got = model.encode_regions(regions, batch_size=2)
    with torch.no_grad():
        ref = mods["visual"](torch.from_numpy(regions))[0].numpy()
    assert got.shape == (5, 64) and np.abs(got - ref).max() < 1e-5
    ids = model.vocab.word2idx
    tokens = np.array([[1, ids["a"], ids["dog"], 2, 0], [1, ids["red"], ids["car"], ids["on"], 2]], np.int64)
    lengths = np.array([4, 5], np.int64)
    out = model.stage("text").run({"tokens": tokens, "lengths": lengths})
    with torch.no_grad():
        ref_t = mods["text"].forward_packed(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
    assert np.abs(out["embedding"] - ref_t).max() < 1e-5
    assert model.embed_dim == 64 and model.num_regions == 36


def test_bad_region_input_is_clear(exported_model: Path) -> None:
    from vsrt.runtime import open_model

    model = open_model(exported_model, backend="onnxruntime")
    with pytest.raises(InputError, match=r"must have shape \[N, 36, 48\], got \[2, 35, 48\]"):
        model.encode_regions(np.zeros((2, 35, 48), np.float32))
    bad = np.zeros((1, 36, 48), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        model.encode_regions(bad)


def test_tampered_onnx_is_refused(exported_model: Path) -> None:
    from vsrt.runtime import open_model

    f = exported_model / "onnx" / "visual.fp32.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    model = open_model(exported_model, backend="onnxruntime")
    with pytest.raises(ManifestError, match="does not match its manifest checksum"):
        model.encode_regions(np.zeros((1, 36, 48), np.float32))


def test_config_change_after_export_is_refused(exported_model: Path) -> None:
    from vsrt.runtime import open_model

    cfg = json.loads((exported_model / "config.json").read_text())
    cfg["config"]["variant"] = "f30k"
    (exported_model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ManifestError, match="config checksum differs"):
        open_model(exported_model)


def test_not_a_model_dir(tmp_path: Path) -> None:
    from vsrt.runtime import open_model

    with pytest.raises(ManifestError, match="not a vsrt model directory"):
        open_model(tmp_path)


def test_manifest_records_parity_and_versions(exported_model: Path) -> None:
    m = json.loads((exported_model / "manifest.json").read_text())
    assert m["schema"] == 1 and m["model"]["family"] == "vsrn"
    for stage in ("visual", "text"):
        f = m["stages"][stage]["files"]["fp32"]
        assert f["parity"]["min_cosine"] >= 0.99999 and f["parity"]["threshold"] == 0.99999
        assert len(f["sha256"]) == 64
    assert m["stages"]["visual"]["inputs"][0]["min"] == [1, 36, 48]
    assert {"torch", "onnx", "onnxruntime", "vsrt"} <= set(m["versions"])


def test_cli_reports_errors_without_traceback(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "vsrt", "convert", str(tmp_path / "missing.pth"), "-o",
                        str(tmp_path / "m"), "--vocab", "v.pkl"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "vsrt convert: error: checkpoint not found" in r.stderr and "Traceback" not in r.stderr
