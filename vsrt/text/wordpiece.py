"""WordPiece tokenisation for DSRAN-BERT, with the Hugging Face ``tokenizers`` library. No torch.

DSRAN (``data_bert.py get_text_input``) uses ``pytorch_pretrained_bert.BertTokenizer(vocab.txt)`` (lower-casing,
accent stripping, punctuation and CJK splitting, greedy longest-match WordPiece with ``##`` continuations, ``[UNK]``
for words over 100 characters or without a match), then builds ``[CLS] + tokens + [SEP]``, **truncates that list to
32** (so a long caption loses its ``[SEP]``) and right-pads with id 0. ``tokenizers.BertWordPieceTokenizer`` with
``lowercase=True`` (accents stripped with it), ``clean_text`` and ``handle_chinese_chars`` implements the same
normaliser, pre-tokeniser and WordPiece model; the ``[CLS]``/``[SEP]``/truncation/padding steps are done here exactly
as the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vsrt.errors import BackendUnavailableError, InputError

#: DSRAN-BERT's fixed caption length
MAX_LEN = 32


def read_wordpiece_vocab(path: str | Path) -> list[str]:
    """The tokens of a BERT ``vocab.txt`` (one per line, id = line number), checked for the special tokens."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"WordPiece vocabulary {p} not found")
    try:
        tokens = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"WordPiece vocabulary {p} is not UTF-8 text ({exc})") from None
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in tokens]
    if missing:
        raise InputError(f"{p} is not a BERT vocab.txt: it lacks {', '.join(missing)}")
    return tokens


class WordPieceTokenizer:
    """``vocab.txt`` → fixed-length id rows as DSRAN-BERT builds them.

    Args:
        vocab_path: BERT ``vocab.txt``.
        lowercase: lower-case and strip accents (``bert-base-uncased``; the original's default).
        max_len: row length (32 in DSRAN).
    """

    def __init__(self, vocab_path: str | Path, lowercase: bool = True, max_len: int = MAX_LEN) -> None:
        try:
            from tokenizers import BertWordPieceTokenizer
        except ImportError:
            raise BackendUnavailableError(
                "DSRAN-BERT text needs the 'tokenizers' package (pip install tokenizers)"
            ) from None
        if max_len < 2:
            raise InputError(f"max_len must be >= 2, got {max_len}")
        tokens = read_wordpiece_vocab(vocab_path)
        self.vocab_path = Path(vocab_path)
        self.vocab_size = len(tokens)
        self.max_len = max_len
        self.cls_id = tokens.index("[CLS]")
        self.sep_id = tokens.index("[SEP]")
        self._tok = BertWordPieceTokenizer(
            str(vocab_path), lowercase=lowercase, strip_accents=None, clean_text=True, handle_chinese_chars=True
        )

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Captions → ``[N, max_len]`` int64: ``[CLS] w… [SEP]`` truncated to ``max_len``, right-padded with 0."""
        if isinstance(texts, str):
            raise InputError("encode takes a list of captions, not a single string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"caption {i} is a {type(t).__name__}, expected str")
        out = np.zeros((len(texts), self.max_len), np.int64)
        for i, enc in enumerate(self._tok.encode_batch(texts, add_special_tokens=False)):
            ids = ([self.cls_id, *enc.ids, self.sep_id])[: self.max_len]
            out[i, : len(ids)] = ids
        return out
