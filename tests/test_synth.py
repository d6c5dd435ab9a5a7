"""The synthetic dataset: determinism, SCAN layout, original-format vocabulary, signal, and binding hard negatives."""

from __future__ import annotations

import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vsrt.data import synth
from vsrt.data.precomp import load_precomp
from vsrt.data.synth import SynthConfig, generate
from vsrt.errors import InputError
from vsrt.eval.metrics import evaluate
from vsrt.text.vocab import load_vocab

SMALL = SynthConfig(seed=3, train=240, dev=12, test=60, dim=256)
FILES = ["vocab.pkl", "synth.json"] + [f"{s}_{k}" for s in synth.SPLITS
                                       for k in ("ims.npy", "caps.txt", "ids.txt", "scenes.json")]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "data", SMALL)


def _bytes(d: Path) -> dict[str, bytes]:
    return {f: (d / f).read_bytes() for f in FILES}


def test_same_seed_gives_identical_files(data: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", SMALL)
    assert _bytes(again) == _bytes(data)
    assert sorted(p.name for p in data.iterdir()) == sorted(FILES)  # no temporary files left behind


def test_other_seed_differs_and_splits_are_independent(data: Path, tmp_path: Path) -> None:
    other = _bytes(generate(tmp_path / "other", SynthConfig(**{**SMALL.__dict__, "seed": 4})))
    base = _bytes(data)
    for f in ("train_ims.npy", "test_ims.npy", "train_caps.txt", "test_caps.txt", "vocab.pkl"):
        assert other[f] != base[f], f
    # a different train size leaves dev and test untouched
    smaller = _bytes(generate(tmp_path / "smaller", SynthConfig(**{**SMALL.__dict__, "train": 100})))
    for f in ("test_ims.npy", "test_caps.txt", "test_scenes.json", "dev_ims.npy", "dev_caps.txt"):
        assert smaller[f] == base[f], f
    assert smaller["train_ims.npy"] != base["train_ims.npy"]


def test_layout_reads_back(data: Path) -> None:
    for split in synth.SPLITS:
        sp = load_precomp(data, split)
        n = getattr(SMALL, split)
        assert sp.images.shape == (n, SMALL.regions, SMALL.dim) and sp.images.dtype == np.float32
        assert sp.n_captions == 5 * n and sp.ids is not None and len(sp.ids) == n
    x = np.asarray(load_precomp(data, "train").images)
    assert x.min() >= 0.0  # ReLU'd like bottom-up-attention features
    assert 0.3 < x.mean() < 0.8 and 0.3 < (x == 0).mean() < 0.6
    ids = [load_precomp(data, s).ids for s in synth.SPLITS]
    flat = [i for part in ids for i in part or []]
    assert len(set(flat)) == len(flat)
    assert synth.read_config(data) == SMALL


def test_vocab_pickle_is_original_format(data: Path) -> None:
    raw = (data / "vocab.pkl").read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert ops[0] == ("PROTO", 2)
    assert ops[1] == ("GLOBAL", "__main__ Vocabulary")
    assert ("NEWOBJ", None) in ops and ops[-2][0] == "BUILD" and ops[-1][0] == "STOP"
    assert all(name not in ("GLOBAL", "STACK_GLOBAL", "REDUCE") for name, _ in ops[2:])  # nothing else to import

    class Holder:
        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            assert (module, name) == ("__main__", "Vocabulary")
            return Holder

    import io

    obj = Unpickler(io.BytesIO(raw)).load()
    assert obj.idx == len(obj.word2idx) == len(obj.idx2word)
    assert all(isinstance(k, int) and obj.word2idx[w] == k for k, w in obj.idx2word.items())
    assert [obj.idx2word[i] for i in range(4)] == ["<pad>", "<start>", "<end>", "<unk>"]


def test_vocab_loads_and_covers_every_caption_word(data: Path) -> None:
    vocab = load_vocab(data / "vocab.pkl")
    assert [vocab.word2idx[w] for w in ("<pad>", "<start>", "<end>", "<unk>")] == [0, 1, 2, 3]
    for split in synth.SPLITS:
        for c in load_precomp(data, split).captions:
            assert all(w in vocab.word2idx for w in c.split()), c
    # words counted from the train captions come first, most frequent first
    counts: dict[str, int] = {}
    for c in load_precomp(data, "train").captions:
        for w in c.split():
            counts[w] = counts.get(w, 0) + 1
    first = vocab.idx2word[4:4 + len(counts)]
    assert set(first) == set(counts)
    assert [counts[w] for w in first] == sorted(counts.values(), reverse=True)
    assert set(vocab.idx2word[4:]) == set(synth.lexicon(SMALL))


def test_captions_are_plain_tokenizable_text(data: Path) -> None:
    caps = load_precomp(data, "test").captions
    assert all(c == c.lower() and c.strip() == c and "  " not in c for c in caps)
    assert 0.2 < np.mean([c.endswith(" .") for c in caps]) < 0.8
    assert len(set(caps)) > 0.9 * len(caps)
    nltk_tok = pytest.importorskip("nltk.tokenize", reason="nltk (test extra) not installed")
    for c in caps:
        assert nltk_tok.word_tokenize(c, preserve_line=True) == c.split(), c


def test_captions_describe_their_scene(data: Path) -> None:
    scenes = synth.read_scenes(data, "test")
    caps = load_precomp(data, "test").captions
    for i, s in enumerate(scenes):
        assert len(s["captions"]) == 5 and synth.SynthConfig().min_objects <= len(s["objects"]) <= 4
        for j, meta in enumerate(s["captions"]):
            words = f" {caps[5 * i + j]} "
            assert len(meta["mentions"]) >= 2
            for m in meta["mentions"]:
                c, a = s["objects"][m]
                assert any(f" {w} " in words for w in synth.OBJECTS[c]), (words, synth.OBJECTS[c])
                assert any(f" {w} " in words for w in synth.ATTRIBUTES[a]), (words, synth.ATTRIBUTES[a])
            if meta["relation"] is not None:
                _, r, _ = s["relations"][meta["relation"]]
                assert any(f" {p} " in words for p in synth.RELATIONS[r])


def test_hard_negative_twins_differ_only_in_binding(data: Path) -> None:
    scenes = synth.read_scenes(data, "train")
    pairs = [(i, s["twin"]) for i, s in enumerate(scenes) if s["twin"] is not None and s["twin"] > i]
    # about hard_negative_rate of the images are in pairs
    assert 0.3 < 2 * len(pairs) / len(scenes) < 0.7
    for a, b in pairs:
        sa, sb = scenes[a], scenes[b]
        assert b == a + 1 and sb["twin"] == a
        assert [c for c, _ in sa["objects"]] == [c for c, _ in sb["objects"]]  # same objects …
        assert sorted(x for _, x in sa["objects"]) == sorted(x for _, x in sb["objects"])  # … same attributes …
        assert all(x != y for (_, x), (_, y) in zip(sa["objects"], sb["objects"]))  # … every binding differs
        assert sa["relations"] == sb["relations"] and sa["distractors"] == sb["distractors"]


def test_data_carries_signal_and_binding_is_local(data: Path) -> None:
    scenes = synth.read_scenes(data, "test")
    n = SMALL.test
    local = synth.oracle_similarities(data, "test", local=True)
    bag = synth.oracle_similarities(data, "test", local=False)
    ridge = synth.ridge_baseline_similarities(data, "test")
    m_local, m_bag, m_ridge = evaluate(local), evaluate(bag), evaluate(ridge)
    chance_r1 = 100.0 / n
    # a learned global linear baseline is far above chance …
    assert m_ridge["t2i_r1"] > 10 * chance_r1 and m_ridge["i2t_r1"] > 10 * chance_r1, m_ridge
    # … the region-level oracle is near perfect and beats the bag of concepts
    assert m_local["t2i_r1"] > 80 and m_local["rsum"] > m_bag["rsum"] + 30, (m_local, m_bag)
    # twins: only region-level (bound) evidence separates them; pooled scorers are at chance
    assert synth.twin_accuracy(local, scenes) > 0.95
    assert abs(synth.twin_accuracy(bag, scenes) - 0.5) < 0.2
    assert abs(synth.twin_accuracy(ridge, scenes) - 0.5) < 0.2


def test_bad_configs_are_refused(tmp_path: Path) -> None:
    for bad, match in [({"regions": 5}, "regions"), ({"train": 0}, "train"), ({"seed": -1}, "seed"),
                       ({"objects": 3}, "objects"), ({"hard_negative_rate": 1.5}, "hard_negative_rate")]:
        with pytest.raises(InputError, match=match):
            generate(tmp_path / "x", SynthConfig(**bad))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        generate(tmp_path / "file", SynthConfig(train=1, dev=1, test=1, dim=16))


def test_few_regions_still_fit(tmp_path: Path) -> None:
    d = generate(tmp_path / "tiny", SynthConfig(train=20, dev=2, test=5, regions=6, dim=32))
    assert load_precomp(d, "train").images.shape == (20, 6, 32)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from vsrt.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--seed", "1", "--train", "40", "--dev", "5", "--test", "20", "--dim", "64",
               "--regions", "12", "--baselines"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "twin pairs" in text and "oracle, local" in text and "ridge" in text
    assert synth.read_config(out) == SynthConfig(seed=1, train=40, dev=5, test=20, dim=64, regions=12)
    assert main(["synth", str(out), "--regions", "2"]) == 2
    assert "regions must be at least" in capsys.readouterr().err
