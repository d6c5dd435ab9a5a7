"""Calibration and evaluation data: one source abstraction, three consumers.

A :class:`CalibrationSource` yields batches of one stage's inputs as ``{input name: np.ndarray}``, always the same
batches for the same ``(count, seed, batch_size)``. The same object serves

* ONNX Runtime's ``CalibrationDataReader`` (:meth:`CalibrationSource.ort_reader`),
* Polygraphy's ``load_data()`` data-loader convention (:meth:`CalibrationSource.load_data`),
* TensorRT 10's entropy calibrator (:func:`vsrt.calibration.trt10_cache.make_entropy_calibrator`).

Sources are built from what a user has:

* :class:`RegionFeatureSource` — precomputed region features (``.npy`` ``[N, R, F]``, or a folder of per-image
  ``[R, F]`` files), e.g. a SCAN split's ``{split}_ims.npy``, for the ``visual`` stage;
* :class:`CaptionSource` — a captions file (one caption a line), tokenised by the model's own runtime tokenizer, for
  the ``text`` stage;
* :class:`ImageFolderSource` — a folder of images run through the model's own detector pipeline (decode, Caffe
  preprocessing, RPN, box selection — the runtime code itself), recording what each stage receives;
* :class:`RandomSource` — random inputs drawn from a stage's tensor specs (random-weight benchmarks and smoke tests
  only: never use it to calibrate a trained model).

Preprocessing is identical to the runtime by construction: captions go through
:meth:`vsrt.runtime.model.RetrievalModel.tokenize` and images through the runtime detector. No torch here.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import InputError
from vsrt.manifest import TensorSpec
from vsrt.runtime.backends.base import FixedSpecs

#: image file suffixes :class:`ImageFolderSource` reads
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

Feeds = dict[str, np.ndarray]


def sample_indices(total: int, count: int | None, seed: int, what: str = "items") -> np.ndarray:
    """``count`` distinct indices out of ``total``, deterministic in ``seed`` and returned sorted.

    ``count=None`` (or ``count >= total``) takes everything. An empty pool or a non-positive count is an
    :class:`InputError`.
    """
    if total <= 0:
        raise InputError(f"no {what} to sample from")
    if count is None or count >= total:
        return np.arange(total)
    if count <= 0:
        raise InputError(f"calibration count must be positive, got {count}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=count, replace=False))


class CalibrationSource(ABC):
    """Deterministic batches of one stage's inputs.

    Subclasses implement :meth:`_batches` and :meth:`describe`. ``stage`` names the stage the batches feed.
    """

    stage: str
    batch_size: int

    @abstractmethod
    def _batches(self) -> Iterator[Feeds]:
        """Yield the batches, each ``{input name: array}``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the source reads (kind, path, count, seed, batch size) for the manifest."""

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """Number of samples (not batches) the source yields in total."""

    def batches(self) -> Iterator[Feeds]:
        """Iterate over the batches (a fresh iterator every call; always the same data)."""
        return self._batches()

    def __iter__(self) -> Iterator[Feeds]:
        return self.batches()

    def __len__(self) -> int:
        """Number of batches."""
        return -(-self.num_samples // self.batch_size)

    def load_data(self) -> Iterator[Feeds]:
        """Polygraphy's data-loader convention: a generator of ``Dict[str, np.ndarray]``.

        A script for ``polygraphy run --data-loader-script`` can simply do
        ``load_data = RegionFeatureSource("train_ims.npy", count=256).load_data``.
        """
        yield from self.batches()

    def ort_reader(self) -> Any:
        """An ``onnxruntime.quantization.CalibrationDataReader`` over the batches (rewindable)."""
        from onnxruntime.quantization import CalibrationDataReader

        source = self

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it: Iterator[Feeds] = source.batches()

            def get_next(self) -> Feeds | None:
                return next(self._it, None)

            def rewind(self) -> None:
                self._it = source.batches()

            def __len__(self) -> int:
                return len(source)

        return _Reader()

    def digest(self) -> str:
        """SHA-256 over every batch (names, dtypes, shapes, bytes): the calibration dataset's identity."""
        h = hashlib.sha256()
        for feeds in self.batches():
            for name in sorted(feeds):
                a = np.ascontiguousarray(feeds[name])
                h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
                h.update(a.tobytes())
        return h.hexdigest()

    def first_batch(self) -> Feeds:
        """The first batch (e.g. to size buffers)."""
        for feeds in self.batches():
            return feeds
        raise InputError(f"calibration source for stage '{self.stage}' is empty")


class ArraySource(CalibrationSource):
    """Batches cut from in-memory arrays ``{input name: [N, ...]}`` (all with the same N)."""

    def __init__(self, stage: str, arrays: dict[str, np.ndarray], batch_size: int = 16, what: str = "arrays") -> None:
        if not arrays:
            raise InputError(f"no arrays given for stage '{stage}'")
        ns = {k: len(v) for k, v in arrays.items()}
        if len(set(ns.values())) != 1:
            raise InputError(f"arrays for stage '{stage}' have different lengths: {ns}")
        if batch_size <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}")
        self.stage = stage
        self.arrays = arrays
        self.batch_size = batch_size
        self._n = next(iter(ns.values()))
        self._what = what

    @property
    def num_samples(self) -> int:
        return self._n

    def _batches(self) -> Iterator[Feeds]:
        for i in range(0, self._n, self.batch_size):
            yield {k: np.ascontiguousarray(v[i : i + self.batch_size]) for k, v in self.arrays.items()}

    def describe(self) -> dict[str, Any]:
        return {"kind": self._what, "count": self._n, "batch_size": self.batch_size}


class RegionFeatureSource(CalibrationSource):
    """Precomputed region features for the ``visual`` stage.

    Args:
        path: an ``.npy`` file ``[N, R, F]`` (read memory-mapped, never with pickle), or a folder of ``.npy`` files
            ``[R, F]`` (one per image, sorted by name).
        count: samples to draw (``None``: all).
        seed: sampling seed.
        batch_size: samples per batch.
        input_name: the stage input the features feed.
        expect_shape: ``[R, F]`` the stage takes; checked when given.
    """

    def __init__(
        self,
        path: str | Path,
        count: int | None = 256,
        seed: int = 0,
        batch_size: int = 16,
        stage: str = "visual",
        input_name: str = "regions",
        expect_shape: Sequence[int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.stage, self.input_name, self.batch_size, self.seed = stage, input_name, batch_size, seed
        if batch_size <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}")
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix == ".npy")
            if not self.files:
                raise InputError(f"no .npy region-feature files in folder {self.path}")
            self._array = None
            total = len(self.files)
        elif self.path.is_file():
            self.files = []
            self._array = _load_npy(self.path)
            if self._array.ndim != 3:
                raise InputError(
                    f"region features {self.path} must have 3 dims [N, regions, features], got {self._array.shape}"
                )
            total = len(self._array)
        else:
            raise InputError(f"region features not found: {self.path}")
        self.indices = sample_indices(total, count, seed, f"region features in {self.path}")
        self.expect_shape = list(expect_shape) if expect_shape is not None else None
        if self.expect_shape is not None:
            got = list(self._sample(int(self.indices[0])).shape)
            if got != self.expect_shape:
                raise InputError(
                    f"region features in {self.path} have per-image shape {got}; stage '{stage}' input "
                    f"'{input_name}' takes {self.expect_shape}"
                )

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def _sample(self, i: int) -> np.ndarray:
        if self._array is not None:
            return np.asarray(self._array[i])
        a = _load_npy(self.files[i])
        if a.ndim != 2:
            raise InputError(f"region features {self.files[i]} must have 2 dims [regions, features], got {a.shape}")
        return a

    def _batches(self) -> Iterator[Feeds]:
        for s in range(0, len(self.indices), self.batch_size):
            idx = self.indices[s : s + self.batch_size]
            x = np.stack([self._sample(int(i)) for i in idx]).astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise InputError(f"region features in {self.path} contain NaN or Inf")
            yield {self.input_name: np.ascontiguousarray(x)}

    def describe(self) -> dict[str, Any]:
        return {"kind": "region_features", "path": str(self.path), "count": self.num_samples, "seed": self.seed,
                "batch_size": self.batch_size}


class CaptionSource(CalibrationSource):
    """Captions (one a line) tokenised by the model's runtime tokenizer, for the ``text`` stage.

    Args:
        captions: a text file with one caption per line, or a list of captions.
        tokenize: ``list[str] -> tuple of arrays`` in the order of ``input_names`` (the runtime's
            :meth:`~vsrt.runtime.model.RetrievalModel.tokenize`); see :meth:`from_model_dir`.
        input_names: the stage inputs, in the order ``tokenize`` returns them.
    """

    def __init__(
        self,
        captions: str | Path | Sequence[str],
        tokenize: Callable[[list[str]], tuple[np.ndarray, ...]],
        input_names: Sequence[str] = ("tokens", "lengths"),
        count: int | None = 256,
        seed: int = 0,
        batch_size: int = 32,
        stage: str = "text",
    ) -> None:
        if isinstance(captions, (str, Path)):
            self.path: Path | None = Path(captions)
            if not self.path.is_file():
                raise InputError(f"captions file not found: {self.path}")
            try:
                lines = self.path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as exc:
                raise InputError(f"captions file {self.path} is not UTF-8 text: {exc}") from None
        else:
            self.path = None
            lines = list(captions)
        self.captions = [c.strip() for c in lines if c.strip()]
        where = str(self.path) if self.path else "the caption list"
        if batch_size <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}")
        self.indices = sample_indices(len(self.captions), count, seed, f"captions in {where}")
        self.tokenize, self.input_names = tokenize, list(input_names)
        self.stage, self.batch_size, self.seed = stage, batch_size, seed

    @classmethod
    def from_model_dir(
        cls, captions: str | Path | Sequence[str], model_dir: str | Path, stage: str = "text", **kwargs: Any
    ) -> CaptionSource:
        """Tokenise with the model directory's own vocabulary and tokenizer (the runtime's code): the word
        tokenizer (``tokens``, ``lengths``) for word-vocabulary models, or — for a text stage that takes
        ``input_ids`` (DSRAN-BERT) — the model's WordPiece tokenizer, as :func:`vsrt.runtime.dsran.encode_dsran_texts`
        feeds it."""
        from vsrt.runtime.model import RetrievalModel

        model = RetrievalModel(model_dir, backend="onnxruntime")
        names = [s.name for s in model.manifest.stage(stage).inputs]
        tokenize: Callable[[list[str]], tuple[np.ndarray, ...]] = model.tokenize
        if names == ["input_ids"]:
            from vsrt.runtime.dsran import wordpiece_tokenizer

            wordpiece = wordpiece_tokenizer(model)

            def tokenize(texts: list[str]) -> tuple[np.ndarray, ...]:
                return (wordpiece.encode(texts),)

        return cls(captions, tokenize, names, stage=stage, **kwargs)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def _batches(self) -> Iterator[Feeds]:
        for s in range(0, len(self.indices), self.batch_size):
            texts = [self.captions[int(i)] for i in self.indices[s : s + self.batch_size]]
            arrays = self.tokenize(texts)
            if len(arrays) != len(self.input_names):
                raise InputError(
                    f"tokenizer returned {len(arrays)} arrays; stage '{self.stage}' takes {self.input_names}"
                )
            yield {n: np.ascontiguousarray(a) for n, a in zip(self.input_names, arrays)}

    def describe(self) -> dict[str, Any]:
        return {"kind": "captions", "path": str(self.path) if self.path else None, "count": self.num_samples,
                "seed": self.seed, "batch_size": self.batch_size}


class ImageFolderSource(CalibrationSource):
    """Images from a folder, run through the model's own detector pipeline; yields what ``stage`` receives.

    For ``visual`` the batches are the detector's region features; for a detector stage (``backbone_rpn``,
    ``roi_head``…) they are the exact inputs the runtime detector gives that stage, recorded while it runs —
    so decode, resize, mean subtraction and box selection are the runtime's own code, not a copy.

    Args:
        folder: the image folder (files with a suffix in :data:`IMAGE_SUFFIXES`, sorted by name).
        model_dir: the model directory whose detector to use.
    """

    def __init__(
        self,
        folder: str | Path,
        model_dir: str | Path,
        stage: str = "visual",
        count: int | None = 64,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"image folder not found: {self.folder}")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.indices = sample_indices(len(self.files), count, seed, f"images in {self.folder}")
        self.model_dir, self.stage, self.batch_size, self.seed = Path(model_dir), stage, batch_size, seed
        self._cache: list[Feeds] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def _collect(self) -> list[Feeds]:
        """Run the detector over the sampled images once, keeping the per-image feeds of ``stage``."""
        from vsrt.runtime.model import RetrievalModel

        model = RetrievalModel(self.model_dir, backend="onnxruntime", precision="fp32")
        paths = [self.files[int(i)] for i in self.indices]
        if self.stage == "visual":
            dets = model.detector.detect(paths)
            return [{"regions": np.asarray(d.features, np.float32)[None]} for d in dets]
        detector = model.detector
        backends = getattr(detector, "backends", None)
        if not isinstance(backends, dict) or self.stage not in backends:
            raise InputError(
                f"the detector does not run a stage '{self.stage}' (its stages: "
                f"{', '.join(sorted(backends)) if isinstance(backends, dict) else 'unknown'})"
            )
        recorder = _RecordingBackend(backends[self.stage])
        backends[self.stage] = recorder
        try:
            for p in paths:
                detector.detect([p])
        finally:
            backends[self.stage] = recorder.inner
        return recorder.calls

    def _batches(self) -> Iterator[Feeds]:
        if self._cache is None:
            self._cache = self._collect()
        per_item = self._cache
        for s in range(0, len(per_item), self.batch_size):
            group = per_item[s : s + self.batch_size]
            names = list(group[0])
            shapes = {n: {g[n].shape[1:] for g in group} for n in names}
            if all(len(v) == 1 for v in shapes.values()):
                yield {n: np.concatenate([g[n] for g in group]) for n in names}
            else:  # e.g. images of different sizes: one call per image, as the runtime does
                yield from group

    def describe(self) -> dict[str, Any]:
        return {"kind": "images", "path": str(self.folder), "count": self.num_samples, "seed": self.seed,
                "batch_size": self.batch_size, "preprocessing": "runtime detector"}


class _RecordingBackend:
    """Wraps a backend and keeps a copy of every input it receives."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[Feeds] = []
        self.name = getattr(inner, "name", "recording")

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.inner.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.inner.outputs

    def run(self, feeds: Feeds) -> Feeds:
        self.calls.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run(feeds)


class RandomSource(CalibrationSource):
    """Random inputs drawn from a stage's tensor specs at their ``opt`` shape (batch from ``batch_size``).

    Floats are non-negative and half-sparse (like ReLU region features), integer inputs named ``lengths`` are
    valid lengths for the sequence dim, other integers are ids in ``[4, vocab_size)``. For random-weight
    benchmarks and smoke tests only.
    """

    def __init__(
        self,
        stage: str,
        inputs: Sequence[TensorSpec],
        count: int = 64,
        seed: int = 0,
        batch_size: int = 16,
        vocab_size: int = 1000,
        seq_len: int | None = None,
    ) -> None:
        if count <= 0 or batch_size <= 0:
            raise InputError(f"count and batch size must be positive, got {count} and {batch_size}")
        self.stage, self.specs, self.count, self.seed = stage, list(inputs), count, seed
        self.batch_size, self.vocab_size, self.seq_len = batch_size, vocab_size, seq_len

    @property
    def num_samples(self) -> int:
        return self.count

    def _shape(self, spec: TensorSpec, batch: int, seq: int) -> list[int]:
        base = spec.opt or [d if isinstance(d, int) else 1 for d in spec.shape]
        out = []
        for i, (d, b) in enumerate(zip(spec.shape, base)):
            if i == 0 and not isinstance(d, int):
                out.append(batch)
            elif isinstance(d, str) and d in ("seq", "sequence", "length"):
                out.append(seq)
            else:
                out.append(int(d) if isinstance(d, int) else int(b))
        return out

    def _batches(self) -> Iterator[Feeds]:
        rng = np.random.default_rng(self.seed)
        for s in range(0, self.count, self.batch_size):
            b = min(self.batch_size, self.count - s)
            seq = self.seq_len or int(rng.integers(4, 21))
            feeds: Feeds = {}
            for spec in self.specs:
                shape = self._shape(spec, b, seq)
                dt = np.dtype(spec.dtype)
                if spec.name == "lengths":
                    lengths = rng.integers(2, seq + 1, size=shape).astype(dt)
                    lengths[0] = seq
                    feeds[spec.name] = lengths
                elif dt.kind in "iu":
                    feeds[spec.name] = rng.integers(4, max(self.vocab_size, 5), size=shape).astype(dt)
                else:
                    x = rng.random(shape, dtype=np.float32) * 2.0
                    feeds[spec.name] = (x * (rng.random(shape, dtype=np.float32) < 0.5)).astype(dt)
            if "lengths" in feeds and "tokens" in feeds:  # pad beyond each length, like the tokenizer
                steps = np.arange(feeds["tokens"].shape[1])[None]
                feeds["tokens"] = np.where(steps < feeds["lengths"][:, None], feeds["tokens"], 0)
            yield feeds

    def describe(self) -> dict[str, Any]:
        return {"kind": "random", "count": self.count, "seed": self.seed, "batch_size": self.batch_size,
                "note": "random inputs: smoke tests and random-weight benchmarks only"}


def _load_npy(path: Path) -> np.ndarray:
    """Load an ``.npy`` file memory-mapped, refusing pickled object arrays."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{path} is not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


class StageDataError(InputError):
    """The data given cannot feed a stage (e.g. a precomputed split for a stage that takes raw pixels); the
    message names the stage and the option that gives it data."""


class _CaptureBackend(FixedSpecs):
    """Stands in for a stage's backend: keeps the feeds it is given and returns zeros of its output shapes.

    Lets a source record exactly what runtime code feeds a stage without running that stage.
    """

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self._inputs, self._outputs = list(inputs), list(outputs)
        self.calls: list[Feeds] = []
        self.name = "capture"

    def run(self, feeds: Feeds) -> Feeds:
        self.calls.append(dict(feeds))
        batch = len(next(iter(feeds.values())))
        out = {}
        for spec in self._outputs:
            shape = [batch if i == 0 else (int(d) if isinstance(d, int) else 1) for i, d in enumerate(spec.shape)]
            out[spec.name] = np.zeros(shape, np.dtype(spec.dtype))
        return out


def _family(model_dir: str | Path) -> str:
    from vsrt.modeldir import read_model_info

    return read_model_info(model_dir).family


def _bounded_k(spec: TensorSpec, k: int | None, pool: int) -> int:
    """Shortlist size: ``k``, else the stage's ``opt`` batch (else 64), within its profile and the image pool."""
    if k is None:
        k = int(spec.opt[0]) if spec.opt else 64
    lo = int(spec.min[0]) if spec.min else 1
    hi = int(spec.max[0]) if spec.max else k
    if k < 1:
        raise InputError(f"shortlist size k must be >= 1, got {k}")
    return max(lo, min(k, hi, pool))


class PairScorerSource(CalibrationSource):
    """Inputs of VSR++'s ``pair_scorer`` stage, derived from region features and captions.

    ``pair_scorer``'s inputs are outputs of the other stages, so this source runs the model's FP32 ``visual`` and
    ``text`` ONNX graphs (the runtime's :class:`~vsrt.runtime.model.RetrievalModel` with ONNX Runtime; no torch)
    on a deterministic sample of images and captions, and for each sampled caption records exactly what
    :meth:`vsrt.runtime.pairwise.PairwiseScorer.rerank_images` feeds the stage at re-ranking time: the ``k``
    best images by the global score (their ``region_features [k, R, D]``), the caption's ``word_features
    [1, len, D]`` cut to its length and ``lengths [1]``. The stage itself is not run while recording.

    One batch per caption query. Images: ``max(k, count)`` sampled (seed ``seed``), every caption of a sampled
    image is a candidate query when ``captions_per_image`` is given (so the shortlist holds the true match), else
    the captions are sampled from all of them (seed ``seed + 1``).

    Args:
        regions: region features ``[N, R, F]`` (memory-mapped is fine).
        captions: captions (``captions_per_image`` consecutive ones per image when given).
        model_dir: the model directory (its FP32 ``visual`` / ``text`` graphs run the upstream stages).
        count: caption queries (batches).
        seed: sampling seed.
        k: shortlist size (default: the stage's ``opt`` profile batch, within its ``min``..``max``).
        captions_per_image: captions per image of a SCAN split (5), or None for captions unrelated to ``regions``.
        origin: what the data is (paths, split) for :meth:`describe`.
    """

    def __init__(
        self,
        regions: np.ndarray,
        captions: Sequence[str],
        model_dir: str | Path,
        count: int | None = 256,
        seed: int = 0,
        k: int | None = None,
        captions_per_image: int | None = 5,
        stage: str = "pair_scorer",
        origin: dict[str, Any] | None = None,
    ) -> None:
        from vsrt.manifest import Manifest

        self.model_dir, self.stage, self.seed, self.batch_size = Path(model_dir), stage, seed, 1
        self.origin = dict(origin or {})
        manifest = Manifest.load(self.model_dir)
        if stage not in manifest.stages:
            raise InputError(f"{self.model_dir} has no stage '{stage}'")
        for up in ("visual", "text"):
            if up not in manifest.stages or "fp32" not in manifest.stages[up].files:
                raise InputError(
                    f"stage '{stage}' is calibrated on the outputs of the '{up}' stage, which has no FP32 ONNX file "
                    f"in {self.model_dir}; run `vsrt export` first"
                )
        regions = regions if isinstance(regions, np.ndarray) else np.asarray(regions)
        if regions.ndim != 3:
            raise InputError(f"region features for stage '{stage}' must be [N, R, F], got {list(regions.shape)}")
        captions = list(captions)
        if not captions:
            raise InputError(f"no captions to derive stage '{stage}' inputs from")
        if count is not None and count <= 0:
            raise InputError(f"calibration count must be positive, got {count}")
        n = len(regions)
        pool = n if count is None else min(n, max(count, _bounded_k(manifest.stage(stage).inputs[0], k, n)))
        self.images = sample_indices(n, pool, seed, f"images for stage '{stage}'")
        self.k = _bounded_k(manifest.stage(stage).inputs[0], k, len(self.images))
        if captions_per_image:
            if len(captions) != captions_per_image * n:
                raise InputError(
                    f"{len(captions)} captions for {n} images is not {captions_per_image} captions per image"
                )
            pool_caps = (self.images[:, None] * captions_per_image + np.arange(captions_per_image)).reshape(-1)
        else:
            pool_caps = np.arange(len(captions))
        pick = sample_indices(len(pool_caps), count, seed + 1, f"captions for stage '{stage}'")
        self.caption_indices = pool_caps[pick]
        self.captions_per_image = captions_per_image
        self._regions, self._captions = regions, captions
        self._items: tuple[Any, Any, Any] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.caption_indices)

    def _upstream(self) -> tuple[Any, Any, Any]:
        """``(model, ImageItems, CaptionItems)``: the FP32 visual / text outputs of the sample (computed once)."""
        if self._items is None:
            from vsrt.runtime.model import RetrievalModel
            from vsrt.runtime.pairwise import encode_caption_items, encode_image_items

            model = RetrievalModel(self.model_dir, backend="onnxruntime", precision="fp32")
            regions = np.ascontiguousarray(self._regions[self.images], dtype=np.float32)
            images = encode_image_items(model, regions)
            captions = encode_caption_items(model, [self._captions[int(c)] for c in self.caption_indices])
            self._items = (model, images, captions)
        return self._items

    def _batches(self) -> Iterator[Feeds]:
        from vsrt.runtime.pairwise import PairwiseScorer

        model, images, captions = self._upstream()
        spec = model.manifest.stage(self.stage)
        capture = _CaptureBackend(spec.inputs, spec.outputs)
        model.backends[self.stage] = capture
        scorer = PairwiseScorer(model)
        for q in range(len(captions)):
            capture.calls.clear()
            scorer.rerank_images(captions, q, images, self.k)
            yield from list(capture.calls)

    def describe(self) -> dict[str, Any]:
        return {"kind": "derived", "stage": self.stage, **self.origin,
                "upstream": {"visual": "fp32 onnx (onnxruntime)", "text": "fp32 onnx (onnxruntime)"},
                "feeds": "vsrt.runtime.pairwise.PairwiseScorer.rerank_images: caption vs its global top-k images",
                "count": self.num_samples, "shortlist_k": self.k, "image_pool": len(self.images),
                "seed": self.seed, "batch_size": self.batch_size}


class DSRANRegionSource(CalibrationSource):
    """DSRAN's ``visual`` stage inputs from a precomputed split, as the runtime's evaluation feeds them
    (:func:`vsrt.runtime.dsran.dsran_similarity_matrix`): ``regions`` from ``{split}_ims.npy``, ``grid`` from
    ``{split}_grid.npy`` or, without it, derived from the regions (:func:`vsrt.runtime.dsran.grid_from_regions`, the
    synthetic-data convention), and for DSRAN-BERT ``region_pos`` from ``{split}_region_pos.npy`` or zeros.

    Args:
        data_dir / split: the SCAN-like DSRAN layout (``docs/dsran.md``).
        model_dir: the model directory (its ``visual`` input specs are checked).
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        model_dir: str | Path,
        count: int | None = 256,
        seed: int = 0,
        batch_size: int = 16,
        stage: str = "visual",
    ) -> None:
        from vsrt.manifest import Manifest
        from vsrt.runtime.dsran import load_dsran_extras

        if batch_size <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}")
        self.data_dir, self.split, self.stage = Path(data_dir), split, stage
        self.batch_size, self.seed = batch_size, seed
        self.path = self.data_dir / f"{split}_ims.npy"
        if not self.path.is_file():
            raise InputError(f"region features not found: {self.path} (split '{split}' of {self.data_dir})")
        self.regions = _load_npy(self.path)
        self.specs = {s.name: s for s in Manifest.load(model_dir).stage(stage).inputs}
        for name in ("grid", "regions"):
            if name not in self.specs:
                raise InputError(f"stage '{stage}' of {model_dir} has no '{name}' input: not a DSRAN visual stage")
        self._check("regions", self.regions, self.path)
        self.grid, self.region_pos = load_dsran_extras(self.data_dir, split, len(self.regions))
        if self.grid is not None:
            self._check("grid", self.grid, self.data_dir / f"{split}_grid.npy")
        if self.region_pos is not None and "region_pos" in self.specs:
            self._check("region_pos", self.region_pos, self.data_dir / f"{split}_region_pos.npy")
        self.indices = sample_indices(len(self.regions), count, seed, f"region features in {self.path}")

    def _check(self, name: str, a: np.ndarray, path: Path) -> None:
        want = [int(d) for d in self.specs[name].shape[1:]]
        if a.ndim != 3 or list(a.shape[1:]) != want:
            raise InputError(f"{path} has per-image shape {list(a.shape[1:])}; stage '{self.stage}' input "
                             f"'{name}' takes {want}")

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def _batches(self) -> Iterator[Feeds]:
        from vsrt.runtime.dsran import precomputed_visual_inputs

        shapes = {name: spec.shape for name, spec in self.specs.items()}
        for s in range(0, len(self.indices), self.batch_size):
            idx = self.indices[s : s + self.batch_size]
            regions = np.ascontiguousarray(self.regions[idx], dtype=np.float32)
            if not np.isfinite(regions).all():
                raise InputError(f"region features in {self.path} contain NaN or Inf")
            grid, pos = precomputed_visual_inputs(
                shapes, regions, None if self.grid is None else self.grid[idx],
                None if self.region_pos is None else self.region_pos[idx],
            )
            feeds = {"grid": np.ascontiguousarray(grid, dtype=np.float32), "regions": regions}
            if pos is not None:
                feeds["region_pos"] = np.ascontiguousarray(pos, dtype=np.float32)
            yield feeds

    def describe(self) -> dict[str, Any]:
        out = {"kind": "dsran_regions", "path": str(self.path), "split": self.split, "count": self.num_samples,
               "seed": self.seed, "batch_size": self.batch_size,
               "grid": f"{self.split}_grid.npy" if self.grid is not None else
               "derived from the regions (grid_from_regions: synthetic-data convention, docs/dsran.md)"}
        if "region_pos" in self.specs:
            out["region_pos"] = f"{self.split}_region_pos.npy" if self.region_pos is not None else "zeros"
        return out


class DSRANImageSource(ImageFolderSource):
    """DSRAN stages fed from a folder of images through the runtime (:mod:`vsrt.runtime.dsran`), recording what
    the stage receives: ``grid`` gets the ResNet pixels of :func:`~vsrt.runtime.dsran.encode_grid` (DSRAN's test
    transform); ``visual`` gets the grid tokens and the detector's regions of
    :func:`~vsrt.runtime.dsran.encode_dsran_images` (the model directory needs a detector configured for the
    stage's region count).
    """

    def __init__(
        self,
        folder: str | Path,
        model_dir: str | Path,
        stage: str = "grid",
        count: int | None = 64,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        if stage not in ("grid", "visual"):
            raise InputError(f"DSRAN images feed the 'grid' and 'visual' stages, not '{stage}'")
        if batch_size <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}")
        super().__init__(folder, model_dir, stage, count, seed, batch_size)

    def _batches(self) -> Iterator[Feeds]:
        if self._cache is None:
            from vsrt.runtime import dsran
            from vsrt.runtime.model import RetrievalModel

            model = RetrievalModel(self.model_dir, backend="onnxruntime", precision="fp32")
            paths = [self.files[int(i)] for i in self.indices]
            recorder = _RecordingBackend(model.stage(self.stage))
            model.backends[self.stage] = recorder
            if self.stage == "grid":
                dsran.encode_grid(model, paths, self.batch_size)
            else:
                dsran.encode_dsran_images(model, paths, batch_size=self.batch_size)
            self._cache = recorder.calls
        yield from self._cache

    def describe(self) -> dict[str, Any]:
        how = "runtime grid preprocessing (Resize 256, CenterCrop, ImageNet normalisation)" if self.stage == "grid" \
            else "runtime grid stage + detector regions"
        return {"kind": "images", "path": str(self.folder), "count": self.num_samples, "seed": self.seed,
                "batch_size": self.batch_size, "preprocessing": how}


def split_source(
    data_dir: str | Path,
    split: str,
    stage: str,
    model_dir: str | Path,
    count: int | None = 256,
    seed: int = 0,
    batch_size: int = 16,
    k: int | None = None,
) -> CalibrationSource:
    """The source for ``stage`` from a SCAN-layout dataset split (``{split}_ims.npy`` / ``{split}_caps.txt``),
    giving each stage what the runtime gives it from that layout:

    * ``visual`` — the region features (DSRAN: :class:`DSRANRegionSource`, grid tokens and region encodings from
      the split's optional files, else the documented substitutes);
    * ``text`` — the captions through the model's own tokenizer (word ids, or WordPiece for DSRAN-BERT);
    * ``pair_scorer`` (VSR++) — :class:`PairScorerSource`, derived through the FP32 visual and text stages
      (``k``: the shortlist size).

    Any other stage (DSRAN's ``grid``, which takes pixels; the detector's stages) is a :class:`StageDataError`
    naming the option that feeds it.
    """
    from vsrt.manifest import Manifest

    data_dir = Path(data_dir)
    manifest = Manifest.load(model_dir)
    if stage not in manifest.stages:
        raise InputError(f"{model_dir} has no stage '{stage}' (its stages: {', '.join(manifest.stages)})")
    family = _family(model_dir)
    spec = manifest.stage(stage).inputs
    if stage == "visual" and family.startswith("dsran"):
        return DSRANRegionSource(data_dir, split, model_dir, count, seed, batch_size, stage)
    if stage == "visual":
        return RegionFeatureSource(
            data_dir / f"{split}_ims.npy", count, seed, batch_size, stage, spec[0].name,
            expect_shape=[int(d) for d in spec[0].shape[1:]],
        )
    if stage == "text":
        return CaptionSource.from_model_dir(
            data_dir / f"{split}_caps.txt", model_dir, stage, count=count, seed=seed, batch_size=max(batch_size, 32)
        )
    if stage == "pair_scorer":
        from vsrt.data.precomp import load_precomp

        data = load_precomp(data_dir, split)
        return PairScorerSource(
            data.images, data.captions, model_dir, count, seed, k, data.captions_per_image, stage,
            origin={"regions": str(data_dir / f"{split}_ims.npy"), "captions": str(data_dir / f"{split}_caps.txt"),
                    "split": split},
        )
    if stage == "grid":
        raise StageDataError(
            f"stage 'grid' (DSRAN's ResNet grid encoder) takes raw image pixels, which a precomputed split "
            f"({data_dir}) does not have: give a folder of images with --images DIR, or leave the stage out "
            "(--stage visual --stage text)"
        )
    raise StageDataError(
        f"stage '{stage}' cannot be calibrated from a precomputed split ({data_dir}): give a folder of images "
        "(--images DIR)"
    )
