"""ReSG's registry entry (reconstructed model, no original checkpoint format: trained models are written as vsrt
model directories, so there is nothing to ``vsrt convert``)."""

from __future__ import annotations

from vsrt.export.resg import stage_exports
from vsrt.models.registry import Family
from vsrt.models.resg import ReSGConfig, build
from vsrt.training import resg as _train

FAMILY = Family(
    name="resg",
    description="ReSG (TCYB 2024, reconstructed): relationship-enhanced region and word graphs, explicit "
    "embeddings; cosine of global embeddings",
    config_from_dict=ReSGConfig.from_dict,
    build=build,
    stage_exports=stage_exports,
    convert=None,
    looks_like=None,
    default_config=_train.default_config,
    make_trainable=_train.make_trainable,
    save_trained=_train.save_trained,
    output_is_checkpoint=False,
)
