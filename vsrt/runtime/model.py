"""A model directory opened for inference: regions / images / texts → L2-normalised embeddings. No torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import InputError
from vsrt.manifest import Manifest
from vsrt.modeldir import open_manifest, read_model_info, read_vocab
from vsrt.runtime.backends.base import Backend
from vsrt.runtime.backends.factory import create_backend

#: stages that embed (the detector's stages are opened by the Detector)
ENCODER_STAGES = ("visual", "text")


class RetrievalModel:
    """Embeds region features, images (through the detector, when the model has one) and captions.

    Stages are opened lazily on first use with the chosen backend and precision.

    Args:
        model_dir: a model directory with exported ONNX files.
        backend: ``auto`` | ``onnxruntime`` | ``ort-cuda`` | ``ort-tensorrt`` | ``tensorrt``.
        precision: ``fp32`` | ``fp16`` | ``int8`` (the stage files must exist).
        backend_options: passed to the backend constructor (threads, providers…).
    """

    def __init__(
        self,
        model_dir: str | Path,
        backend: str = "auto",
        precision: str = "fp32",
        **backend_options: Any,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = open_manifest(self.model_dir)
        self.info = read_model_info(self.model_dir)
        self.family = self.info.family
        self.backend_name = backend
        self.precision = precision
        self.backend_options = backend_options
        self.backends: dict[str, Backend] = {}
        self._vocab = None
        self._detector = None

    # ------------------------------------------------------------------ plumbing
    def stage(self, name: str) -> Backend:
        """The backend running stage ``name`` (opened on first use)."""
        if name not in self.backends:
            self.backends[name] = create_backend(
                self.model_dir, self.manifest, name, self.backend_name, self.precision, **self.backend_options
            )
        return self.backends[name]

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding space."""
        for spec in self.manifest.stage("visual").outputs:
            if spec.name == "embedding":
                return int(spec.shape[-1])
        raise InputError("visual stage has no 'embedding' output")

    @property
    def num_regions(self) -> int:
        """Regions per image the visual stage takes."""
        return int(self.manifest.stage("visual").inputs[0].shape[1])

    @property
    def vocab(self):  # noqa: ANN201 - Vocabulary
        if self._vocab is None:
            self._vocab = read_vocab(self.model_dir)
        return self._vocab

    # ------------------------------------------------------------------ images
    def encode_regions_full(self, regions: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Region features ``[N, R, F]`` → every output of the visual stage (``embedding``, ``region_features``)."""
        regions = np.asarray(regions)
        spec = self.manifest.stage("visual").inputs[0]
        if regions.ndim == 2:
            regions = regions[None]
        if regions.ndim != 3 or list(regions.shape[1:]) != [int(d) for d in spec.shape[1:]]:
            raise InputError(
                f"region features must have shape [N, {spec.shape[1]}, {spec.shape[2]}], got {list(regions.shape)}"
            )
        if not np.isfinite(regions).all():
            raise InputError("region features contain NaN or Inf")
        outs: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(regions), batch_size):
            chunk = np.ascontiguousarray(regions[i : i + batch_size], dtype=np.float32)
            for k, v in self.stage("visual").run({spec.name: chunk}).items():
                outs.setdefault(k, []).append(np.asarray(v, dtype=np.float32))
        if not outs:
            return {o.name: np.zeros((0, *[int(d) for d in o.shape[1:]]), np.float32)
                    for o in self.manifest.stage("visual").outputs}
        return {k: np.concatenate(v) for k, v in outs.items()}

    def encode_regions(self, regions: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Region features ``[N, R, F]`` → image embeddings ``[N, D]`` (L2-normalised)."""
        return self.encode_regions_full(regions, batch_size)["embedding"]

    @property
    def detector(self):  # noqa: ANN201 - vsrt.runtime.detector.Detector
        """The model's detector (raw image → regions); an error if the model directory has none."""
        if self._detector is None:
            if "backbone_rpn" not in self.manifest.stages:
                raise InputError(
                    f"{self.model_dir} has no detector: add one with `vsrt convert-detector`, then `vsrt export`, "
                    "or pass precomputed region features"
                )
            from vsrt.runtime.detector import Detector

            self._detector = Detector.from_model_dir(self.model_dir, self.manifest, self.backend_name, self.precision,
                                                     **self.backend_options)
        return self._detector

    def encode_images(self, images: Sequence[str | Path | np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Raw images (paths or HxWx3 BGR arrays) → detector regions → image embeddings ``[N, D]``.

        The detector keeps exactly as many boxes as the visual stage takes (``min = max = num_regions``, e.g. 36);
        an image with fewer proposals than that gets zero rows after its regions.
        """
        from vsrt.runtime.detector import stack_features

        k = self.num_regions
        dets = self.detector.detect(list(images), num_boxes=k)
        f = int(self.manifest.stage("visual").inputs[0].shape[2])
        regions, _ = stack_features(dets, k, f)
        return self.encode_regions(regions, batch_size)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions → ``(tokens [B, T] int64, lengths [B] int64)`` with the original tokenisation."""
        from vsrt.text.tokenize import encode_batch

        return encode_batch(list(texts), self.vocab)

    def encode_texts_full(self, texts: Sequence[str], batch_size: int = 128) -> dict[str, np.ndarray]:
        """Captions → every output of the text stage, per batch (word features are padded per batch)."""
        if isinstance(texts, str):
            raise InputError("encode_texts takes a list of captions, not a single string")
        texts = list(texts)
        outs: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(texts), batch_size):
            tokens, lengths = self.tokenize(texts[i : i + batch_size])
            res = self.stage("text").run({"tokens": tokens, "lengths": lengths})
            for k, v in res.items():
                outs.setdefault(k, []).append(np.asarray(v, dtype=np.float32))
        if not texts:
            return {"embedding": np.zeros((0, self.embed_dim), np.float32)}
        return {k: v[0] if len(v) == 1 else _concat_padded(v) for k, v in outs.items()}

    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Captions → text embeddings ``[N, D]`` (L2-normalised)."""
        return self.encode_texts_full(texts, batch_size)["embedding"]

    # ------------------------------------------------------------------ scores
    @staticmethod
    def similarity(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix ``[N_img, N_txt]`` of L2-normalised embeddings."""
        return np.asarray(image_embeddings, np.float32) @ np.asarray(text_embeddings, np.float32).T


def _concat_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0, zero-padding axis 1 to the longest (word features of different batches)."""
    if arrays[0].ndim < 3:
        return np.concatenate(arrays)
    t = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays])


def open_model(model_dir: str | Path, backend: str = "auto", precision: str = "fp32", **options: Any) -> RetrievalModel:
    """Open a model directory for inference (see :class:`RetrievalModel`)."""
    return RetrievalModel(model_dir, backend, precision, **options)
