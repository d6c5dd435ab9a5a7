"""Accuracy guard: a reduced-precision model must keep its retrieval recall.

:class:`AccuracyGuard` embeds a held-out split (SCAN layout: ``{split}_ims.npy``, ``{split}_caps.txt``, five captions
per image) with the FP32 graphs and with a candidate precision through ONNX Runtime CPU, and reports

* per-stage embedding cosine vs FP32 (min and mean over items),
* Recall@1/5/10 in both directions (``vsrt.eval.metrics.evaluate``) and their drop in points vs FP32,

and whether the worst R@1 drop (image→text or text→image) is within the budget.

:func:`sensitivity_pass` is what runs when it is not: it measures, for each candidate layer, the embedding error
when only that layer is in reduced precision, then returns the most harmful layers to higher precision one at a
time (re-building the stage graph through a caller-supplied function) until the budget holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.calibration.compare import output_error, per_sample_cosine
from vsrt.errors import InputError
from vsrt.manifest import Manifest

#: the metric keys whose drop is reported (percent points)
RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
#: the stages the guard embeds with
EMBED_STAGES = ("visual", "text")


@dataclass
class EvalSet:
    """Held-out images (region features) and their captions (``captions_per_image`` per image, in order), with
    DSRAN's optional per-image ``grid`` tokens and ``region_pos`` encodings (None when the split has none)."""

    images: np.ndarray
    captions: list[str]
    name: str = ""
    captions_per_image: int = 5
    grid: np.ndarray | None = None
    region_pos: np.ndarray | None = None

    def head(self, n_images: int | None) -> EvalSet:
        """The first ``n_images`` images with their captions (everything when ``None``)."""
        if n_images is None or n_images >= len(self.images):
            return self
        k = self.captions_per_image
        return EvalSet(self.images[:n_images], self.captions[: n_images * k], f"{self.name}[:{n_images}]", k,
                       None if self.grid is None else self.grid[:n_images],
                       None if self.region_pos is None else self.region_pos[:n_images])


def load_eval_set(data_dir: str | Path, split: str = "test", max_images: int | None = None) -> EvalSet:
    """A SCAN-layout split as an :class:`EvalSet` (through :func:`vsrt.data.precomp.load_precomp`), with DSRAN's
    optional ``{split}_grid.npy`` / ``{split}_region_pos.npy`` (:func:`vsrt.runtime.dsran.load_dsran_extras`)."""
    from vsrt.data.precomp import load_precomp
    from vsrt.runtime.dsran import load_dsran_extras

    data = load_precomp(data_dir, split)
    images = np.asarray(data.images)
    captions = list(data.captions)
    if len(images) == 0:
        raise InputError(f"split '{split}' in {data_dir} has no images")
    per = len(captions) // len(images)
    if per < 1 or per * len(images) != len(captions):
        raise InputError(
            f"split '{split}' in {data_dir}: {len(captions)} captions for {len(images)} images is not a whole number "
            "of captions per image"
        )
    grid, region_pos = load_dsran_extras(data_dir, split, len(images))
    return EvalSet(images, captions, f"{Path(data_dir).name}/{split}", per, grid, region_pos).head(max_images)


@dataclass
class GuardReport:
    """One candidate precision measured against FP32."""

    precisions: dict[str, str]
    metrics: dict[str, float]
    fp32_metrics: dict[str, float]
    drop: dict[str, float]
    cosine: dict[str, dict[str, float]]
    budget: float
    images: int
    captions: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def r1_drop(self) -> float:
        """Worst R@1 drop in points over both directions (positive = worse than FP32)."""
        return max(self.drop["i2t_r1"], self.drop["t2i_r1"])

    @property
    def passed(self) -> bool:
        return self.r1_drop <= self.budget

    def to_json(self) -> dict[str, Any]:
        return {
            "precisions": self.precisions,
            "eval_images": self.images,
            "eval_captions": self.captions,
            "fp32": {k: self.fp32_metrics[k] for k in RECALL_KEYS},
            "candidate": {k: self.metrics[k] for k in RECALL_KEYS},
            "drop_points": self.drop,
            "r1_drop": self.r1_drop,
            "budget_r1_points": self.budget,
            "passed": self.passed,
            "embedding_cosine": self.cosine,
            **self.extra,
        }


class AccuracyGuard:
    """Measures candidate precisions of a model directory against its FP32 graphs on one :class:`EvalSet`.

    Args:
        model_dir: the model directory.
        data: the held-out split.
        budget: largest allowed R@1 drop in points (default 1.0).
        threads: ONNX Runtime intra-op threads (``None``: its default).
        manifest: the manifest to read stage files from (default: the one on disk) — ``vsrt calibrate`` passes
            its in-memory manifest, which lists the new graphs before it is saved.
    """

    def __init__(
        self,
        model_dir: str | Path,
        data: EvalSet,
        budget: float = 1.0,
        threads: int | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.data = data
        self.budget = float(budget)
        self.threads = threads
        self._fp32: dict[str, np.ndarray] | None = None
        self._fp32_metrics: dict[str, float] | None = None

    def embed(self, precisions: dict[str, str]) -> dict[str, np.ndarray]:
        """``{"visual": [N, D], "text": [5N, D]}`` with each stage at the given precision (default fp32)."""
        from vsrt.runtime.backends.factory import create_backend
        from vsrt.runtime.model import RetrievalModel

        model = RetrievalModel(self.model_dir, backend="onnxruntime", precision="fp32")
        if self.manifest is not None:
            model.manifest = self.manifest
        for stage in EMBED_STAGES:
            model.manifest.stage(stage)
            model.backends[stage] = create_backend(
                self.model_dir, model.manifest, stage, "onnxruntime", precisions.get(stage, "fp32"),
                intra_op_threads=self.threads,
            )
        if model.family.startswith("dsran"):
            return self._embed_dsran(model)
        img = model.encode_regions(np.asarray(self.data.images, np.float32), batch_size=32)
        txt = model.encode_texts(self.data.captions, batch_size=128)
        return {"visual": img, "text": txt}

    def _embed_dsran(self, model: Any) -> dict[str, np.ndarray]:
        """DSRAN through :mod:`vsrt.runtime.dsran`, with the substitutes of its precomputed-data evaluation (grid
        tokens derived from the regions, zero region encodings) where the split has no file."""
        from vsrt.runtime.dsran import encode_dsran_regions, encode_dsran_texts, precomputed_visual_inputs

        regions = np.asarray(self.data.images, np.float32)
        specs = {s.name: s.shape for s in model.manifest.stage("visual").inputs}
        grid, pos = precomputed_visual_inputs(specs, regions, self.data.grid, self.data.region_pos)
        img = encode_dsran_regions(model, grid, regions, pos, batch_size=32)
        txt = encode_dsran_texts(model, self.data.captions, batch_size=128)
        return {"visual": img, "text": txt}

    @property
    def fp32(self) -> dict[str, np.ndarray]:
        if self._fp32 is None:
            self._fp32 = self.embed({})
        return self._fp32

    @property
    def fp32_metrics(self) -> dict[str, float]:
        if self._fp32_metrics is None:
            self._fp32_metrics = recall(self.fp32["visual"], self.fp32["text"], self.data.captions_per_image)
        return self._fp32_metrics

    def evaluate(self, precisions: dict[str, str]) -> GuardReport:
        """Embed with ``precisions`` (``{stage: precision}``) and compare with FP32."""
        emb = self.embed(precisions)
        metrics = recall(emb["visual"], emb["text"], self.data.captions_per_image)
        base = self.fp32_metrics
        cos = {}
        for stage in EMBED_STAGES:
            c = per_sample_cosine(self.fp32[stage], emb[stage])
            cos[stage] = {"min": float(c.min()), "mean": float(c.mean())}
        drop = {k: float(base[k] - metrics[k]) for k in RECALL_KEYS}
        return GuardReport(
            {s: precisions.get(s, "fp32") for s in EMBED_STAGES}, metrics, base, drop, cos, self.budget,
            len(self.data.images), len(self.data.captions),
        )


def recall(images: np.ndarray, texts: np.ndarray, per_image: int = 5) -> dict[str, float]:
    """Original-protocol retrieval metrics of L2-normalised embeddings (``vsrt.eval.metrics.evaluate``)."""
    from vsrt.eval.metrics import evaluate

    sims = np.asarray(images, np.float32) @ np.asarray(texts, np.float32).T
    return {k: float(v) for k, v in evaluate(sims, per_image).items()}


def format_failure(report: GuardReport, precision: str) -> str:
    """The one-line message of a refused precision."""
    d = report.drop
    return (
        f"{precision} loses {report.r1_drop:.2f} R@1 points vs fp32 (image→text {d['i2t_r1']:+.2f}, text→image "
        f"{d['t2i_r1']:+.2f} drop; budget {report.budget:.2f}) on {report.images} held-out images; "
        f"nothing was written for {precision}. Try another --method, more --count, a larger --budget, "
        "or keep the sensitivity pass on"
    )


@dataclass
class Candidate:
    """A layer that can go back to higher precision: ``stage`` and ONNX ``node`` name."""

    stage: str
    node: str


def sensitivity_pass(
    guard: AccuracyGuard,
    precision: str,
    candidates: Sequence[Candidate],
    rebuild: Callable[[str, list[str]], None],
    probe: dict[str, list[dict[str, np.ndarray]]],
    reference_paths: dict[str, Path],
    candidate_paths: dict[str, Path],
    max_fallback: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Return the most harmful layers to higher precision until the guard's budget holds.

    Args:
        guard: the accuracy guard (its FP32 embeddings are reused).
        precision: the reduced precision being repaired (``fp16`` or ``int8``).
        candidates: layers currently in reduced precision that may go back.
        rebuild: ``rebuild(stage, kept_back)`` rewrites ``candidate_paths[stage]`` with ``precision`` everywhere
            except the listed node names (and the always-excluded ones).
        probe: per stage, a few input batches on which per-layer harm is measured.
        reference_paths / candidate_paths: the FP32 and reduced-precision ONNX file per stage.
        max_fallback: stop after this many layers (default: all candidates).

    Returns ``{"harm": [...], "steps": [...], "kept_higher_precision": {stage: [...]}, "passed": bool,
    "report": GuardReport json}``.
    """
    say = log or (lambda _m: None)
    by_stage: dict[str, list[str]] = {}
    for c in candidates:
        by_stage.setdefault(c.stage, []).append(c.node)
    refs = {s: _run_all(reference_paths[s], probe[s], guard.threads) for s in by_stage}
    harm: list[tuple[float, Candidate]] = []
    for stage, nodes in by_stage.items():
        for node in nodes:
            others = [n for n in nodes if n != node]
            rebuild(stage, others)  # only `node` in reduced precision
            got = _run_all(candidate_paths[stage], probe[stage], guard.threads)
            err = float(np.mean([output_error(r, g) for r, g in zip(refs[stage], got)]))
            harm.append((err, Candidate(stage, node)))
            say(f"  sensitivity {stage}/{node}: 1-cos {err:.2e}")
    harm.sort(key=lambda t: -t[0])
    limit = len(harm) if max_fallback is None else min(max_fallback, len(harm))
    kept: dict[str, list[str]] = {s: [] for s in by_stage}
    steps = []
    report = None
    precs = {s: precision for s in EMBED_STAGES}
    for k in range(1, limit + 1):  # the caller already knows everything-reduced fails
        cand = harm[k - 1][1]
        kept[cand.stage].append(cand.node)
        for stage in by_stage:
            rebuild(stage, kept[stage])
        report = guard.evaluate(precs)
        steps.append({"kept_higher_precision": k, "r1_drop": report.r1_drop, "added": f"{cand.stage}/{cand.node}"})
        say(f"  with {k} layer(s) back in higher precision: R@1 drop {report.r1_drop:.2f}")
        if report.passed:
            break
    if report is None:  # no candidate layer at all: nothing can go back
        for stage in by_stage:
            rebuild(stage, [])
        report = guard.evaluate(precs)
    return {
        "harm": [{"stage": c.stage, "node": c.node, "error": e} for e, c in harm],
        "steps": steps,
        "kept_higher_precision": {s: v for s, v in kept.items() if v},
        "passed": report.passed,
        "report": report,
    }


def _run_all(path: Path, batches: list[dict[str, np.ndarray]], threads: int | None) -> list[dict[str, np.ndarray]]:
    from vsrt.runtime.backends.onnxruntime_backend import OrtBackend

    b = OrtBackend(path, intra_op_threads=threads)
    return [b.run(f) for f in batches]
