"""Exportable Bi-GRU: reversal within length, equality with the packed original, ONNX export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vsrt.export.onnx_export import check_rnn_nodes
from vsrt.models.bigru import UnpackedBiGRU, packed_gru, reverse_index, reverse_within_length


def test_reverse_index_reverses_within_length_and_is_an_involution() -> None:
    lengths = torch.tensor([4, 1, 6, 2])
    idx = reverse_index(lengths, 6)
    assert idx.tolist() == [[3, 2, 1, 0, 4, 5], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [1, 0, 2, 3, 4, 5]]
    x = torch.randn(4, 6, 3)
    assert torch.equal(reverse_within_length(reverse_within_length(x, lengths), lengths), x)


@pytest.mark.parametrize("seed", range(4))
def test_unpacked_equals_packed_bidirectional(seed: int) -> None:
    torch.manual_seed(seed)
    rnn = torch.nn.GRU(12, 20, 1, batch_first=True, bidirectional=True).eval()
    lengths = torch.randint(1, 11, (7,))
    lengths[3] = 10  # unsorted, with the maximum somewhere in the middle
    x = torch.randn(7, 10, 12)
    x = x * (torch.arange(10)[None, :, None] < lengths[:, None, None])  # padding as the embedding of <pad> would be
    x[0, lengths[0]:] = 5.0  # padding content must not matter
    with torch.no_grad():
        ref = packed_gru(rnn, x, lengths)
        got = UnpackedBiGRU(rnn)(x, lengths)
        naive = rnn(x)[0]
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    assert torch.all(got[torch.arange(10)[None] >= lengths[:, None]] == 0)
    short = int(torch.nonzero(lengths < 10)[0])  # running the Bi-GRU over padding changes the backward half
    assert not torch.allclose(naive[short, 0, 20:], ref[short, 0, 20:], atol=1e-4)


def test_unpacked_bigru_rejects_unidirectional() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        UnpackedBiGRU(torch.nn.GRU(4, 4, batch_first=True))


class _Wrap(torch.nn.Module):
    def __init__(self, rnn: torch.nn.GRU) -> None:
        super().__init__()
        self.birnn = UnpackedBiGRU(rnn)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.birnn(x, lengths)


def test_onnx_export_runs_two_forward_grus(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    rnn = torch.nn.GRU(8, 16, 1, batch_first=True, bidirectional=True).eval()
    path = tmp_path / "bigru.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Wrap(rnn), (torch.randn(2, 5, 8), torch.tensor([5, 3])), str(path),
                          input_names=["x", "lengths"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 1: "t"}, "lengths": {0: "b"}}, opset_version=17, dynamo=False)
    grus = check_rnn_nodes(onnx.load(str(path)))
    assert [g["direction"] for g in grus] == ["forward", "forward"]
    x, lengths = torch.randn(4, 9, 8), torch.tensor([2, 9, 5, 1])
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        ref = packed_gru(rnn, x, lengths).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
