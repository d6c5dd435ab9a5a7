"""``vsrt calibrate``: FP16 and INT8 ONNX for every stage of a model directory, checked by the accuracy guard.

For each stage with an FP32 ONNX file:

* ``fp16`` → ``onnx/<stage>.fp16.onnx`` (:mod:`vsrt.calibration.fp16`), parity vs FP32 recorded;
* ``int8`` → statistics (``calibration/<stage>.<method>.json``), the TensorRT 10 cache
  (``calibration/<stage>.trt10.cache``) and ``onnx/<stage>.int8.onnx`` (:mod:`vsrt.calibration.int8`), parity
  recorded.

Then, when the model has ``visual`` and ``text`` stages and eval data is given, the accuracy guard measures the
retrieval drop per precision; a failing precision goes through the sensitivity pass and, if it still fails, is
refused: its files are removed, nothing is registered, and :class:`~vsrt.errors.AccuracyBudgetError` is raised
after the manifest (with the failing report) is saved.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from vsrt.calibration.compare import compare_graphs
from vsrt.calibration.detector import DETECTOR_STAGES
from vsrt.calibration.detector import fp16_keep_nodes as detector_fp16_keep
from vsrt.calibration.detector import int8_exclude_nodes as detector_int8_exclude
from vsrt.calibration.fp16 import FP16_GUARD_REASON, convert_fp16
from vsrt.calibration.guard import (
    EMBED_STAGES,
    AccuracyGuard,
    Candidate,
    EvalSet,
    format_failure,
    load_eval_set,
    sensitivity_pass,
)
from vsrt.calibration.int8 import (
    INT8_GUARD_REASON,
    CalibrationStats,
    collect_stats,
    quantizable_nodes,
    quantize_int8,
)
from vsrt.calibration.sources import (
    CalibrationSource,
    CaptionSource,
    DSRANImageSource,
    ImageFolderSource,
    RandomSource,
    RegionFeatureSource,
    StageDataError,
    split_source,
)
from vsrt.calibration.trt10_cache import DEFAULT_TRT_VERSION, write_calibration_cache
from vsrt.errors import AccuracyBudgetError, InputError
from vsrt.manifest import Manifest

#: heavy op types the FP16 sensitivity pass may return to FP32
FP16_CANDIDATE_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "GRU", "LSTM", "RNN", "Einsum")


@dataclass
class CalibrateOptions:
    """What ``vsrt calibrate`` does (see its ``--help``)."""

    precisions: tuple[str, ...] = ("fp16", "int8")
    stages: list[str] | None = None
    data_dir: Path | None = None
    calib_split: str = "train"
    eval_split: str = "test"
    images: Path | None = None
    features: Path | None = None
    captions: Path | None = None
    count: int = 256
    seed: int = 0
    batch_size: int = 16
    method: str = "minmax"
    percentile: float = 99.999
    budget: float = 1.0
    guard: bool = True
    sensitivity: bool = True
    max_fallback: int | None = None
    eval_images: int | None = None
    trt_version: str = DEFAULT_TRT_VERSION
    threads: int | None = None
    random_inputs: bool = False
    keep_fp32_nodes: dict[str, list[str]] = field(default_factory=dict)
    exclude_int8_nodes: dict[str, list[str]] = field(default_factory=dict)


def _rel(stage: str, precision: str) -> str:
    return f"onnx/{stage}.{precision}.onnx"


class Calibrator:
    """Carries one ``vsrt calibrate`` run over a model directory (see the module docstring)."""

    def __init__(self, model_dir: str | Path, options: CalibrateOptions, log: Callable[[str], None] | None = None):
        from vsrt.modeldir import open_manifest, read_model_info

        self.model_dir = Path(model_dir)
        self.opt = options
        self.log = log or (lambda _m: None)
        self.manifest: Manifest = open_manifest(self.model_dir)
        have = [s for s, st in self.manifest.stages.items() if "fp32" in st.files]
        if not have:
            raise InputError(f"{self.model_dir} has no FP32 ONNX files; run `vsrt export` first")
        stages = options.stages or have
        for s in stages:
            if s not in have:
                raise InputError(f"stage '{s}' has no FP32 ONNX file (stages with one: {', '.join(have)})")
        self.stages = stages
        for p in options.precisions:
            if p not in ("fp16", "int8"):
                raise InputError(f"calibrate makes fp16 and int8 graphs, not '{p}'")
        self._sources: dict[tuple[str, str], CalibrationSource | None] = {}
        #: why a stage has no data, ``{stage: message}`` (set while looking for its source)
        self._no_data: dict[str, str] = {}
        self.family = read_model_info(self.model_dir).family
        self.eval_set: EvalSet | None = None

    # ------------------------------------------------------------------ data
    def fp32_path(self, stage: str) -> Path:
        return self.manifest.file_path(self.model_dir, stage, "fp32")

    def source(self, stage: str, purpose: str) -> CalibrationSource | None:
        """The data for ``stage``: ``purpose`` is ``calib`` (calibration split) or ``eval`` (held-out split)."""
        key = (stage, purpose)
        if key in self._sources:
            return self._sources[key]
        o = self.opt
        spec = self.manifest.stage(stage).inputs
        src: CalibrationSource | None = None
        count = o.count if purpose == "calib" else min(o.count, 64)
        seed = o.seed if purpose == "calib" else o.seed + 1
        dsran = self.family.startswith("dsran")
        if o.random_inputs:
            src = self._random_source(stage, count, seed)
        elif stage == "visual" and o.features is not None and purpose == "calib" and not dsran:
            src = RegionFeatureSource(o.features, count, seed, o.batch_size, stage, spec[0].name,
                                      [int(d) for d in spec[0].shape[1:]])
        elif stage == "text" and o.captions is not None and purpose == "calib":
            src = CaptionSource.from_model_dir(o.captions, self.model_dir, stage, count=count, seed=seed,
                                               batch_size=max(o.batch_size, 32))
        elif o.data_dir is not None and (src := self._split_source(stage, purpose, count, seed)) is not None:
            pass
        elif stage == "pair_scorer":
            self._no_data.setdefault(stage, "stage 'pair_scorer' takes the outputs of the visual and text stages: "
                                            "give --data DIR (a split's region features and captions)")
        elif o.images is not None and dsran and stage in ("grid", "visual"):
            src = DSRANImageSource(o.images, self.model_dir, stage, count, seed, min(o.batch_size, 8))
        elif o.images is not None:
            src = ImageFolderSource(o.images, self.model_dir, stage, count, seed, min(o.batch_size, 8))
        elif dsran and stage == "visual" and o.features is not None:
            self._no_data.setdefault(stage, "DSRAN's visual stage takes grid tokens and regions (and region "
                                            "encodings), not --features alone: give --data DIR or --images DIR")
        self._sources[key] = src
        return src

    def _split_source(self, stage: str, purpose: str, count: int, seed: int) -> CalibrationSource | None:
        """``--data DIR``'s split for ``stage``, or None (reason kept) when a split cannot feed the stage."""
        o = self.opt
        split = o.calib_split if purpose == "calib" else o.eval_split
        try:
            return split_source(o.data_dir, split, stage, self.model_dir, count, seed, o.batch_size)
        except StageDataError as exc:
            self._no_data.setdefault(stage, str(exc))
            return None

    def no_data_error(self, stages: list[str]) -> InputError:
        """The error for stages without calibration data, with each stage's reason where one is known."""
        reasons = [self._no_data[s] for s in stages if s in self._no_data]
        generic = [s for s in stages if s not in self._no_data]
        parts = []
        if generic:
            parts.append(f"no calibration data for stage(s) {', '.join(repr(s) for s in generic)}: give --data DIR "
                         "(SCAN layout) for visual/text/pair_scorer, --features/--captions, or --images DIR")
        return StageDataError("; ".join(parts + reasons))

    def parity_batches(self, stage: str) -> list[dict[str, Any]]:
        """Held-out batches (or calibration batches, or random inputs) on which parity is measured."""
        src = self.source(stage, "eval") or self.source(stage, "calib")
        if src is None:
            src = self._random_source(stage, 16, self.opt.seed + 2)
        return list(islice(src.batches(), 4))

    def _random_source(self, stage: str, count: int, seed: int) -> RandomSource:
        """Random inputs for ``stage`` (ids below the model's vocabulary size)."""
        from vsrt.modeldir import read_model_info

        vocab = int(read_model_info(self.model_dir).config.get("vocab_size", 1000))
        return RandomSource(stage, self.manifest.stage(stage).inputs, count=count, seed=seed,
                            batch_size=min(self.opt.batch_size, 8), vocab_size=vocab)

    # ------------------------------------------------------------------ graphs
    def make_fp16(self, stage: str, keep: list[str] | None = None, register: bool = True) -> dict[str, Any]:
        keep = list(keep if keep is not None else self.opt.keep_fp32_nodes.get(stage, []))
        info = convert_fp16(self.fp32_path(stage), self.model_dir / _rel(stage, "fp16"),
                            keep_fp32_nodes=self._with_stage_rules(stage, keep, "fp16"))
        if register:
            parity = compare_graphs(self.fp32_path(stage), self.model_dir / _rel(stage, "fp16"),
                                    self.parity_batches(stage), threads=self.opt.threads)
            self.manifest.add_file(self.model_dir, stage, "fp16", _rel(stage, "fp16"), parity=parity,
                                   fp32_nodes=sorted(info["fp32_nodes"]), casts=info["casts"],
                                   converter=info["converter"])
        return info

    def _with_stage_rules(self, stage: str, nodes: list[str], precision: str) -> dict[str, str]:
        """``nodes`` (measured or named; kept at higher precision) plus the stage's own rules for ``precision``
        (the detector's RoI coordinates in FP32, its box predictor in float at INT8), as ``{node: reason}``."""
        out: dict[str, str] = {}
        if stage in DETECTOR_STAGES:
            import onnx

            rules = detector_fp16_keep if precision == "fp16" else detector_int8_exclude
            out.update(rules(stage, onnx.load(str(self.fp32_path(stage)), load_external_data=False)))
        reason = FP16_GUARD_REASON if precision == "fp16" else INT8_GUARD_REASON
        out.update(dict.fromkeys((n for n in nodes if n not in out), reason))
        return out

    def stats(self, stage: str) -> CalibrationStats:
        """Collect (once) and save the stage's activation statistics and its TensorRT 10 cache."""
        if not hasattr(self, "_stats"):
            self._stats: dict[str, CalibrationStats] = {}
        if stage not in self._stats:
            src = self.source(stage, "calib")
            if src is None:
                raise self.no_data_error([stage])
            self.log(f"{stage}: calibrating ({self.opt.method}, {src.num_samples} samples)")
            stats = collect_stats(self.fp32_path(stage), src, self.opt.method, self.opt.percentile)
            stats.save(self.model_dir / f"calibration/{stage}.{self.opt.method}.json")
            write_calibration_cache(self.model_dir / f"calibration/{stage}.trt10.cache", stats, self.opt.trt_version)
            self._stats[stage] = stats
        return self._stats[stage]

    def make_int8(self, stage: str, exclude: list[str] | None = None, register: bool = True) -> dict[str, Any]:
        exclude = list(exclude if exclude is not None else self.opt.exclude_int8_nodes.get(stage, []))
        stats = self.stats(stage)
        info = quantize_int8(self.fp32_path(stage), self.model_dir / _rel(stage, "int8"), stats,
                             self._with_stage_rules(stage, exclude, "int8"))
        if register:
            parity = compare_graphs(self.fp32_path(stage), self.model_dir / _rel(stage, "int8"),
                                    self.parity_batches(stage), threads=self.opt.threads)
            self.manifest.add_file(
                self.model_dir, stage, "int8", _rel(stage, "int8"), parity=parity,
                quantized_nodes=info["quantized_nodes"], excluded=info["excluded"], qdq_nodes=info["qdq_nodes"],
                method=stats.method, settings=info["settings"],
                statistics=f"calibration/{stage}.{stats.method}.json",
                trt10_cache=f"calibration/{stage}.trt10.cache",
            )
        return info

    def candidates(self, precision: str) -> list[Candidate]:
        import onnx

        from vsrt.calibration.fp16 import ensure_node_names

        out = []
        for stage in EMBED_STAGES:
            if stage not in self.stages:
                continue
            if precision == "int8":
                nodes = quantizable_nodes(onnx.load(str(self.fp32_path(stage))))
                nodes = [n for n in nodes if n not in self.opt.exclude_int8_nodes.get(stage, [])]
            else:
                m = onnx.load(str(self.fp32_path(stage)), load_external_data=False)
                ensure_node_names(m)
                nodes = [n.name for n in m.graph.node if n.op_type in FP16_CANDIDATE_OPS]
            out.extend(Candidate(stage, n) for n in nodes)
        return out

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        o = self.opt
        results: dict[str, Any] = {}
        if "int8" in o.precisions:  # fail before writing anything when INT8 has no data to calibrate on
            missing = [s for s in self.stages if self.source(s, "calib") is None]
            if missing:
                raise self.no_data_error(missing)
        guard = None
        if o.guard and all(s in self.stages for s in EMBED_STAGES) and o.data_dir is not None:
            self.eval_set = load_eval_set(o.data_dir, o.eval_split, o.eval_images)
            guard = AccuracyGuard(self.model_dir, self.eval_set, o.budget, o.threads, self.manifest)
        elif o.guard:
            self.log("accuracy guard skipped: it needs the visual and text stages and --data DIR with an eval split")
        refused: list[str] = []
        for precision in o.precisions:
            t0 = time.perf_counter()
            for stage in self.stages:
                self.log(f"{stage}: writing {precision} ONNX")
                (self.make_fp16 if precision == "fp16" else self.make_int8)(stage)
            entry: dict[str, Any] = {"stages": {}, "seconds": None}
            for stage in self.stages:
                sf = self.manifest.stage(stage).files[precision]
                entry["stages"][stage] = {"file": sf.path, "min_cosine": sf.parity.get("min_cosine")}
            if precision == "int8":
                entry.update({"method": o.method, "count": o.count, "seed": o.seed, "trt_cache_version": o.trt_version,
                              "sources": {s: self._stats[s].source for s in self.stages if s in self._stats}})
            if guard is not None:
                report = guard.evaluate({s: precision for s in EMBED_STAGES})
                self.log(f"{precision}: R@1 drop {report.r1_drop:.2f} points (budget {o.budget})")
                sens = None
                if not report.passed and o.sensitivity:
                    self.log(f"{precision}: over budget; sensitivity pass")
                    sens = self._sensitivity(guard, precision)
                    report = sens.pop("report")
                entry["guard"] = report.to_json()
                if sens is not None:
                    entry["sensitivity"] = sens
                    for stage, nodes in sens["kept_higher_precision"].items():
                        self.manifest.stage(stage).files[precision].extra["kept_higher_precision"] = nodes
                if not report.passed:
                    refused.append(precision)
                    entry["refused"] = format_failure(report, precision)
                    for stage in self.stages:
                        self.manifest.stage(stage).files.pop(precision, None)
                        with contextlib.suppress(FileNotFoundError):
                            (self.model_dir / _rel(stage, precision)).unlink()
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            self.manifest.calibration[precision] = entry
            results[precision] = entry
        self.manifest.save(self.model_dir)
        if refused:
            msgs = [results[p]["refused"] for p in refused]
            raise AccuracyBudgetError("; ".join(msgs))
        return results

    def _sensitivity(self, guard: AccuracyGuard, precision: str) -> dict[str, Any]:
        cands = self.candidates(precision)
        stages = sorted({c.stage for c in cands})
        base_excl = self.opt.exclude_int8_nodes if precision == "int8" else self.opt.keep_fp32_nodes

        def rebuild(stage: str, kept: list[str]) -> None:
            allk = list(dict.fromkeys([*base_excl.get(stage, []), *kept]))
            if precision == "int8":
                self.make_int8(stage, allk, register=False)
            else:
                self.make_fp16(stage, allk, register=False)
            self.manifest.add_file(self.model_dir, stage, precision, _rel(stage, precision))  # new checksum

        probe = {}
        for s in stages:
            src = self.source(s, "eval") or self.source(s, "calib")
            probe[s] = list(islice(src.batches(), 2)) if src is not None else self.parity_batches(s)[:2]
        sens = sensitivity_pass(
            guard, precision, cands, rebuild, probe,
            {s: self.fp32_path(s) for s in stages}, {s: self.model_dir / _rel(s, precision) for s in stages},
            self.opt.max_fallback, self.log,
        )
        # re-register the final graphs with fresh checksums and parity
        for stage in stages:
            kept = sens["kept_higher_precision"].get(stage, [])
            allk = list(dict.fromkeys([*base_excl.get(stage, []), *kept]))
            (self.make_int8 if precision == "int8" else self.make_fp16)(stage, allk)
        return sens


def calibrate_model(
    model_dir: str | Path, options: CalibrateOptions | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run ``vsrt calibrate`` on ``model_dir``; returns the manifest's new ``calibration`` entries."""
    return Calibrator(model_dir, options or CalibrateOptions(), log).run()
