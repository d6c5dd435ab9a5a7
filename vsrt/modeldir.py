"""Reading a model directory's config and vocabulary (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsrt.errors import ManifestError
from vsrt.io import read_json, sha256_bytes
from vsrt.manifest import Manifest
from vsrt.text.vocab import Vocabulary, load_vocab

CONFIG_NAME = "config.json"
VOCAB_NAME = "vocab.json"


@dataclass
class ModelInfo:
    """``config.json`` of a model directory: ``family``, the family's hyper-parameters, tokenizer settings."""

    family: str
    config: dict[str, Any]
    tokenizer: dict[str, Any]
    raw: dict[str, Any]


def config_digest(config_json: dict[str, Any]) -> str:
    """Stable SHA-256 of a config dict (recorded in the manifest and in galleries)."""
    import json

    return sha256_bytes(json.dumps(config_json, sort_keys=True).encode("utf-8"))


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Read and sanity-check ``MODEL_DIR/config.json``."""
    p = Path(model_dir) / CONFIG_NAME
    if not p.is_file():
        raise ManifestError(
            f"{p} not found: {model_dir} is not a vsrt model directory (create one with `vsrt convert`)"
        )
    d = read_json(p, "model config")
    if not isinstance(d, dict) or "family" not in d or "config" not in d:
        raise ManifestError(f"{p} is not a vsrt model config (needs 'family' and 'config')")
    return ModelInfo(d["family"], dict(d["config"]), dict(d.get("tokenizer", {})), d)


def read_vocab(model_dir: str | Path) -> Vocabulary:
    """The model's word vocabulary (``vocab.json``)."""
    p = Path(model_dir) / VOCAB_NAME
    if not p.is_file():
        raise ManifestError(f"{p} not found: this model has no word vocabulary")
    return load_vocab(p)


def open_manifest(model_dir: str | Path) -> Manifest:
    """Load the manifest and check it belongs to the config beside it."""
    m = Manifest.load(model_dir)
    info = read_model_info(model_dir)
    if m.config_sha256 and m.config_sha256 != config_digest(info.raw):
        raise ManifestError(
            f"{Path(model_dir) / CONFIG_NAME} was changed after the manifest was written "
            "(config checksum differs); re-run `vsrt convert` or `vsrt export`"
        )
    return m
