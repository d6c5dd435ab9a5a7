"""Word vocabularies: the original ``__main__.Vocabulary`` pickles (read through a restricted unpickler),
SCAN's JSON vocabularies, and vsrt's own ``vocab.json``. No torch.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

from vsrt.errors import CheckpointError, UnsafePickleError
from vsrt.io import atomic_write_json

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")


class Vocabulary:
    """Word ↔ id mapping with the original special tokens ``<pad>=0, <start>=1, <end>=2, <unk>=3``."""

    def __init__(self, words: list[str]) -> None:
        self.idx2word: list[str] = list(words)
        self.word2idx: dict[str, int] = {w: i for i, w in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise CheckpointError("vocabulary has duplicate words")
        for w in ("<start>", "<end>", "<unk>"):
            if w not in self.word2idx:
                raise CheckpointError(f"vocabulary lacks the special token {w}")

    def __len__(self) -> int:
        return len(self.idx2word)

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx["<unk>"])

    @property
    def pad_id(self) -> int:
        return self.word2idx.get("<pad>", 0)

    def to_json(self) -> dict[str, Any]:
        return {"format": "vsrt-vocab-1", "idx2word": self.idx2word}

    def save(self, path: str | Path) -> None:
        """Write as ``vocab.json`` (atomic)."""
        atomic_write_json(path, self.to_json())

    @classmethod
    def from_mapping(cls, word2idx: dict[str, int], source: str = "vocabulary") -> Vocabulary:
        """Build from a ``word2idx`` dict whose ids must be exactly ``0..n-1``."""
        n = len(word2idx)
        words: list[str | None] = [None] * n
        for w, i in word2idx.items():
            i = int(i)
            if not 0 <= i < n or words[i] is not None:
                raise CheckpointError(f"{source}: word ids are not a permutation of 0..{n - 1} (at '{w}': {i})")
            words[i] = w.decode("utf-8") if isinstance(w, bytes) else w
        return cls([w for w in words if w is not None])


class _VocabState:
    """Stand-in for the original ``Vocabulary`` class: receives the pickled attribute dict, runs nothing."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _RestrictedVocabUnpickler(pickle.Unpickler):
    """Allows only the original ``Vocabulary`` class (mapped to an inert holder); refuses every other global."""

    ALLOWED = {("__main__", "Vocabulary"), ("vocab", "Vocabulary"), ("vsrt.vocab", "Vocabulary")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return _VocabState
        if (module, name) in {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}:
            return _reconstruct
        if (module, name) in {("__builtin__", "object"), ("builtins", "object")}:
            return object
        raise UnsafePickleError(
            f"refused vocabulary pickle: it asks for the global {module}.{name}, outside the allowed set "
            "(the original Vocabulary class) — nothing from it was run"
        )


def _reconstruct(cls: Any, base: Any, state: Any) -> Any:
    if cls is not _VocabState:
        raise UnsafePickleError("refused vocabulary pickle: copy_reg reconstruction of a non-vocabulary class")
    return _VocabState()


def load_vocab(path: str | Path) -> Vocabulary:
    """Load a vocabulary from an original ``.pkl``, SCAN's ``.json`` or vsrt's ``vocab.json``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"vocabulary file not found: {p}")
    data = p.read_bytes()
    if not data:
        raise CheckpointError(f"vocabulary file {p} is empty")
    if data.lstrip()[:1] == b"{":
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"vocabulary {p} is not valid JSON: {exc}") from None
        if "idx2word" in d and isinstance(d["idx2word"], list):
            return Vocabulary(d["idx2word"])
        if "word2idx" in d:
            return Vocabulary.from_mapping(d["word2idx"], str(p))
        raise CheckpointError(f"vocabulary {p}: JSON has neither 'word2idx' nor 'idx2word'")
    try:
        obj = _RestrictedVocabUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"vocabulary {p} is not a readable vocabulary pickle ({detail})") from None
    if not isinstance(obj, _VocabState) or not isinstance(getattr(obj, "word2idx", None), dict):
        raise CheckpointError(f"vocabulary {p}: pickle does not hold a Vocabulary with a word2idx dict")
    return Vocabulary.from_mapping(obj.word2idx, str(p))
