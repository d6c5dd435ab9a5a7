"""SCAN text-to-image attention (VSR++'s S_L): batched/paired forms equal SCAN's per-caption loop; FP16 safety."""

from __future__ import annotations

import pytest
import torch

from vsrt.models.common import l2norm, length_mask
from vsrt.models.scan_attention import (
    AGG_FUNCS,
    PairScorer,
    aggregate,
    t2i_pair_scores,
    t2i_reference,
    t2i_score_matrix,
)


def _data(seed: int, n_img: int = 5, n_cap: int = 4, r: int = 36, d: int = 32, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    regions = l2norm(torch.randn(n_img, r, d, generator=g, dtype=torch.float64), dim=2, eps=1e-8)
    lengths = torch.randint(2, t + 1, (n_cap,), generator=g)
    lengths[1] = t
    src = regions[torch.randint(0, n_img, (n_cap, t), generator=g), torch.randint(0, r, (n_cap, t), generator=g)]
    words = l2norm(src + 0.3 * torch.randn(n_cap, t, d, generator=g, dtype=torch.float64), dim=2, eps=1e-8)
    return regions, words * length_mask(lengths, t).unsqueeze(-1), lengths


@pytest.mark.parametrize("agg", AGG_FUNCS)
@pytest.mark.parametrize("seed", range(3))
def test_batched_forms_equal_scan_loop(agg: str, seed: int) -> None:
    regions, words, lengths = _data(seed)
    ref = t2i_reference(regions, words, lengths, 9.0, 6.0, agg)
    assert ref.shape == (5, 4)
    torch.testing.assert_close(t2i_score_matrix(regions, words, lengths, 9.0, 6.0, agg), ref, atol=1e-12, rtol=0)
    for c in range(4):  # one caption against all images (t2i re-ranking)
        got = t2i_pair_scores(regions, words[c : c + 1], lengths[c : c + 1], 9.0, 6.0, agg)
        torch.testing.assert_close(got, ref[:, c], atol=1e-12, rtol=0)
    # explicit pairs
    got = t2i_pair_scores(regions[:4], words, lengths, 9.0, 6.0, agg)
    torch.testing.assert_close(got, ref[torch.arange(4), torch.arange(4)], atol=1e-12, rtol=0)


def test_padding_content_is_ignored() -> None:
    regions, words, lengths = _data(7)
    noisy = words.clone()
    noisy[0, lengths[0]:] = 3.0
    a = t2i_pair_scores(regions, words[:1], lengths[:1])
    b = t2i_pair_scores(regions, noisy[:1], lengths[:1])
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_max_subtracted_lse_does_not_overflow_in_fp16() -> None:
    """λ_lse = 20 (SCAN's COCO setting) with near-perfect matches: exp(20·r) overflows FP16 in the original form."""
    torch.manual_seed(0)
    regions = l2norm(torch.randn(3, 36, 64), dim=2, eps=1e-8)
    words = regions[:1, :10].clone()  # caption made of image 0's regions: cosines close to 1
    lengths = torch.tensor([10])
    ref64 = t2i_reference(regions.double(), words.double(), lengths, 9.0, 20.0)[:, 0]
    naive16 = t2i_reference(regions.half(), words.half(), lengths, 9.0, 20.0)[:, 0]
    ours16 = t2i_pair_scores(regions.half(), words.half(), lengths, 9.0, 20.0)
    assert torch.isinf(naive16[0])
    assert torch.isfinite(ours16).all()
    torch.testing.assert_close(ours16.double(), ref64, atol=5e-3, rtol=0)


def test_aggregate_mean_and_bad_name() -> None:
    r = torch.tensor([[0.5, 0.1, 9.0]])
    mask = torch.tensor([[True, True, False]])
    assert aggregate(r, mask, torch.tensor([2]), "Mean", 6.0).item() == pytest.approx(0.3)
    lse = aggregate(r, mask, torch.tensor([2]), "LogSumExp", 6.0).item()
    assert lse == pytest.approx(torch.log(torch.exp(torch.tensor([3.0, 0.6])).sum()).item() / 6.0, abs=1e-6)
    with pytest.raises(ValueError, match="agg_func"):
        aggregate(r, mask, torch.tensor([2]), "Max", 6.0)
    with pytest.raises(ValueError, match="agg_func"):
        PairScorer(agg_func="max")


def test_pair_scorer_expands_a_single_caption() -> None:
    regions, words, lengths = _data(3)
    scorer = PairScorer(4.0, 5.0, "LogSumExp")
    (single,) = scorer(regions, words[2:3], lengths[2:3])
    (tiled,) = scorer(regions, words[2:3].expand(5, -1, -1), lengths[2:3].expand(5))
    torch.testing.assert_close(single, tiled, atol=1e-12, rtol=0)
    assert single.shape == (5,)
