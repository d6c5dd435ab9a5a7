"""``vsrt profile``: where the time goes, per stage, per batch size and precision. No torch.

Method (trtexec's defaults and metric names): each measurement first runs its stage for ``warmup_s`` (200 ms,
at least 2 runs), then repeatedly for ``duration_s`` (3 s) and at least ``min_iterations`` (10) runs; every run is
timed on the host with ``time.perf_counter`` (GPU work is synchronised inside each run). Reported per stage and
batch: min / mean / median / p90 / p95 / p99 / max latency in ms (nearest-rank percentiles) and throughput
(items per second = batch / mean latency).

Stages measured (those the model has):

* ``tokenize`` — the host text preprocessing (caption → token ids) for ``batch`` captions;
* every graph stage in the manifest through its backend's ``run`` (``visual`` = the reasoner, ``text``,
  ``pair_scorer``, the detector's ``backbone_rpn`` and ``roi_head``), on inputs made from the stage's input specs:
  the batch dimension → the requested batch, other symbolic dimensions → the spec's ``opt`` shape from the
  manifest when it has one, else :data:`DEFAULT_DIMS` (text length 12, …); integer inputs get valid values
  (token ids inside the vocabulary, lengths = the sequence length, masks of ones);
* ``detector`` — the whole detector on synthetic images (preprocessing, both graphs and the host proposal /
  selection steps), with its per-step split when the detector reports one (``last_timings``);
* ``search`` — exact top-10 of ``batch`` queries over a gallery (``--gallery`` or a synthetic FP16 one of
  ``gallery_size`` items);
* for TensorRT backends, ``<stage>:h2d`` / ``<stage>:compute`` / ``<stage>:d2h`` — the same run with a
  stream synchronisation after each phase (so the phases add up to slightly more than the plain run).

The report carries device and software metadata (:func:`vsrt.runtime.doctor.system_metadata`) and is written as
JSON; :func:`plot` draws latency vs batch and the stage breakdown to a PNG (matplotlib, only if installed).
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import InputError
from vsrt.manifest import TensorSpec

#: values for symbolic dimensions without an ``opt`` shape in the manifest, by (sub)name
DEFAULT_DIMS = {"seq": 12, "len": 12, "words": 12, "tokens": 12, "time": 12, "regions": 36, "height": 600,
                "width": 800, "h": 600, "w": 800, "k": 36}
DEFAULT_WARMUP_S = 0.2
DEFAULT_DURATION_S = 3.0
DEFAULT_MIN_ITERATIONS = 10
PERCENTILES = (90, 95, 99)
#: words used for synthetic captions (looked up in the model's vocabulary when it has one)
_CAPTION_WORDS = ("a", "man", "riding", "a", "red", "bike", "on", "the", "beach", "next", "to", "a", "dog")


def stats(times_ms: Sequence[float], batch: int = 1) -> dict[str, float]:
    """min / mean / median / p90 / p95 / p99 / max (ms, nearest-rank percentiles), throughput and count."""
    t = np.sort(np.asarray(times_ms, np.float64))
    if not len(t):
        raise InputError("no timings to summarise")

    def pct(p: float) -> float:
        return float(t[max(0, math.ceil(p / 100 * len(t)) - 1)])

    mean = float(t.mean())
    out = {"min_ms": float(t[0]), "mean_ms": mean, "median_ms": float(np.median(t))}
    out.update({f"p{p}_ms": pct(p) for p in PERCENTILES})
    out.update({"max_ms": float(t[-1]), "throughput_per_s": batch / (mean / 1e3) if mean > 0 else float("inf"),
                "iterations": len(t)})
    return out


def measure(fn: Callable[[], Any], warmup_s: float = DEFAULT_WARMUP_S, duration_s: float = DEFAULT_DURATION_S,
            min_iterations: int = DEFAULT_MIN_ITERATIONS, max_iterations: int = 100_000) -> list[float]:
    """Warm ``fn`` up for ``warmup_s`` (≥ 2 runs), then time it for ``duration_s`` (≥ ``min_iterations`` runs).
    Returns per-run latencies in ms."""
    start = time.perf_counter()
    runs = 0
    while runs < 2 or time.perf_counter() - start < warmup_s:
        fn()
        runs += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iterations and (len(times) < min_iterations or time.perf_counter() - start < duration_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _dim_value(name: str, spec: TensorSpec, axis: int, batch: int, dims: dict[str, int]) -> int:
    d = spec.shape[axis]
    if isinstance(d, int) and d >= 0:
        return d
    if axis == 0 or str(d).lower() in ("batch", "n", "b", "batch_size"):
        return batch
    if spec.opt is not None and axis < len(spec.opt):
        return int(spec.opt[axis])
    key = str(d).lower()
    for sub, v in dims.items():
        if sub == key or sub in key:
            return v
    raise InputError(
        f"input '{name}' has symbolic dimension '{d}' (axis {axis}) with no opt shape in the manifest and no default; "
        f"pass it with --dim {d}=N"
    )


def make_feeds(specs: Sequence[TensorSpec], batch: int, dims: dict[str, int] | None = None, vocab_size: int = 100,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one run of a stage: shapes from ``specs`` (batch → ``batch``), values valid for their role."""
    rng = np.random.default_rng(seed)
    dims = {**DEFAULT_DIMS, **(dims or {})}
    feeds: dict[str, np.ndarray] = {}
    shapes = {s.name: [_dim_value(s.name, s, i, batch, dims) for i in range(len(s.shape))] for s in specs}
    seq = next((shapes[s.name][1] for s in specs if s.name in ("tokens", "input_ids") and len(s.shape) > 1), None)
    for s in specs:
        shape = shapes[s.name]
        dt = np.dtype(s.dtype) if s.dtype in ("float32", "float16", "int64", "int32", "int8", "uint8", "bool",
                                               "float64") else np.dtype(np.float32)
        lname = s.name.lower()
        if dt.kind == "f":
            if "image" in lname or "pixel" in lname:
                a = rng.uniform(-120, 130, shape)
            elif "region" in lname:
                a = np.maximum(rng.standard_normal(shape), 0)  # non-negative like bottom-up features
            else:
                a = rng.standard_normal(shape)
            feeds[s.name] = a.astype(dt)
        elif dt.kind in "iu":
            if "len" in lname:
                full = seq if seq is not None else (shape[-1] if shape else 1)
                feeds[s.name] = np.full(shape, full, dt)
            elif "mask" in lname:
                feeds[s.name] = np.ones(shape, dt)
            elif "type" in lname:
                feeds[s.name] = np.zeros(shape, dt)
            elif "token" in lname or "ids" in lname or "word" in lname:
                a = rng.integers(4, max(5, vocab_size), shape)
                if len(shape) == 2 and shape[1] >= 2:
                    a[:, 0], a[:, -1] = 1, 2  # <start> … <end>
                feeds[s.name] = a.astype(dt)
            else:
                feeds[s.name] = rng.integers(0, 2, shape).astype(dt)
        else:
            feeds[s.name] = np.ones(shape, dt)
    return feeds


@dataclass
class ProfileReport:
    """Results of one profile: one row per (stage, precision, batch), settings and metadata."""

    model_dir: str
    family: str
    backend: str
    settings: dict[str, Any]
    metadata: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def add(self, stage: str, precision: str, batch: int, times_ms: list[float], **extra: Any) -> dict[str, Any]:
        row = {"stage": stage, "precision": precision, "batch": batch, **stats(times_ms, batch), **extra}
        self.results.append(row)
        return row

    def skip(self, stage: str, precision: str, batch: int | None, reason: str) -> None:
        self.skipped.append({"stage": stage, "precision": precision, "batch": batch, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "family": self.family, "backend": self.backend,
                "settings": self.settings, "metadata": self.metadata, "results": self.results,
                "skipped": self.skipped}


# ---------------------------------------------------------------------------------------------------- TensorRT phases
def tensorrt_phases(backend: Any, feeds: dict[str, np.ndarray]) -> Callable[[], dict[str, float]] | None:
    """For a TensorRT backend, a function running ``feeds`` once with a sync after each phase; returns
    ``{"h2d": ms, "compute": ms, "d2h": ms}``. ``None`` for other backends."""
    needed = ("cuda", "context", "stream", "host", "device", "dtypes", "_execute")
    if getattr(backend, "name", "") != "tensorrt" or not all(hasattr(backend, a) for a in needed):
        return None
    cuda, ctx = backend.cuda, backend.context
    arrays = {s.name: np.ascontiguousarray(feeds[s.name], dtype=backend.dtypes[s.name]) for s in backend.inputs}

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        for name, a in arrays.items():
            host = backend.host[name]
            host[: a.nbytes] = a.reshape(-1).view(np.uint8)
            cuda.h2d(backend.device[name], host[: a.nbytes], backend.stream)
            ctx.set_input_shape(name, a.shape)
        cuda.sync(backend.stream)
        t1 = time.perf_counter()
        backend._execute(cuda.handle(backend.stream))
        cuda.sync(backend.stream)
        t2 = time.perf_counter()
        for spec in backend.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * backend.dtypes[spec.name].itemsize
            cuda.d2h(backend.host[spec.name], backend.device[spec.name], nbytes, backend.stream)
        cuda.sync(backend.stream)
        t3 = time.perf_counter()
        return {"h2d": (t1 - t0) * 1e3, "compute": (t2 - t1) * 1e3, "d2h": (t3 - t2) * 1e3}

    return run


def _measure_phases(run: Callable[[], dict[str, float]], warmup_s: float, duration_s: float,
                    min_iterations: int) -> dict[str, list[float]]:
    phases: dict[str, list[float]] = {"h2d": [], "compute": [], "d2h": []}

    def once() -> None:
        for k, v in run().items():
            phases[k].append(v)

    timed = len(measure(once, warmup_s, duration_s, min_iterations))
    return {k: v[-timed:] for k, v in phases.items()}  # the warm-up runs' phases are at the front: dropped


# ---------------------------------------------------------------------------------------------------- profiling
def _stage_batches(spec_list: Sequence[TensorSpec], batches: Sequence[int]) -> tuple[list[int], int | None]:
    """Batches within the stage's profile (max of the first input's first dim), and that max."""
    mx = None
    for s in spec_list:
        if s.max is not None and s.max:
            mx = int(s.max[0]) if mx is None else min(mx, int(s.max[0]))
    return [b for b in batches if mx is None or b <= mx], mx


def profile_model(
    model_dir: str | Path,
    backend: str = "auto",
    precisions: Sequence[str] = ("fp32",),
    batches: Sequence[int] = (1, 8, 32),
    warmup_s: float = DEFAULT_WARMUP_S,
    duration_s: float = DEFAULT_DURATION_S,
    min_iterations: int = DEFAULT_MIN_ITERATIONS,
    stages: Sequence[str] | None = None,
    gallery: str | Path | None = None,
    gallery_size: int = 100_000,
    dims: dict[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
    open_model: Callable[..., Any] | None = None,
) -> ProfileReport:
    """Profile every stage of the model in ``model_dir`` (see the module docstring). ``stages`` limits what is
    measured (names as in the report); ``open_model`` is injectable for tests."""
    from vsrt.runtime.doctor import system_metadata

    if open_model is None:
        from vsrt.runtime.model import open_model
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"batch sizes must be >= 1, got {list(batches)}")
    say = progress or (lambda _msg: None)
    report: ProfileReport | None = None
    for precision in precisions:
        model = open_model(model_dir, backend=backend, precision=precision)
        if report is None:
            report = ProfileReport(
                str(model_dir), str(model.family), backend,
                {"precisions": list(precisions), "batches": batches, "warmup_s": warmup_s, "duration_s": duration_s,
                 "min_iterations": min_iterations, "percentiles": "nearest rank", "timer": "host perf_counter",
                 "gallery": str(gallery) if gallery else f"synthetic fp16, {gallery_size} items",
                 "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
                system_metadata())
            report.metadata["model"] = {"family": model.family,
                                        "config_sha256": getattr(model.manifest, "config_sha256", ""),
                                        "stages": sorted(model.manifest.stages)}
        want = (lambda name: True) if not stages else (lambda name: name in stages)
        _profile_precision(model, report, precision, batches, warmup_s, duration_s, min_iterations, want, dims, say)
        if want("search") and precision == precisions[0]:
            if gallery is None and "visual" not in model.manifest.stages:
                report.skip("search", "-", None, "the model has no visual stage (no embedding dimension) and no "
                            "--gallery was given")
            else:
                _profile_search(model, report, batches, warmup_s, duration_s, min_iterations, gallery, gallery_size,
                                say)
    assert report is not None
    return report


def _vocab_size(model: Any) -> int:
    try:
        return len(model.vocab)
    except Exception:  # no word vocabulary (e.g. BERT wordpiece): ids below 100 exist in every vocabulary
        return 100


def _profile_precision(model: Any, report: ProfileReport, precision: str, batches: list[int], warmup_s: float,
                       duration_s: float, min_iterations: int, want: Callable[[str], bool],
                       dims: dict[str, int] | None, say: Callable[[str], None]) -> None:
    manifest = model.manifest
    timing = (warmup_s, duration_s, min_iterations)
    first = precision == report.settings["precisions"][0]  # host tokenisation does not depend on the precision
    if first and want("tokenize") and "text" in manifest.stages and hasattr(model, "tokenize"):
        for b in batches:
            caps = [" ".join(_CAPTION_WORDS[: 6 + (i % 7)]) for i in range(b)]
            say(f"tokenize ×{b}")
            try:
                report.add("tokenize", "-", b, measure(lambda caps=caps: model.tokenize(caps), *timing),
                           kind="host")
            except Exception as exc:  # noqa: BLE001 - a model without a word vocabulary: say why, go on
                report.skip("tokenize", "-", b, f"{type(exc).__name__}: {exc}")
                break
    for name, st in manifest.stages.items():
        if not want(name):
            continue
        if precision not in st.files:
            report.skip(name, precision, None, f"no {precision} file for stage '{name}'")
            continue
        try:
            backend = model.stage(name)
        except Exception as exc:  # noqa: BLE001 - unavailable backend / missing engine: reported, not fatal
            report.skip(name, precision, None, f"{type(exc).__name__}: {exc}")
            continue
        ok, mx = _stage_batches(st.inputs, batches)
        for b in batches:
            if b not in ok:
                report.skip(name, precision, b, f"batch {b} is above the stage's profile maximum {mx}")
        for b in ok:
            feeds = make_feeds(st.inputs, b, dims, _vocab_size(model))
            say(f"{name} {precision} ×{b}")
            run = backend.run
            report.add(name, precision, b, measure(lambda run=run, feeds=feeds: run(feeds), *timing),
                       kind="graph", backend=getattr(backend, "name", type(backend).__name__),
                       providers=list(getattr(backend, "providers", []) or []),
                       input_shapes={k: list(v.shape) for k, v in feeds.items()})
            phased = tensorrt_phases(backend, feeds)
            if phased is not None:
                for phase, times in _measure_phases(phased, *timing).items():
                    report.add(f"{name}:{phase}", precision, b, times, kind="tensorrt-phase", backend="tensorrt",
                               mode="synchronised after each phase, no CUDA graph")
    if want("detector") and "backbone_rpn" in manifest.stages:
        _profile_detector(model, report, precision, batches, timing, say)


def _profile_detector(model: Any, report: ProfileReport, precision: str, batches: list[int],
                      timing: tuple[float, float, int], say: Callable[[str], None]) -> None:
    try:
        det = model.detector
    except Exception as exc:  # noqa: BLE001
        report.skip("detector", precision, None, f"{type(exc).__name__}: {exc}")
        return
    rng = np.random.default_rng(0)
    for b in batches:
        images = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(b)]
        say(f"detector {precision} ×{b}")
        split: dict[str, list[float]] = {}

        def once(images: list[np.ndarray] = images, split: dict[str, list[float]] = split) -> None:
            det.detect(images)
            for k, v in (getattr(det, "last_timings", None) or {}).items():
                split.setdefault(k, []).append(float(v) * 1e3)

        try:
            times = measure(once, *timing)
        except Exception as exc:  # noqa: BLE001 - e.g. a backend that cannot run the detector here
            report.skip("detector", precision, b, f"{type(exc).__name__}: {exc}")
            continue
        report.add("detector", precision, b, times, kind="pipeline", image_hw=[480, 640])
        for step, t in split.items():
            t = t[-len(times):]
            if t:
                report.add(f"detector:{step}", precision, b, t, kind="detector-step")


def _profile_search(model: Any, report: ProfileReport, batches: list[int], warmup_s: float, duration_s: float,
                    min_iterations: int, gallery: str | Path | None, gallery_size: int,
                    say: Callable[[str], None]) -> None:
    from vsrt.runtime.search import exact_search

    if gallery:
        from vsrt.runtime.gallery import Gallery

        g = Gallery.open(gallery)
        g.check_model(model)
        blocks = list(g.blocks())
        desc = {"items": len(g), "storage": g.storage, "path": str(g.path)}
    else:
        dim = int(model.embed_dim)
        rng = np.random.default_rng(0)
        codes = np.empty((gallery_size, dim), np.float16)
        for lo in range(0, gallery_size, 65536):
            x = rng.standard_normal((min(65536, gallery_size - lo), dim)).astype(np.float32)
            codes[lo : lo + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        blocks = [(0, codes, None)]
        desc = {"items": gallery_size, "storage": "fp16", "path": None}
    dim = blocks[0][1].shape[1] if blocks else int(model.embed_dim)
    for b in batches:
        q = np.random.default_rng(b).standard_normal((b, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        say(f"search ×{b} over {desc['items']} items")
        report.add("search", "-", b, measure(lambda q=q: exact_search(blocks, q, 10), warmup_s, duration_s,
                                             min_iterations), kind="host", gallery=desc, k=10)


# ---------------------------------------------------------------------------------------------------- output
def table(report: ProfileReport) -> Any:
    """A rich table of the results."""
    from rich.table import Table

    t = Table(title=f"vsrt profile: {report.model_dir} ({report.family}, backend {report.backend})",
              title_justify="left")
    cols = ["stage", "prec", "batch", "min", "mean", "median", "p90", "p95", "p99", "max", "items/s", "runs"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("stage", "prec") else "right")
    for r in report.results:
        t.add_row(r["stage"], r["precision"], str(r["batch"]),
                  *(f"{r[k]:.3f}" for k in ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms",
                                             "max_ms")),
                  f"{r['throughput_per_s']:.1f}", str(r["iterations"]))
    return t


def plot(report: ProfileReport, path: str | Path) -> Path | None:
    """Write a PNG: median latency vs batch per stage (p90 as error bar) and the per-batch stage breakdown (stacked
    medians of non-overlapping parts: the detector is shown by its steps).
    Returns ``None`` (after saying why) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    from vsrt.io import atomic_path

    rows = [r for r in report.results if ":" not in r["stage"]]
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(f"{r['stage']} ({r['precision']})" if r["precision"] != "-" else r["stage"], []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["batch"])
        x = [r["batch"] for r in rs]
        y = [r["median_ms"] for r in rs]
        err = [[0] * len(rs), [r["p90_ms"] - r["median_ms"] for r in rs]]
        ax1.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("batch")
    ax1.set_ylabel("median latency, ms (bar: p90)")
    ax1.set_title("latency vs batch")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    prec = report.settings["precisions"][0]
    # the breakdown stacks parts that do not overlap: the detector's own steps replace the whole-detector row and
    # the stand-alone detector graphs (which those steps include); TensorRT phase rows are left out
    steps = [r for r in report.results if r["stage"].startswith("detector:")]
    parts = [r for r in rows if not (steps and r["stage"] in ("detector", "backbone_rpn", "roi_head"))] + steps
    batches = sorted({r["batch"] for r in parts})
    stages = list(dict.fromkeys(r["stage"] for r in parts if r["precision"] in (prec, "-")))
    bottom = np.zeros(len(batches))
    for st in stages:
        vals = np.array([next((r["median_ms"] for r in parts if r["stage"] == st and r["batch"] == b
                               and r["precision"] in (prec, "-")), 0.0) for b in batches])
        ax2.bar([str(b) for b in batches], vals, bottom=bottom, label=st)
        bottom += vals
    ax2.set_xlabel("batch")
    ax2.set_ylabel(f"median latency, ms ({prec}; stacked)")
    ax2.set_title("stage breakdown")
    ax2.legend(fontsize=7)
    meta = report.metadata
    gpu = meta.get("gpus", [{}])[0].get("name") if meta.get("gpus") else None
    fig.suptitle(f"{report.family} — {gpu or meta.get('cpu', {}).get('model', '')} — backend {report.backend}",
                 fontsize=10)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
