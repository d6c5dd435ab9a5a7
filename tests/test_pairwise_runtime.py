"""Runtime pairwise scoring (no torch): pair_scorer on shortlists, fused scores, two-stage retrieval."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import original_vsrn_checkpoint, write_original_vocab

from vsrt.errors import InputError
from vsrt.export.model_export import export_model
from vsrt.export.vsrn import random_captions, random_regions
from vsrt.models.convert import convert_checkpoint
from vsrt.models.registry import register_family_module
from vsrt.models.scan_attention import t2i_reference
from vsrt.models.vsrpp import VSRPPConfig
from vsrt.runtime.model import RetrievalModel
from vsrt.runtime.pairwise import (
    SHORTLIST_OFFSET,
    CaptionItems,
    ImageItems,
    PairwiseScorer,
    two_stage_matrix,
)
from vsrt.training.vsrn import save_original_checkpoint
from vsrt.training.vsrpp import VSRPPTrainable, original_opt

register_family_module("vsrpp", "vsrt.models.vsrpp_family")

N_IMG, N_CAP = 7, 6


@pytest.fixture(scope="module")
def vsrpp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("vsrpp")
    words = [f"w{i}" for i in range(30)]
    vocab = write_original_vocab(tmp / "vocab.pkl", words)
    cfg = VSRPPConfig(vocab_size=len(words) + 4, img_dim=24, embed_size=16, word_dim=8, mu=2.0)
    torch.manual_seed(0)
    model = VSRPPTrainable(cfg)
    save_original_checkpoint(tmp / "ck.pth.tar", model, original_opt(cfg, {}, "d", "v"), 1, 0.0, 0)  # type: ignore[arg-type]
    out = convert_checkpoint(tmp / "ck.pth.tar", tmp / "model", vocab, family="vsrpp")
    export_model(out)
    return out


@pytest.fixture(scope="module")
def items(vsrpp_dir: Path) -> tuple[RetrievalModel, ImageItems, CaptionItems]:
    """Items from the exported stages (tokens built directly, so no tokenizer is involved)."""
    model = RetrievalModel(vsrpp_dir, "onnxruntime")
    regions = random_regions(N_IMG, 5, 36, 24).numpy()
    vis = model.stage("visual").run({"regions": regions})
    tokens, lengths = random_captions(N_CAP, 6, 34, 9)
    txt = model.stage("text").run({"tokens": tokens.numpy(), "lengths": lengths.numpy()})
    return (model, ImageItems(vis["embedding"], vis["region_features"]),
            CaptionItems(txt["embedding"], txt["word_features"], lengths.numpy()))


def _torch_local(images: ImageItems, captions: CaptionItems) -> np.ndarray:
    return t2i_reference(torch.from_numpy(images.region_features).double(),
                         torch.from_numpy(captions.word_features).double(),
                         torch.from_numpy(captions.lengths), 9.0, 6.0, "LogSumExp").numpy()


def test_local_scores_match_scan_reference_in_any_chunking(items) -> None:
    model, images, captions = items
    ref = _torch_local(images, captions)
    for chunk in (None, 3):
        scorer = PairwiseScorer(model, chunk=chunk)
        got = scorer.local_matrix(images, captions)
        np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    scorer = PairwiseScorer(model)
    assert scorer.mu == 2.0 and scorer.chunk == 256
    for i in (0, N_IMG - 1):
        got = scorer.caption_scores(images.region_features[i], captions, [3, 0, 5])
        np.testing.assert_allclose(got, ref[i, [3, 0, 5]], atol=2e-6, rtol=0)
    fused = scorer.fused_matrix(images, captions)
    np.testing.assert_allclose(fused, images.embeddings @ captions.embeddings.T + 2.0 * ref, atol=1e-5, rtol=0)
    assert PairwiseScorer(model, mu=0.5).mu == 0.5


def test_rerank_with_full_shortlist_is_the_fused_ranking(items) -> None:
    model, images, captions = items
    scorer = PairwiseScorer(model)
    fused = scorer.fused_matrix(images, captions)
    for c in range(N_CAP):
        res = scorer.rerank_images(captions, c, images, k=N_IMG)
        assert list(res.indices) == list(np.argsort(-fused[:, c], kind="stable"))
        np.testing.assert_allclose(res.fused, fused[res.indices, c], atol=1e-5)
        np.testing.assert_allclose(res.fused, res.global_scores + 2.0 * res.local_scores, atol=1e-6)
        short = scorer.rerank_images(captions, c, images, k=3)
        glob_top = set(np.argsort(-(images.embeddings @ captions.embeddings[c]))[:3])
        assert set(short.indices) == glob_top and len(short.indices) == 3
    for i in range(N_IMG):
        res = scorer.rerank_captions(images, i, captions, k=N_CAP)
        assert list(res.indices) == list(np.argsort(-fused[i], kind="stable"))


def test_two_stage_matrix() -> None:
    g = np.array([[0.9, 0.1], [0.5, 0.4], [0.1, 0.8]], np.float32)
    f = np.array([[0.0, 3.0], [2.0, 1.0], [1.0, 0.0]], np.float32)
    t2i = two_stage_matrix(g, f, k=2, axis=0)  # per caption (column): top-2 images by g, re-ranked by f
    assert list(np.argsort(-t2i[:, 0])) == [1, 0, 2]
    assert list(np.argsort(-t2i[:, 1])) == [1, 2, 0]
    i2t = two_stage_matrix(g, f, k=1, axis=1)
    assert list(np.argsort(-i2t, axis=1)[:, 0]) == [0, 0, 1]
    np.testing.assert_array_equal(two_stage_matrix(g, f, 3, 0) - SHORTLIST_OFFSET, f)
    # a full shortlist ranks exactly like the fused scores, however close they are (no float32 rounding at 1e4)
    close = np.array([[0.5, 0.5], [0.5 + 2e-5, 0.5 + 1e-5], [0.5 + 1e-5, 0.5 + 2e-5]], np.float32)
    for axis in (0, 1):
        two = two_stage_matrix(g, close, close.shape[axis], axis)
        assert (np.argsort(-two, axis=axis) == np.argsort(-close, axis=axis)).all()
    with pytest.raises(InputError):
        two_stage_matrix(g, f[:2], 1, 0)


def test_bad_inputs_are_clear(items) -> None:
    model, images, captions = items
    scorer = PairwiseScorer(model)
    with pytest.raises(InputError, match="region_features"):
        scorer.local_scores(images.region_features[0], captions.words(0))
    with pytest.raises(InputError, match="length"):
        scorer.local_scores(images.region_features, captions.words(0), length=50)
    with pytest.raises(InputError, match="one image"):
        scorer.caption_scores(images.region_features[:2], captions, [0])
    with pytest.raises(InputError, match="k must be"):
        scorer.rerank_images(captions, 0, images, k=0)


def test_dual_encoder_has_no_pair_scorer(tmp_path: Path, vocab_words: list[str]) -> None:
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt = original_vsrn_checkpoint(tmp_path / "m.pth.tar", len(vocab_words) + 4)
    out = convert_checkpoint(ckpt, tmp_path / "vsrn", vocab)
    with pytest.raises(InputError, match="dual encoder"):
        PairwiseScorer(RetrievalModel(out))


def test_runtime_module_does_not_import_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import vsrt.runtime.pairwise, vsrt.runtime.model\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True)
