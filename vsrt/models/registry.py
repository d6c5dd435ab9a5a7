"""Model families known to vsrt: name → how to build, convert and export it (torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from vsrt.errors import InputError


@dataclass(frozen=True)
class Family:
    """Everything the generic convert / export / train code needs to know about one model family.

    Attributes:
        name: registry key (``vsrn``, ``vsrpp``, ``dsran-gru``, ``dsran-bert``, ``resg``).
        description: one line for ``--help`` and the README table.
        config_from_dict: ``config.json["config"]`` → the family's config object (with ``to_dict()``).
        build: config → ``{stage: module}``; parameter names equal the original code's.
        stage_exports: ``(config, modules) -> list[StageExport]``.
        convert: ``(checkpoint_obj, vocab_or_None, options) -> Converted`` for original checkpoints.
        looks_like: ``checkpoint_obj -> bool``: does an original checkpoint belong to this family?
        needs_vocab: whether conversion needs a word vocabulary.
        default_config: ``(vocab_size, img_dim, **model_opts) -> config`` for training from scratch.
        make_trainable: ``(config, TrainConfig) -> Trainable`` (see ``vsrt.training.trainer``).
        save_trained: ``(trainable, config, TrainConfig, output, data_dir, vocab, summary) -> Path``: the
            original checkpoint layout where one exists (VSRN, DSRAN), else a model directory.
        output_is_checkpoint: whether ``save_trained`` writes an original checkpoint (then ``vsrt convert`` it).
    """

    name: str
    description: str
    config_from_dict: Callable[[dict[str, Any]], Any]
    build: Callable[[Any], dict[str, nn.Module]]
    stage_exports: Callable[[Any, dict[str, nn.Module]], list[Any]]
    convert: Callable[..., Any] | None = None
    looks_like: Callable[[Any], bool] | None = None
    needs_vocab: bool = True
    default_config: Callable[..., Any] | None = None
    make_trainable: Callable[..., Any] | None = None
    save_trained: Callable[..., Any] | None = None
    output_is_checkpoint: bool = True


@dataclass
class Converted:
    """Result of reading an original checkpoint: config, per-stage state dicts, provenance."""

    config: Any
    stage_states: dict[str, dict[str, Any]]
    source: dict[str, Any]


#: family name → module defining ``FAMILY`` (imported on first use)
_FAMILY_MODULES: dict[str, str] = {
    "vsrn": "vsrt.models.vsrn_family",
    "vsrpp": "vsrt.models.vsrpp_family",
    "resg": "vsrt.models.resg_family",
    "dsran-gru": "vsrt.models.dsran_family",
    "dsran-bert": "vsrt.models.dsran_bert_family",
}


def register_family_module(name: str, module: str) -> None:
    """Make a family available under ``name`` (its module must define ``FAMILY``)."""
    _FAMILY_MODULES[name] = module


def family_names() -> list[str]:
    """Names of all registered families."""
    return sorted(_FAMILY_MODULES)


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name``, or a clear error listing the known ones."""
    if name not in _FAMILY_MODULES:
        raise InputError(f"unknown model family '{name}' (known: {', '.join(family_names())})")
    return importlib.import_module(_FAMILY_MODULES[name]).FAMILY
