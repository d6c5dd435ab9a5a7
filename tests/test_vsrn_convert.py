"""Original VSRN checkpoints and vocabularies → model directory: loading, validation, refusal of unsafe pickles."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import original_vsrn_checkpoint, write_original_vocab
from safetensors.torch import load_file

from vsrt.errors import CheckpointError, InputError, UnsafePickleError
from vsrt.manifest import Manifest
from vsrt.models.checkpoints import load_torch_checkpoint
from vsrt.models.convert import convert_checkpoint
from vsrt.text.vocab import load_vocab


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-torch-0.4-format"])
def test_original_layout_converts(tmp_path: Path, vocab_words: list[str], legacy: bool) -> None:
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt = original_vsrn_checkpoint(tmp_path / "m.pth.tar", len(vocab_words) + 4, legacy=legacy)
    out = convert_checkpoint(ckpt, tmp_path / "model", vocab)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "vocab.json", "weights"]
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pth*"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["family"] == "vsrn" and cfg["config"]["variant"] == "coco" and cfg["config"]["embed_size"] == 64
    original = torch.load(ckpt, weights_only=False)["model"]
    for stage, sd in zip(("visual", "text"), original):
        saved = load_file(str(out / "weights" / f"{stage}.safetensors"))
        assert set(saved) == set(sd)
        for k, v in sd.items():
            assert torch.equal(saved[k], v), k
    m = Manifest.load(out)
    assert m.source["opt"]["data_name"] == "coco_precomp" and m.source["epoch"] == 3
    assert len(m.source["checkpoint"]["sha256"]) == 64
    assert load_vocab(out / "vocab.json").idx2word == load_vocab(vocab).idx2word


def test_f30k_variant_from_opt(tmp_path: Path, vocab_words: list[str]) -> None:
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt = original_vsrn_checkpoint(tmp_path / "f.pth.tar", len(vocab_words) + 4, variant="f30k")
    out = convert_checkpoint(ckpt, tmp_path / "model", vocab)
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["variant"] == "f30k"
    assert "bn.running_var" in load_file(str(out / "weights" / "visual.safetensors"))


def test_vocab_size_mismatch_is_clear(tmp_path: Path, vocab_words: list[str]) -> None:
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words[:-3])
    ckpt = original_vsrn_checkpoint(tmp_path / "m.pth.tar", len(vocab_words) + 4)
    with pytest.raises(CheckpointError, match=r"vocabulary has 49 words but the checkpoint's embedding has 52 rows"):
        convert_checkpoint(ckpt, tmp_path / "model", vocab)
    assert not (tmp_path / "model").exists()


def _mutate(ckpt: Path, fn) -> Path:
    obj = torch.load(ckpt, weights_only=False)
    fn(obj)
    torch.save(obj, ckpt)
    return ckpt


def test_missing_unexpected_and_wrong_shape_keys_are_named(tmp_path: Path, small_vsrn) -> None:
    ckpt, vocab = small_vsrn

    def damage(obj):
        img = obj["model"][0]
        del img["Rs_GCN_3.phi.weight"]
        img["Rs_GCN_1.g.bias"] = torch.zeros(7)
        img["extra.weight"] = torch.zeros(1)

    _mutate(ckpt, damage)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(ckpt, tmp_path / "model", vocab)
    msg = str(e.value)
    assert "missing keys (1): Rs_GCN_3.phi.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "Rs_GCN_1.g.bias: checkpoint (7,) vs model (64,)" in msg


def test_coco_weights_with_f30k_bn_are_refused(tmp_path: Path, vocab_words: list[str]) -> None:
    """The original loader silently drops unexpected keys (e.g. bn.* under the wrong data_name); we refuse."""
    vocab = write_original_vocab(tmp_path / "vocab.pkl", vocab_words)
    ckpt = original_vsrn_checkpoint(tmp_path / "f.pth.tar", len(vocab_words) + 4, variant="f30k")
    _mutate(ckpt, lambda o: setattr(o["opt"], "data_name", "coco_precomp"))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(4\): bn.weight, bn.bias, bn.running_mean"):
        convert_checkpoint(ckpt, tmp_path / "model", vocab)


def test_not_a_vsrn_checkpoint(tmp_path: Path, small_vsrn) -> None:
    _, vocab = small_vsrn
    p = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, p)
    with pytest.raises(CheckpointError, match="could not tell which model family"):
        convert_checkpoint(p, tmp_path / "model", vocab)
    with pytest.raises(CheckpointError, match="'model' entry"):
        convert_checkpoint(p, tmp_path / "model", vocab, family="vsrn")


def test_missing_empty_and_truncated_files(tmp_path: Path, small_vsrn) -> None:
    ckpt, vocab = small_vsrn
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_torch_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_torch_checkpoint(tmp_path / "empty.pth")
    data = ckpt.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_torch_checkpoint(tmp_path / "trunc.pth")


def test_output_dir_not_clobbered(tmp_path: Path, small_vsrn) -> None:
    ckpt, vocab = small_vsrn
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not empty"):
        convert_checkpoint(ckpt, out, vocab)
    assert (out / "keep.txt").read_text() == "mine"
    convert_checkpoint(ckpt, out, vocab, force=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_malicious_checkpoint_refused_without_side_effects(tmp_path: Path, small_vsrn) -> None:
    _, vocab = small_vsrn
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth.tar"
    torch.save({"model": [{}, {}], "opt": _Evil(marker)}, bad)
    with pytest.raises(UnsafePickleError, match="refused to load"):
        convert_checkpoint(bad, tmp_path / "model", vocab)
    assert not marker.exists()
    assert not (tmp_path / "model").exists()


def test_malicious_legacy_pickle_refused(tmp_path: Path) -> None:
    """A plain (non-zip) pickle — the legacy format path — that calls os.system is refused too."""
    marker = tmp_path / "pwned2"
    bad = tmp_path / "evil_legacy.pth"
    buf = io.BytesIO()
    pickle.dump({"model": _Evil(marker)}, buf, protocol=2)
    bad.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError):
        load_torch_checkpoint(bad)
    assert not marker.exists()
    assert not zipfile.is_zipfile(bad)


def test_malicious_vocab_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned3"
    bad = tmp_path / "vocab.pkl"
    bad.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"posix.system|os.system"):
        load_vocab(bad)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_original_vocab_pickle_protocols(tmp_path: Path, vocab_words: list[str], protocol: int) -> None:
    p = write_original_vocab(tmp_path / "v.pkl", vocab_words, protocol=protocol)
    v = load_vocab(p)
    assert v.idx2word[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and v("dog") == v.word2idx["dog"]
    assert v("never-seen") == 3


def test_scan_json_vocab(tmp_path: Path) -> None:
    words = ["<pad>", "<start>", "<end>", "<unk>", "dog"]
    p = tmp_path / "f30k_precomp_vocab.json"
    p.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                             "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": 5}))
    assert load_vocab(p).idx2word == words
