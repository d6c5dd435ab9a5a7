"""``vsrt calibrate --data`` for every family stage: VSR++'s ``pair_scorer`` (inputs derived through the FP32 visual
and text stages, exactly what re-ranking feeds it) and DSRAN's stages (grid tokens + regions [+ region encodings],
GRU word ids or BERT WordPiece ids; the pixel-only ``grid`` stage from ``--images`` or a clear error).

Tiny random-weight model directories (``tiny_family_dir``; DSRAN-BERT converted with its WordPiece vocabulary) and
small synthetic datasets from :mod:`vsrt.data.synth`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vsrt.text.tokenize", reason="needs vsrt.text.tokenize (caption tokenizer)")
pytest.importorskip("onnxruntime.quantization", reason="INT8 calibration needs onnxruntime.quantization")

from _precision_helpers import tiny_family_dir  # noqa: E402

from vsrt.calibration.int8 import CalibrationStats  # noqa: E402
from vsrt.calibration.pipeline import CalibrateOptions, calibrate_model  # noqa: E402
from vsrt.calibration.sources import (  # noqa: E402
    CaptionSource,
    DSRANRegionSource,
    PairScorerSource,
    StageDataError,
    _RecordingBackend,
    split_source,
)
from vsrt.data.synth import SynthConfig, generate  # noqa: E402
from vsrt.manifest import Manifest  # noqa: E402


def _synth(path: Path, regions: int, dim: int) -> Path:
    return generate(path, SynthConfig(train=40, dev=4, test=24, regions=regions, dim=dim, objects=10, attributes=6,
                                      relations=3, max_objects=3, max_distractors=1))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("famdata")


@pytest.fixture(scope="module")
def vsrpp(root: Path) -> tuple[Path, Path]:
    """``(model_dir, data_dir)``: tiny VSR++ (12 regions × 32) and matching synthetic data."""
    return tiny_family_dir(root / "vsrpp", "vsrpp"), _synth(root / "data12", 12, 32)


@pytest.fixture(scope="module")
def dsran_data(root: Path) -> tuple[Path, Path]:
    """``(data_dir, image_folder)``: synthetic data with 8 regions × 64 and six small PNG images."""
    import cv2

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (70 + 7 * i, 90, 3), dtype=np.uint8))
    return _synth(root / "data8", 8, 64), images


@pytest.fixture(scope="module")
def dsran_gru(root: Path) -> Path:
    return tiny_family_dir(root / "dsran-gru", "dsran-gru")


@pytest.fixture(scope="module")
def dsran_bert(root: Path) -> Path:
    """A tiny DSRAN-BERT converted with its WordPiece vocab.txt (visual and text stages exported)."""
    from test_dsran_fixtures import original_checkpoint, small_config, write_wordpiece_vocab

    from vsrt.export.model_export import export_model
    from vsrt.models.dsran_family import convert_bert_checkpoint

    bert = {"vocab_size": 120, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 40}
    cfg = small_config("bert", K=1, embed_size=16, img_dim=64, num_regions=8, cnn_width=2, bert=bert)
    ckpt, _ = original_checkpoint(root / "bert.pth.tar", cfg)
    md = convert_bert_checkpoint(ckpt, root / "dsran-bert", write_wordpiece_vocab(root / "vocab.txt", 120),
                                 options={"bert_heads": 2, "num_regions": 8})
    export_model(md, stages=["visual", "text"])
    return md


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _stats(model: Path, stage: str) -> CalibrationStats:
    return CalibrationStats.load(model / f"calibration/{stage}.minmax.json")


def _random_stats(model: Path, tmp: Path, stages: list[str]) -> dict[str, CalibrationStats]:
    """The statistics the same run collects with --random-inputs (same count and seed)."""
    d = _copy(model, tmp)
    calibrate_model(d, CalibrateOptions(precisions=("int8",), stages=stages, count=16, random_inputs=True,
                                        guard=False))
    return {s: _stats(d, s) for s in stages}


def _differs(a: CalibrationStats, b: CalibrationStats, tensors: list[str]) -> None:
    for t in tensors:
        (lo1, hi1), (lo2, hi2) = a.ranges[t], b.ranges[t]
        assert abs(hi1 - hi2) > 0.05 * max(abs(hi1), abs(hi2)) or abs(lo1 - lo2) > 0.05 * max(abs(lo1), abs(lo2)), t


def _check_done(model: Path, results: dict, stages: list[str]) -> Manifest:
    m = Manifest.load(model)
    for p in ("fp16", "int8"):
        assert set(results[p]["stages"]) == set(stages)
        for s in stages:
            assert p in m.stages[s].files and (model / f"onnx/{s}.{p}.onnx").is_file(), (s, p)
            assert results[p]["stages"][s]["min_cosine"] > 0.9, (s, p)
        g = results[p]["guard"]  # the accuracy guard ran on the eval split
        assert g["passed"] and g["eval_images"] == 24 and g["eval_captions"] == 120
    for s in stages:
        assert (model / f"calibration/{s}.trt10.cache").is_file()
    return m


def test_vsrpp_every_stage_from_data(vsrpp: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = vsrpp
    d = _copy(model, tmp_path / "m")
    results = calibrate_model(d, CalibrateOptions(data_dir=data, count=16))
    _check_done(d, results, ["visual", "text", "pair_scorer"])
    src = results["int8"]["sources"]
    assert src["visual"]["kind"] == "region_features" and src["visual"]["path"] == str(data / "train_ims.npy")
    assert src["text"]["kind"] == "captions"
    pair = src["pair_scorer"]
    assert pair["kind"] == "derived" and pair["regions"] == str(data / "train_ims.npy")
    assert pair["captions"] == str(data / "train_caps.txt") and pair["count"] == 16 and pair["shortlist_k"] == 40
    assert _stats(d, "pair_scorer").source["kind"] == "derived"
    rand = _random_stats(model, tmp_path / "r", ["pair_scorer"])["pair_scorer"]
    assert rand.source["kind"] == "random"
    _differs(_stats(d, "pair_scorer"), rand, ["region_features", "word_features"])


def test_pair_scorer_source_feeds_what_reranking_feeds(vsrpp: tuple[Path, Path]) -> None:
    from vsrt.data.precomp import load_precomp
    from vsrt.runtime.model import RetrievalModel
    from vsrt.runtime.pairwise import PairwiseScorer, encode_caption_items, encode_image_items

    model_dir, data = vsrpp
    src = split_source(data, "train", "pair_scorer", model_dir, count=5, seed=3, k=8)
    assert isinstance(src, PairScorerSource) and src.k == 8 and len(src) == 5
    batches = list(src.batches())
    assert len(batches) == 5 and src.digest() == split_source(data, "train", "pair_scorer", model_dir, 5, 3,
                                                               k=8).digest()
    assert src.digest() != split_source(data, "train", "pair_scorer", model_dir, 5, 4, k=8).digest()
    # the real runtime, pair_scorer running, on the same sample: identical feeds
    split = load_precomp(data, "train")
    model = RetrievalModel(model_dir, backend="onnxruntime")
    images = encode_image_items(model, np.asarray(split.images[src.images]))
    caps = encode_caption_items(model, [split.captions[int(c)] for c in src.caption_indices])
    rec = _RecordingBackend(model.stage("pair_scorer"))
    model.backends["pair_scorer"] = rec
    for q in range(len(caps)):
        PairwiseScorer(model).rerank_images(caps, q, images, 8)
    assert len(rec.calls) == len(batches)
    for got, want in zip(batches, rec.calls):
        assert set(got) == {"region_features", "word_features", "lengths"} == set(want)
        assert got["region_features"].shape == (8, 12, 16) and got["word_features"].shape[0] == 1
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(StageDataError, match="stage 'pair_scorer' takes the outputs"):
        calibrate_model(model_dir, CalibrateOptions(precisions=("int8",), stages=["pair_scorer"],
                                                    images=data, guard=False))


def test_dsran_gru_grid_needs_images_then_every_stage(dsran_gru: Path, dsran_data: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    data, images = dsran_data
    d = _copy(dsran_gru, tmp_path / "m")
    with pytest.raises(StageDataError, match=r"stage 'grid' \(DSRAN's ResNet grid encoder\) takes raw image "
                                             r"pixels.*--images DIR"):
        calibrate_model(d, CalibrateOptions(data_dir=data, count=16))
    assert not list((d / "onnx").glob("*.int8.onnx"))  # refused before writing anything
    results = calibrate_model(d, CalibrateOptions(data_dir=data, images=images, count=16))
    _check_done(d, results, ["grid", "visual", "text"])
    src = results["int8"]["sources"]
    assert src["grid"]["kind"] == "images" and src["grid"]["count"] == 6
    assert src["visual"]["kind"] == "dsran_regions" and src["visual"]["path"] == str(data / "train_ims.npy")
    assert "derived" in src["visual"]["grid"] and src["text"]["kind"] == "captions"
    rand = _random_stats(dsran_gru, tmp_path / "r", ["grid", "visual"])
    _differs(_stats(d, "visual"), rand["visual"], ["regions", "grid"])
    _differs(_stats(d, "grid"), rand["grid"], ["pixels"])


def test_dsran_visual_source_matches_runtime_eval(dsran_gru: Path, dsran_data: tuple[Path, Path]) -> None:
    from vsrt.data.precomp import load_precomp
    from vsrt.runtime.dsran import dsran_similarity_matrix
    from vsrt.runtime.model import RetrievalModel

    data, _ = dsran_data
    src = split_source(data, "test", "visual", dsran_gru, count=None, batch_size=8)
    assert isinstance(src, DSRANRegionSource)
    model = RetrievalModel(dsran_gru, backend="onnxruntime")
    rec = _RecordingBackend(model.stage("visual"))
    model.backends["visual"] = rec
    dsran_similarity_matrix(model, load_precomp(data, "test").images, ["a dog"], batch_size=8)
    got = list(src.batches())
    assert len(got) == len(rec.calls) == 3
    for a, b in zip(got, rec.calls):
        assert set(a) == set(b) == {"grid", "regions"}
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])


def test_dsran_bert_from_data_with_region_encodings(dsran_bert: Path, dsran_data: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    from vsrt.runtime.dsran import wordpiece_tokenizer
    from vsrt.runtime.model import RetrievalModel

    src_data, _ = dsran_data
    data = Path(shutil.copytree(src_data, tmp_path / "data"))
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(40, 8, 1607)).astype(np.float32)
    np.save(data / "train_region_pos.npy", pos)
    caps = split_source(data, "train", "text", dsran_bert, count=8)
    assert isinstance(caps, CaptionSource) and caps.input_names == ["input_ids"]
    tok = wordpiece_tokenizer(RetrievalModel(dsran_bert))
    batch = caps.first_batch()
    np.testing.assert_array_equal(batch["input_ids"], tok.encode([caps.captions[int(i)] for i in caps.indices]))
    vis = split_source(data, "train", "visual", dsran_bert, count=8, seed=2)
    b = vis.first_batch()
    np.testing.assert_array_equal(b["region_pos"], pos[vis.indices])
    assert vis.describe()["region_pos"] == "train_region_pos.npy"

    d = _copy(dsran_bert, tmp_path / "m")
    results = calibrate_model(d, CalibrateOptions(data_dir=data, count=16))
    _check_done(d, results, ["visual", "text"])
    assert results["int8"]["sources"]["text"]["kind"] == "captions"
    rand = _random_stats(dsran_bert, tmp_path / "r", ["visual", "text"])
    _differs(_stats(d, "visual"), rand["visual"], ["region_pos", "regions"])


def test_cli_calibrate_data_vsrpp(vsrpp: tuple[Path, Path], tmp_path: Path) -> None:
    from vsrt.cli import main

    model, data = vsrpp
    d = _copy(model, tmp_path / "m")
    rc = main(["calibrate", str(d), "--data", str(data), "--precision", "int8", "--count", "8"])
    assert rc == 0
    m = Manifest.load(d)
    assert "int8" in m.stages["pair_scorer"].files
    assert m.calibration["int8"]["sources"]["pair_scorer"]["kind"] == "derived"
    assert m.calibration["int8"]["guard"]["passed"]
