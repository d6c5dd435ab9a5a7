"""Original checkpoint → vsrt model directory (config.json, vocab.json, safetensors weights, manifest.json)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from vsrt.errors import CheckpointError, InputError
from vsrt.io import atomic_write_json, sha256_file
from vsrt.manifest import Manifest
from vsrt.modeldir import CONFIG_NAME, VOCAB_NAME, config_digest
from vsrt.models.checkpoints import load_torch_checkpoint
from vsrt.models.registry import Family, family_names, get_family
from vsrt.models.weights import save_stage_weights
from vsrt.text.vocab import Vocabulary, load_vocab


def detect_family(ckpt: Any) -> Family:
    """The registered family whose ``looks_like`` accepts ``ckpt``."""
    for name in family_names():
        fam = get_family(name)
        if fam.looks_like is not None and fam.looks_like(ckpt):
            return fam
    raise CheckpointError(
        "could not tell which model family this checkpoint belongs to; pass --family "
        f"({', '.join(family_names())})"
    )


def write_model_dir(
    out_dir: str | Path,
    family: str,
    config: Any,
    stage_states: dict[str, dict[str, Any]],
    vocab: Vocabulary | None,
    source: dict[str, Any],
    force: bool = False,
    tokenizer: dict[str, Any] | None = None,
) -> Path:
    """Write a complete model directory atomically: built in a temporary sibling, then renamed into place.

    ``out_dir`` must not exist (or be empty) unless ``force``, in which case it is replaced.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"output directory {out} exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tok = tokenizer or ({"type": "word", "vocab": VOCAB_NAME, "lowercase": True} if vocab is not None else {})
        cfg_json = {"family": family, "config": config.to_dict(), "tokenizer": tok}
        atomic_write_json(tmp / CONFIG_NAME, cfg_json)
        if vocab is not None:
            vocab.save(tmp / VOCAB_NAME)
        for stage, state in stage_states.items():
            save_stage_weights(tmp, stage, state)
        manifest = Manifest(family=family, config_sha256=config_digest(cfg_json), source=source)
        manifest.save(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def convert_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    vocab_path: str | Path | None = None,
    family: str | None = None,
    force: bool = False,
    options: dict[str, Any] | None = None,
) -> Path:
    """Read an original checkpoint (restricted unpickling) and its vocabulary; write a model directory."""
    ckpt = load_torch_checkpoint(checkpoint)
    fam = get_family(family) if family else detect_family(ckpt)
    if fam.convert is None:
        raise InputError(f"family '{fam.name}' has no original checkpoint format to convert from")
    vocab = None
    if fam.needs_vocab:
        if vocab_path is None:
            raise InputError(f"family '{fam.name}' needs its vocabulary: pass --vocab (the original .pkl or .json)")
        vocab = load_vocab(vocab_path)
    conv = fam.convert(ckpt, vocab, dict(options or {}))
    source = dict(conv.source)
    source["checkpoint"] = {"file": Path(checkpoint).name, "sha256": sha256_file(checkpoint)}
    if vocab_path is not None:
        source["vocab"] = {"file": Path(vocab_path).name, "sha256": sha256_file(vocab_path)}
    return write_model_dir(out_dir, fam.name, conv.config, conv.stage_states, vocab, source, force=force)
