"""A BERT encoder with the parameter names of ``pytorch_pretrained_bert`` / Hugging Face ``BertModel``.

``embeddings.{word,position,token_type}_embeddings``, ``embeddings.LayerNorm``,
``encoder.layer.N.attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``,
``intermediate.dense``, ``output.{dense,LayerNorm}``, ``pooler.dense`` — so DSRAN's ``txt_enc.bert.*`` weights, the
released ``bert-base-uncased`` and any Hugging Face BERT-architecture checkpoint (e.g. MiniLM) load unchanged.
GELU is the exact (erf) form and LayerNorm's epsilon 1e-12, as ``pytorch_pretrained_bert``. Without an attention
mask every position is attended to — what DSRAN does (its ``TextEncoder`` calls ``self.bert(captions)``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsrt.errors import CheckpointError


@dataclass
class BertConfig:
    """The fields of a BERT ``config.json`` that define the network (``bert-base-uncased`` defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BERT hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """From a Hugging Face / Google ``config.json`` dict (unknown keys ignored; ``hidden_act`` must be gelu)."""
        act = d.get("hidden_act", "gelu")
        if act != "gelu":
            raise CheckpointError(f"BERT config hidden_act={act!r}: only the exact (erf) 'gelu' is supported")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError("BERT config: only absolute position embeddings are supported")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.position_embeddings.weight[: input_ids.size(1)].unsqueeze(0)
        if token_type_ids is None:
            types = self.token_type_embeddings.weight[0].view(1, 1, -1)
        else:
            types = self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + pos + types))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_size = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        if bias is not None:
            scores = scores + bias
        probs = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return out.view(x.size(0), x.size(1), -1)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf form (approximate="none"), as pytorch_pretrained_bert


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        att = self.attention(x, bias)
        return self.output(self.intermediate(att), att)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class BertModel(nn.Module):
    """BERT: embeddings → N transformer layers (post-LayerNorm) → (last hidden states, pooled ``[CLS]``)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        """BERT's initialisation (normal σ=0.02, LayerNorm 1/0) — what ``from_pretrained`` overwrites."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.device.type != "meta":
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids (B, T)`` → ``(sequence_output (B, T, H), pooled (B, H))``.

        ``attention_mask`` (1 = attend) adds ``-10000`` to masked keys as BERT does; None attends everywhere.
        """
        bias = None
        if attention_mask is not None:
            bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0
        h = self.encoder(self.embeddings(input_ids, token_type_ids), bias)
        return h, self.pooler(h)


#: keys of Hugging Face checkpoints that are buffers without a counterpart here
_IGNORED_KEYS = ("embeddings.position_ids",)
#: prefixes that wrap the bare model in Hugging Face / pytorch_pretrained_bert task checkpoints
_WRAPPER_PREFIXES = ("bert.", "model.")


def normalize_bert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BERT state dict in this module's names: drops a ``bert.`` wrapper prefix and head weights (``cls.*``),
    renames old TensorFlow-style ``LayerNorm.gamma/beta`` to ``weight/bias``, drops ``position_ids`` buffers."""
    keys = list(state)
    for prefix in _WRAPPER_PREFIXES:
        if keys and any(k.startswith(prefix + "embeddings.") for k in keys):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    out = {}
    for k, v in state.items():
        if k in _IGNORED_KEYS or k.startswith("cls."):
            continue
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[k] = v
    return out


def read_bert_dir(path: str | Path) -> tuple[BertConfig, dict[str, torch.Tensor]]:
    """A local BERT directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) → config and
    normalised state dict. ``.bin`` files are read with the restricted loader (no code runs)."""
    from vsrt.models.checkpoints import check_state_dict, load_torch_checkpoint

    d = Path(path)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        cfg_file = d / "bert_config.json"  # Google / pytorch_pretrained_bert naming
    if not cfg_file.is_file():
        raise CheckpointError(f"{d} has no config.json (or bert_config.json): not a BERT model directory")
    cfg = BertConfig.from_dict(json.loads(cfg_file.read_text()))
    if (d / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(d / "model.safetensors"))
    elif (d / "pytorch_model.bin").is_file():
        state = load_torch_checkpoint(d / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{d} has neither model.safetensors nor pytorch_model.bin")
    state = normalize_bert_state_dict(state)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in BertModel(cfg).state_dict().items()}
    check_state_dict(state, expected, f"BERT weights in {d}")
    return cfg, state


def load_bert(path: str | Path) -> BertModel:
    """A :class:`BertModel` with the weights of the local BERT directory ``path`` (eval mode)."""
    cfg, state = read_bert_dir(path)
    model = BertModel(cfg)
    model.load_state_dict(state)
    return model.eval()
