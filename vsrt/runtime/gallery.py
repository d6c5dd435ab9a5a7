"""An append-only, crash-safe gallery of L2-normalised embeddings with per-item keys, content hashes and metadata.

No torch: numpy and the standard library. Embeddings are unit vectors, so cosine similarity is the inner product.

On-disk format (version 1)
--------------------------

::

    G/
      gallery.json              header, written once at creation (temp file + fsync + rename); self-checksummed
      commits.log               the commit log: append-only, one line per committed segment
      segments/<seq>.emb.npy    [n, D] codes: float32 | float16 | int8 (see :mod:`vsrt.runtime.quantize`)
      segments/<seq>.scale.npy  [n] float32 per-vector scales (int8 storage only)
      segments/<seq>.hash.npy   [n, 32] uint8: SHA-256 of each item's content (image bytes, region features…)
      segments/<seq>.items.json [{"key": str, "meta": {...}}, ...] per-item key and metadata (path, boxes…)
      segments/<seq>.local.npy  optional [n, R, D'] float16 local features for pairwise re-ranking
      .lock                     held (flock) by the one process allowed to append

**Header.** ``{"format": "vsrt-gallery", "version": 1, "dim", "storage", "modality", "model": {"family",
"config_sha256", "model_dir", "embed_dim"}, "created", "checksum"}`` where ``checksum`` is the SHA-256 of the
canonical JSON (sorted keys) of every other field.

**Commit protocol.** :meth:`Gallery.add` first writes every file of a new segment atomically (each through
:func:`vsrt.io.atomic_path`: temporary file, fsync, rename, directory fsync), then appends one line to
``commits.log`` and fsyncs it. The appended line *is* the commit marker::

    <sha256 of JSON> <JSON record>\\n
    record = {"seq", "segment", "start", "count", "files": {role: {"name", "size", "sha256"}}, "time", ...}

A segment exists for readers only once its line is in the log with a matching checksum. A crash at any point
leaves either (a) segment files without a log line — orphans, ignored by readers and deleted by the next writer —
or (b) a torn last line (no newline or a wrong checksum) — ignored by readers and cut off by the next writer.
A damaged line *before* the last one, a listed file that is missing, has the wrong size or the wrong SHA-256 is
not a crash artefact but corruption: :class:`GalleryCorruptError`, never silently skipped.

**What is verified when.** :meth:`Gallery.open` checks the header checksum, every log line and that every listed
file exists with its recorded size (cheap, catches truncation). With ``check="full"`` (the default) each
segment's files are also SHA-256-verified the first time this process reads them, so no corrupt byte is ever
returned; ``check="size"`` skips that for trusted storage. :meth:`Gallery.verify` checks everything at once.

**Duplicates.** Every item carries the SHA-256 of its content; :meth:`Gallery.add` skips an item whose content
hash is already in the gallery (or earlier in the same call) and reports it. Keys are unique: a known key with
different content is an error (the gallery is append-only; index into a new gallery instead).

**Resuming.** Because a commit is all-or-nothing and duplicates are skipped by content hash, re-running the same
indexing command after a crash adds exactly the items that were not committed, in the same order and with the same
segment boundaries (``vsrt index`` commits every ``--commit-every`` *new* items), so the gallery equals that of an
uninterrupted run.

**Model binding.** The header records which model made the embeddings (manifest ``config_sha256`` and family);
:meth:`Gallery.check_model` refuses queries from another model with a message naming both.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import InputError
from vsrt.io import atomic_path, atomic_write_json
from vsrt.runtime.quantize import check_storage, dequantize, numpy_dtype, quantize

FORMAT = "vsrt-gallery"
VERSION = 1
HEADER = "gallery.json"
LOG = "commits.log"
SEGMENTS = "segments"
LOCK = ".lock"
MODALITIES = ("image", "text")
#: tolerance on ‖x‖ for "L2-normalised"
NORM_TOL = 1e-2


class GalleryError(InputError):
    """A gallery cannot be created, opened or appended to as asked."""


class GalleryCorruptError(GalleryError):
    """A gallery's files do not match their checksums or sizes: something changed them after they were committed."""


@dataclass
class AddResult:
    """What :meth:`Gallery.add` did: how many items it committed (in segment ``segment``) and which keys it skipped
    because their content was already in the gallery."""

    added: int
    duplicates: list[str] = field(default_factory=list)
    segment: str | None = None


@dataclass
class Segment:
    """One committed segment: items ``start … start+count-1`` of the gallery."""

    seq: int
    name: str
    start: int
    count: int
    files: dict[str, dict[str, Any]]
    record: dict[str, Any]

    @property
    def stop(self) -> int:
        return self.start + self.count


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def content_hash(data: bytes | np.ndarray) -> str:
    """SHA-256 (hex) identifying an item's content: an image file's bytes or an array's dtype, shape and bytes."""
    if isinstance(data, np.ndarray):
        a = np.ascontiguousarray(data)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
        return h.hexdigest()
    return hashlib.sha256(data).hexdigest()


def model_info_of(model: Any) -> dict[str, Any]:
    """The model record a gallery keeps, from a :class:`~vsrt.runtime.model.RetrievalModel` (or anything with
    ``family``, ``manifest.config_sha256``, ``model_dir`` and ``embed_dim``) or from a dict with those keys."""
    if isinstance(model, Mapping):
        info = dict(model)
    else:
        info = {
            "family": str(model.family),
            "config_sha256": str(getattr(getattr(model, "manifest", None), "config_sha256", "") or ""),
            "model_dir": str(Path(model.model_dir).resolve()) if getattr(model, "model_dir", None) else "",
            "embed_dim": int(model.embed_dim),
        }
    for key in ("family", "config_sha256"):
        if key not in info:
            raise GalleryError(f"model info lacks '{key}' (has: {', '.join(sorted(info)) or 'nothing'})")
    return info


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


class Gallery:
    """An append-only gallery directory (format in the module docstring).

    Open an existing one with :meth:`open`, make a new one with :meth:`create`. Items are numbered ``0…len-1`` in
    commit order; :meth:`search` returns those numbers with the items' keys and metadata.
    """

    def __init__(self, path: Path, header: dict[str, Any], segments: list[Segment], check: str = "full") -> None:
        self.path = path
        self.header = header
        self._segments = segments
        self.check = check
        self._verified: set[str] = set()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._items: dict[str, list[dict[str, Any]]] = {}
        self._hashes: set[bytes] | None = None
        self._keys: dict[str, bytes] | None = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        dim: int,
        storage: str = "fp32",
        model_info: Any = None,
        modality: str = "image",
        exist_ok: bool = False,
    ) -> Gallery:
        """Create an empty gallery at ``path`` (a new or empty directory).

        Args:
            dim: embedding dimension.
            storage: ``fp32`` | ``fp16`` | ``int8`` (see :mod:`vsrt.runtime.quantize`).
            model_info: the model that makes the embeddings (:func:`model_info_of` input).
            modality: what the items are, ``image`` or ``text``.
            exist_ok: open an existing gallery instead of failing when its settings match.
        """
        p = Path(path)
        check_storage(storage)
        if modality not in MODALITIES:
            raise GalleryError(f"unknown gallery modality '{modality}' (choose from {', '.join(MODALITIES)})")
        if int(dim) < 1:
            raise GalleryError(f"gallery dimension must be >= 1, got {dim}")
        info = model_info_of(model_info) if model_info is not None else {"family": "", "config_sha256": ""}
        if (p / HEADER).exists():
            if not exist_ok:
                raise GalleryError(f"a gallery already exists at {p} (open it, or choose another path)")
            g = cls.open(p)
            want = {"dim": int(dim), "storage": storage, "modality": modality}
            have = {k: g.header[k] for k in want}
            if want != have:
                raise GalleryError(f"the gallery at {p} has {have}, not {want}; choose another path")
            g.check_model(info)
            return g
        if p.exists() and (not p.is_dir() or any(c.name != SEGMENTS for c in p.iterdir())):
            raise GalleryError(f"{p} exists and is not an empty directory; a new gallery needs a fresh path")
        header = {
            "format": FORMAT,
            "version": VERSION,
            "dim": int(dim),
            "storage": storage,
            "modality": modality,
            "model": info,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        header["checksum"] = _sha256(_canonical(header))
        atomic_write_json(p / HEADER, header)
        (p / SEGMENTS).mkdir(exist_ok=True)
        return cls(p, header, [])

    @classmethod
    def open(cls, path: str | os.PathLike[str], check: str = "full") -> Gallery:
        """Open the gallery at ``path`` for reading and appending.

        ``check="full"`` verifies each segment's SHA-256 when it is first read; ``"size"`` only its size.
        """
        if check not in ("full", "size"):
            raise GalleryError(f"check must be 'full' or 'size', got '{check}'")
        p = Path(path)
        if not (p / HEADER).is_file():
            raise GalleryError(f"no gallery at {p} ({HEADER} not found); create one with `vsrt index`")
        header = cls._read_header(p)
        segments, _ = cls._read_log(p)
        return cls(p, header, segments, check)

    @staticmethod
    def _read_header(p: Path) -> dict[str, Any]:
        try:
            header = json.loads((p / HEADER).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GalleryCorruptError(
                f"{p / HEADER} is not valid JSON ({exc}): the gallery header is damaged") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise GalleryError(f"{p / HEADER} is not a vsrt gallery header")
        if int(header.get("version", 0)) > VERSION:
            raise GalleryError(f"{p} has gallery format {header['version']}, newer than this vsrt ({VERSION})")
        body = {k: v for k, v in header.items() if k != "checksum"}
        if header.get("checksum") != _sha256(_canonical(body)):
            raise GalleryCorruptError(f"{p / HEADER} does not match its checksum: the gallery header was changed")
        return header

    @staticmethod
    def _read_log(p: Path) -> tuple[list[Segment], int]:
        """Committed segments, and the byte length of the log's valid part (a torn last line is left out)."""
        log = p / LOG
        if not log.exists():
            return [], 0
        data = log.read_bytes()
        segments: list[Segment] = []
        pos = 0
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1  # text after the final newline: a torn append, or empty
            if last:
                break
            rec = Gallery._parse_line(line)
            if rec is None:
                tail_is_blank = all(not ln.strip() for ln in lines[i + 1 :])
                if tail_is_blank:  # a torn final line that happened to end in a newline byte: discard it
                    break
                raise GalleryCorruptError(
                    f"{log} line {i + 1} is damaged (bad checksum or format) and later commits follow it: "
                    "the gallery was modified after it was written"
                )
            start = segments[-1].stop if segments else 0
            if rec.get("seq") != len(segments) or rec.get("start") != start:
                raise GalleryCorruptError(
                    f"{log} line {i + 1} commits segment {rec.get('seq')} at item {rec.get('start')}, expected "
                    f"segment {len(segments)} at item {start}: the log was edited"
                )
            seg = Segment(int(rec["seq"]), str(rec["segment"]), start, int(rec["count"]), dict(rec["files"]), rec)
            for role, f in seg.files.items():
                fp = p / SEGMENTS / f["name"]
                if not fp.is_file():
                    raise GalleryCorruptError(f"{fp} ({role} of committed segment {seg.name}) is missing")
                if fp.stat().st_size != int(f["size"]):
                    raise GalleryCorruptError(
                        f"{fp} has {fp.stat().st_size} bytes, its commit says {f['size']}: the file was truncated "
                        "or changed"
                    )
            segments.append(seg)
            pos += len(line) + 1
        return segments, pos

    @staticmethod
    def _parse_line(line: bytes) -> dict[str, Any] | None:
        digest, sep, body = line.partition(b" ")
        if not sep or len(digest) != 64:
            return None
        if _sha256(body) != digest.decode("ascii", "replace"):
            return None
        try:
            rec = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(rec, dict) or not {"seq", "segment", "start", "count", "files"} <= set(rec):
            return None
        return rec

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.header["dim"])

    @property
    def storage(self) -> str:
        return str(self.header["storage"])

    @property
    def modality(self) -> str:
        return str(self.header["modality"])

    @property
    def model(self) -> dict[str, Any]:
        """The model record: ``family``, ``config_sha256``, ``model_dir``, ``embed_dim``."""
        return dict(self.header.get("model", {}))

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def __len__(self) -> int:
        return self._segments[-1].stop if self._segments else 0

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r}, {len(self)} {self.modality}s, dim={self.dim}, storage={self.storage})"

    def nbytes(self) -> int:
        """Bytes of stored embeddings (codes and scales)."""
        return sum(int(f["size"]) for s in self._segments for r, f in s.files.items() if r in ("emb", "scale"))

    # ------------------------------------------------------------------ model binding
    def check_model(self, model: Any) -> None:
        """Raise a clear :class:`GalleryError` unless ``model`` (a RetrievalModel or model info) made this gallery."""
        other = model_info_of(model)
        mine = self.model
        if not mine.get("config_sha256") and not mine.get("family"):
            return  # a gallery made without model information accepts any query of the right dimension
        if (other.get("config_sha256"), other.get("family")) != (mine.get("config_sha256"), mine.get("family")):
            raise GalleryError(
                f"gallery {self.path} was built with model family '{mine.get('family')}' (config "
                f"{str(mine.get('config_sha256'))[:12]}…, {mine.get('model_dir') or 'directory unknown'}), but the "
                f"query model is family '{other.get('family')}' (config {str(other.get('config_sha256'))[:12]}…"
                f"{', ' + str(other.get('model_dir')) if other.get('model_dir') else ''}): embeddings of different "
                "models are not comparable; query with the gallery's model or re-index with this one"
            )
        if "embed_dim" in other and int(other["embed_dim"]) != self.dim:
            raise GalleryError(
                f"model embeds into {other['embed_dim']} dimensions, gallery {self.path} holds {self.dim}")

    # ------------------------------------------------------------------ reading
    def _file(self, seg: Segment, role: str) -> Path:
        return self.path / SEGMENTS / seg.files[role]["name"]

    def _verify_file(self, seg: Segment, role: str, force: bool = False) -> Path:
        fp = self._file(seg, role)
        key = seg.files[role]["name"]
        if key in self._verified or (self.check != "full" and not force):
            return fp
        got = _sha256_file(fp)
        if got != seg.files[role]["sha256"]:
            raise GalleryCorruptError(
                f"{fp} does not match its commit checksum (sha256 {got[:12]}… != {seg.files[role]['sha256'][:12]}…): "
                "the gallery file was changed or damaged after it was committed"
            )
        self._verified.add(key)
        return fp

    def _load_npy(self, seg: Segment, role: str, mmap: bool = True) -> np.ndarray:
        fp = self._verify_file(seg, role)
        try:
            return np.load(fp, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as exc:
            raise GalleryCorruptError(f"{fp} is not a valid .npy file: {exc}") from None

    def segment_arrays(self, seg: Segment) -> tuple[np.ndarray, np.ndarray | None]:
        """``(codes [n, D], scales [n] or None)`` of a segment, memory-mapped (verified per :attr:`check`)."""
        if seg.name not in self._arrays:
            codes = self._load_npy(seg, "emb")
            want = numpy_dtype(self.storage)
            if codes.dtype != want or codes.shape != (seg.count, self.dim):
                raise GalleryCorruptError(
                    f"{self._file(seg, 'emb')} holds {codes.dtype}{list(codes.shape)}, expected {want}"
                    f"[{seg.count}, {self.dim}]"
                )
            scales = None
            if self.storage == "int8":
                scales = np.asarray(self._load_npy(seg, "scale", mmap=False), np.float32)
                if scales.shape != (seg.count,):
                    raise GalleryCorruptError(
                        f"{self._file(seg, 'scale')} has shape {scales.shape}, not ({seg.count},)")
            self._arrays[seg.name] = (codes, scales)
        return self._arrays[seg.name]

    def blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """``(start, codes, scales)`` of every segment in order: what :mod:`vsrt.runtime.search` scans."""
        for seg in self._segments:
            codes, scales = self.segment_arrays(seg)
            yield seg.start, codes, scales

    def _segment_of(self, index: int) -> Segment:
        if not 0 <= index < len(self):
            raise GalleryError(f"item {index} is outside the gallery (0…{len(self) - 1})")
        starts = [s.start for s in self._segments]
        return self._segments[int(np.searchsorted(starts, index, side="right")) - 1]

    def embeddings(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Dequantised float32 embeddings of items ``start…stop-1`` (all by default)."""
        stop = len(self) if stop is None else min(stop, len(self))
        out = []
        for seg in self._segments:
            lo, hi = max(start, seg.start), min(stop, seg.stop)
            if lo < hi:
                codes, scales = self.segment_arrays(seg)
                sl = slice(lo - seg.start, hi - seg.start)
                out.append(dequantize(codes[sl], None if scales is None else scales[sl]))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dequantised float32 embeddings of arbitrary items ``[len(indices), D]``, in the order given."""
        idx = np.asarray(indices, np.int64).ravel()
        out = np.empty((len(idx), self.dim), np.float32)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise GalleryError(f"item indices must be within 0…{len(self) - 1}")
        starts = np.array([s.start for s in self._segments])
        which = np.searchsorted(starts, idx, side="right") - 1
        for si in np.unique(which):
            seg = self._segments[int(si)]
            sel = np.flatnonzero(which == si)
            codes, scales = self.segment_arrays(seg)
            rows = idx[sel] - seg.start
            out[sel] = dequantize(codes[rows], None if scales is None else scales[rows])
        return out

    def _items_of(self, seg: Segment) -> list[dict[str, Any]]:
        if seg.name not in self._items:
            fp = self._verify_file(seg, "items", force=True)
            try:
                items = json.loads(fp.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise GalleryCorruptError(f"{fp} is not valid JSON: {exc}") from None
            if not isinstance(items, list) or len(items) != seg.count:
                raise GalleryCorruptError(f"{fp} does not list {seg.count} items")
            self._items[seg.name] = items
        return self._items[seg.name]

    def item(self, index: int) -> dict[str, Any]:
        """``{"index", "key", "meta"}`` of item ``index``."""
        seg = self._segment_of(int(index))
        rec = self._items_of(seg)[int(index) - seg.start]
        return {"index": int(index), "key": rec["key"], "meta": rec.get("meta", {})}

    def keys(self) -> list[str]:
        """Every item's key, in item order."""
        return [r["key"] for seg in self._segments for r in self._items_of(seg)]

    def local_features(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored local features (``[len(indices), R, D']`` float32) for pairwise re-ranking."""
        out = []
        for i in np.asarray(indices, np.int64).ravel():
            seg = self._segment_of(int(i))
            if "local" not in seg.files:
                raise GalleryError(
                    f"gallery {self.path} stores no local features (segment {seg.name}); index with a pairwise model "
                    "and --store-local to re-rank"
                )
            arr = self._load_npy(seg, "local")
            out.append(np.asarray(arr[int(i) - seg.start], np.float32))
        return np.stack(out) if out else np.zeros((0, 0, 0), np.float32)

    @property
    def has_local(self) -> bool:
        return bool(self._segments) and all("local" in s.files for s in self._segments)

    # ------------------------------------------------------------------ dedupe
    def _load_hashes(self) -> None:
        if self._hashes is not None:
            return
        hashes: set[bytes] = set()
        keys: dict[str, bytes] = {}
        for seg in self._segments:
            h = np.asarray(self._load_npy(seg, "hash", mmap=False))
            if h.shape != (seg.count, 32) or h.dtype != np.uint8:
                raise GalleryCorruptError(f"{self._file(seg, 'hash')} has {h.dtype}{list(h.shape)}, not uint8[n, 32]")
            for row, rec in zip(h, self._items_of(seg)):
                b = row.tobytes()
                hashes.add(b)
                keys[rec["key"]] = b
        self._hashes, self._keys = hashes, keys

    def contains(self, content_sha256: str) -> bool:
        """Whether an item with this content hash (hex) is in the gallery."""
        self._load_hashes()
        assert self._hashes is not None
        return bytes.fromhex(content_sha256) in self._hashes

    def has_key(self, key: str) -> bool:
        self._load_hashes()
        assert self._keys is not None
        return key in self._keys

    # ------------------------------------------------------------------ appending
    @contextlib.contextmanager
    def writer(self) -> Iterator[Gallery]:
        """Hold the gallery's writer lock (one appending process at a time) and repair crash leftovers."""
        if self._lock_fd is not None:
            yield self
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # not POSIX: no cross-process lock
                pass
            except OSError:
                raise GalleryError(f"gallery {self.path} is being written by another process") from None
            self._lock_fd = fd
            self._recover()
            yield self
        finally:
            self._lock_fd = None
            os.close(fd)

    def _recover(self) -> None:
        """Re-read the log (another writer may have appended), cut a torn last line, delete orphan files."""
        self._segments, valid = self._read_log(self.path)
        self._hashes = self._keys = None
        log = self.path / LOG
        if log.exists() and log.stat().st_size != valid:
            with open(log, "rb+") as f:
                f.truncate(valid)
                f.flush()
                os.fsync(f.fileno())
        live = {f["name"] for s in self._segments for f in s.files.values()}
        (self.path / SEGMENTS).mkdir(exist_ok=True)
        for fp in (self.path / SEGMENTS).iterdir():
            if fp.name not in live:  # uncommitted segment files and temporary files of an interrupted write
                with contextlib.suppress(FileNotFoundError):
                    fp.unlink()

    def add(
        self,
        keys: Sequence[str],
        embeddings: np.ndarray,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        hashes: Sequence[str] | None = None,
        local: np.ndarray | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AddResult:
        """Append items as one committed segment; all or nothing.

        Args:
            keys: unique item keys (a file path, ``data.npy#12``, a caption id…).
            embeddings: float32 ``[N, D]``, L2-normalised.
            metadata: one JSON-serialisable dict per item (path, boxes, caption…).
            hashes: SHA-256 hex of each item's content (:func:`content_hash`); default: the embedding's hash.
            local: optional ``[N, R, D']`` local features for pairwise re-ranking (stored as float16).
            extra: JSON fields recorded in the commit line (e.g. the storage's measured recall cost).

        Items whose content hash is already in the gallery, or repeats earlier in ``keys``, are skipped and listed
        in :attr:`AddResult.duplicates`.
        """
        keys = [str(k) for k in keys]
        emb = np.asarray(embeddings)
        n = len(keys)
        if emb.ndim != 2 or emb.shape != (n, self.dim):
            raise GalleryError(f"embeddings must have shape [{n}, {self.dim}] (one per key), got {list(emb.shape)}")
        emb = emb.astype(np.float32, copy=False)
        if n and not np.isfinite(emb).all():
            raise GalleryError("embeddings contain NaN or Inf")
        norms = np.linalg.norm(emb, axis=1) if n else np.zeros(0)
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOL)
        if len(bad):
            raise GalleryError(
                f"embeddings must be L2-normalised (cosine = inner product): item '{keys[bad[0]]}' has norm "
                f"{norms[bad[0]]:.4f}"
            )
        meta = [dict(m) for m in metadata] if metadata is not None else [{} for _ in keys]
        if len(meta) != n:
            raise GalleryError(f"{len(meta)} metadata entries for {n} keys")
        digests = [bytes.fromhex(h) for h in hashes] if hashes is not None else [
            bytes.fromhex(content_hash(e)) for e in emb]
        if len(digests) != n or any(len(d) != 32 for d in digests):
            raise GalleryError("hashes must be one SHA-256 hex digest per key")
        if local is not None:
            local = np.asarray(local)
            if local.ndim != 3 or len(local) != n:
                raise GalleryError(f"local features must have shape [{n}, R, D'], got {list(local.shape)}")
            if self._segments and "local" not in self._segments[0].files:
                raise GalleryError("this gallery was started without local features; every segment must have them")
        elif self._segments and "local" in self._segments[0].files:
            raise GalleryError("this gallery stores local features for re-ranking: pass local= for every segment")
        with self.writer():
            self._load_hashes()
            assert self._hashes is not None and self._keys is not None
            keep: list[int] = []
            dups: list[str] = []
            seen: set[bytes] = set()
            new_keys: set[str] = set()
            for i, (k, d) in enumerate(zip(keys, digests)):
                if d in self._hashes or d in seen:
                    dups.append(k)
                    continue
                if k in self._keys or k in new_keys:
                    raise GalleryError(
                        f"key '{k}' is already in gallery {self.path} with different content; the gallery is "
                        "append-only (index the changed item under a new key, or into a new gallery)"
                    )
                seen.add(d)
                new_keys.add(k)
                keep.append(i)
            if not keep:
                return AddResult(0, dups, None)
            idx = np.asarray(keep)
            name = self._commit(
                emb[idx], [{"key": keys[i], "meta": meta[i]} for i in keep],
                np.frombuffer(b"".join(digests[i] for i in keep), np.uint8).reshape(len(keep), 32),
                None if local is None else local[idx], dict(extra or {}),
            )
            self._hashes.update(digests[i] for i in keep)
            self._keys.update({keys[i]: digests[i] for i in keep})
            return AddResult(len(keep), dups, name)

    def _commit(self, emb: np.ndarray, items: list[dict[str, Any]], digests: np.ndarray,
                local: np.ndarray | None, extra: dict[str, Any]) -> str:
        seq = len(self._segments)
        name = f"{seq:08d}"
        codes, scales = quantize(emb, self.storage)
        try:
            items_bytes = (json.dumps(items, ensure_ascii=False) + "\n").encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise GalleryError(f"item metadata must be JSON-serialisable: {exc}") from None
        payload = {"emb": (f"{name}.emb.npy", _npy_bytes(codes)), "hash": (f"{name}.hash.npy", _npy_bytes(digests)),
                   "items": (f"{name}.items.json", items_bytes)}
        if scales is not None:
            payload["scale"] = (f"{name}.scale.npy", _npy_bytes(scales))
        if local is not None:
            payload["local"] = (f"{name}.local.npy", _npy_bytes(np.asarray(local, np.float16)))
        files = {}
        for role, (fname, data) in payload.items():
            with atomic_path(self.path / SEGMENTS / fname) as tmp:
                tmp.write_bytes(data)
            files[role] = {"name": fname, "size": len(data), "sha256": _sha256(data)}
        start = len(self)
        record = {"seq": seq, "segment": name, "start": start, "count": len(items), "files": files,
                  "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
        body = _canonical(record)
        line = _sha256(body).encode("ascii") + b" " + body + b"\n"
        with open(self.path / LOG, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._segments.append(Segment(seq, name, start, len(items), files, record))
        return name

    # ------------------------------------------------------------------ checking
    def verify(self) -> dict[str, Any]:
        """Check every committed file's SHA-256 and shape; raise :class:`GalleryCorruptError` on the first problem.

        Returns a summary: items, segments, bytes checked.
        """
        self._read_header(self.path)
        segments, _ = self._read_log(self.path)
        total = 0
        for seg in segments:
            for role in seg.files:
                self._verify_file(seg, role, force=True)
                total += int(seg.files[role]["size"])
        self._segments = segments
        self._arrays.clear()
        for seg in segments:
            self.segment_arrays(seg)
            self._items_of(seg)
        return {"items": len(self), "segments": len(segments), "bytes_checked": total, "ok": True}

    def commits(self) -> list[dict[str, Any]]:
        """The commit records, oldest first."""
        return [dict(s.record) for s in self._segments]

    # ------------------------------------------------------------------ searching
    def search(self, queries: np.ndarray, k: int = 10, model: Any = None, **options: Any) -> Any:
        """Exact top-``k`` of ``queries [M, D]`` (or ``[D]``) over the whole gallery, scanned in blocks.

        ``model`` (the query model or its info) is checked against the gallery's model first. ``options`` go to
        :func:`vsrt.runtime.search.exact_search` (``block_rows``, ``threads``, ``kernel``). Returns a
        :class:`vsrt.runtime.search.SearchResult`.
        """
        from vsrt.runtime.search import SearchResult, exact_search

        if model is not None:
            self.check_model(model)
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise GalleryError(f"queries must have shape [M, {self.dim}], got {list(np.shape(queries))}")
        scores, idx = exact_search(list(self.blocks()), q, k, **options)
        return SearchResult(scores, idx, self)
