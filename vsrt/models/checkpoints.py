"""Restricted loading of original (pickled) PyTorch checkpoints.

Original checkpoints are ``torch.save`` pickles (VSRN/SCAN/DSRAN: a dict with ``model``, ``opt`` =
``argparse.Namespace``, ...; detectron-style: ``{"model": state_dict, ...}``), often written by Python 2
(strings need ``latin1``). They are read only through torch's ``weights_only`` unpickler, which builds
tensors and plain containers and refuses every other global; the one extra global allowed is
``argparse.Namespace`` (plain attribute bag). A pickle that asks for anything else (``os.system``,
``builtins.eval``, a custom class) is refused before any of it runs.
"""

from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path
from typing import Any

from vsrt.errors import CheckpointError, UnsafePickleError

ALLOWED_EXTRA_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


def load_torch_checkpoint(path: str | Path, extra_globals: tuple[Any, ...] = ()) -> Any:
    """Load a ``torch.save`` file (zip or legacy format, Python 2 or 3) without running code from it.

    Args:
        path: the checkpoint file.
        extra_globals: further plain classes to allow (in addition to ``argparse.Namespace``).

    Raises:
        CheckpointError: missing, truncated or not a torch checkpoint.
        UnsafePickleError: the pickle references a global that is not allowed.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty")
    allowed = list(ALLOWED_EXTRA_GLOBALS) + list(extra_globals)
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            # torch warns that pickle_load_args need weights_only=False, yet passes `encoding` to its restricted
            # unpickler (Python 2 str opcodes are decoded with it); the warning is noise here.
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            return torch.load(p, map_location="cpu", weights_only=True, encoding="latin1")
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "global" in msg.lower() or "not an allowed" in msg.lower() or "unsupported" in msg.lower():
            first = next((ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln or "global" in ln), msg[:300])
            raise UnsafePickleError(
                f"refused to load {p}: the pickle asks for a global outside the allowed set "
                f"(tensors, containers, argparse.Namespace) — nothing from it was run. Detail: {first}"
            ) from None
        raise CheckpointError(f"{p} is not a readable torch checkpoint: {msg[:300]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:300]}"
        raise CheckpointError(f"{p} is not a readable torch checkpoint ({detail})") from None


def namespace_to_dict(opt: Any) -> dict[str, Any]:
    """``argparse.Namespace`` (or dict) of an original checkpoint's ``opt`` as a JSON-able dict."""
    d = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt or {})
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, bytes):
            v = v.decode("latin1")
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
        else:
            out[k] = repr(v)
    return out


def check_state_dict(
    state: dict[str, Any],
    expected: dict[str, tuple[int, ...]],
    what: str,
    ignore_unexpected: tuple[str, ...] = ("num_batches_tracked",),
) -> None:
    """Validate a state dict's keys and shapes against ``expected``; one clear error listing every problem.

    Keys ending with one of ``ignore_unexpected`` may be present or absent.
    """
    problems: list[str] = []
    opt_suffix = tuple(ignore_unexpected)
    missing = [k for k in expected if k not in state and not k.endswith(opt_suffix)]
    unexpected = [k for k in state if k not in expected and not k.endswith(opt_suffix)]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k])
    ]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:12])}{' …' if len(missing) > 12 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}{' …' if len(unexpected) > 12 else ''}"
        )
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {'; '.join(wrong[:8])}{' …' if len(wrong) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + " | ".join(problems))


def checkpoint_options(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The ``opt`` entry of an original checkpoint (``argparse.Namespace`` or dict) as a dict; ``{}`` when absent."""
    opt = ckpt.get("opt")
    if opt is None:
        return {}
    if not isinstance(opt, (argparse.Namespace, dict)):
        raise CheckpointError(f"checkpoint 'opt' is a {type(opt).__name__}, expected argparse.Namespace")
    return namespace_to_dict(opt)


def image_text_states(ckpt: Any, family: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(img_sd, txt_sd, opt)`` of a VSRN-style checkpoint ``{'model': [img_sd, txt_sd], 'opt': …}``.

    ``family`` names the expected family in the errors (``VSRN``, ``VSR++``).
    """
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"not a {family} checkpoint: expected a dict with a 'model' entry")
    model = ckpt["model"]
    if not isinstance(model, (list, tuple)) or len(model) != 2 or not all(isinstance(s, dict) for s in model):
        raise CheckpointError(
            f"not a {family} checkpoint: 'model' must be a list [image_encoder_state_dict, text_encoder_state_dict]"
        )
    img_sd, txt_sd = model
    opt = checkpoint_options(ckpt)
    if "embed.weight" not in txt_sd or "fc.weight" not in img_sd:
        raise CheckpointError(f"{family} checkpoint lacks 'embed.weight' (text) or 'fc.weight' (image)")
    return img_sd, txt_sd, opt
