"""Gallery search speed against the machine's memory bandwidth: vsrt exact search vs plain numpy vs faiss.

For galleries of N × D unit vectors (default 100K and 1M × 2048) stored as FP32, FP16 and INT8 (vsrt's gallery
format, memory-mapped), top-10 for query batches of 1, 4, 8 and 32:

* ``vsrt`` — :func:`vsrt.runtime.search.exact_search` with its default kernel (the fused native scan where it was
  built: decode, FMA and top-k in one pass; bounded memory);
* ``vsrt-avx512`` — on CPUs whose native kernel filters FP16 batches (AVX512-FP16 / AVX512-BF16), the same search
  on FP16 storage with that filter off (the AVX-512 float32 kernel), timed interleaved with ``vsrt`` (one run of
  each per round), to show what the filter gains (``speedup_vs_avx512_kernel``);
* ``vsrt-ort`` — the same search with the ONNX Runtime block kernel (``Cast`` → ``MatMul`` → ``TopK``), the fallback
  where the native kernel is not built;
* ``numpy`` — plain numpy: the stored array converted to float32 (in 64K-row slices, so the 1M gallery fits in
  memory), ``scores = G @ Q.T``, ``argsort`` over the whole gallery;
* ``faiss-flat`` — faiss ``IndexFlatIP`` on a float32 copy of the stored values (what faiss users do);
* ``faiss-sq`` — faiss's own compressed storage: ``IndexScalarQuantizer`` fp16 (exact on FP16 values) / 8-bit.

The limit: one pass over the stored bytes at the **measured** read bandwidth (a large array read by numpy's sum and
by the native module's ``stream_sum`` probe, one and two threads, measured in this run before and after the
searches; the best is used), and for batches the
compute roofline (``2·N·D·batch`` flops at the measured float32 GEMM peak of ONNX Runtime's MLAS; for FP16 batches
that the native kernel filters in FP16 or BF16 arithmetic (AVX512-FP16 / AVX512-BF16 CPUs) also at that arithmetic's
peak from the native ``fma_rate`` probe, ``ratio_to_filter_roofline``: those filters do twice the products per
instruction, so the float32 rate is no ceiling for them). Two sets of
ratios: against the best bandwidth and GEMM rate seen in the whole run (``ratio_to_bandwidth_limit``,
``ratio_to_roofline``: conservative), and against both limits sampled right before each timed run
(``ratio_to_adjacent_*``, medians over the runs: this shared machine's speed drifts by tens of percent within a
run, and these compare each run with the machine as it was at that moment). Recall of each
storage against exact FP32 search is reported for the same queries (noisy copies of gallery items).

    python benchmarks/search.py                                # 100K and 1M × 2048 (about 15 GB of galleries)
    python benchmarks/search.py --sizes 100000 --name search_100k

Above ``--large`` items the script times fewer points (numpy once at batch 32, faiss once
at batch 1: ``--large-slow-batches``) so that the whole run stays within about ten minutes on a 2-core machine.
Writes benchmarks/results/search.json and search.png. The generated galleries (in --workdir) are deleted after
each size unless --keep is given.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402

from vsrt.runtime.doctor import system_metadata  # noqa: E402
from vsrt.runtime.gallery import Gallery, GalleryError  # noqa: E402
from vsrt.runtime.search import NativeKernel, default_threads, exact_search, native_kernel_info  # noqa: E402

K = 10
SEED = 0


def _mem_available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def _best(fn, repeats: int) -> dict[str, Any]:
    """Time ``fn`` ``repeats`` times (ms); the last call's return value is kept under ``"result"``."""
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"min_ms": float(np.min(times)), "median_ms": float(np.median(times)), "repeats": repeats, "result": out}


def _stream_sum() -> Any | None:
    """The native module's ``stream_sum`` read probe, or ``None`` where the kernel is not built."""
    try:
        from vsrt.runtime import _scan
    except ImportError:
        return None
    return _scan.stream_sum


def read_bandwidth(gib: float = 1.0) -> dict[str, float]:
    """Read bandwidth (GB/s) of a ``gib`` GiB array, 1 and 2 threads, best of 5: numpy's uint64 sum, and where the
    native kernel is built its ``stream_sum`` probe (four streams a page apart with software prefetch, the way the
    scan reads; it reaches more than numpy's sum, so the limit stays a real upper bound)."""
    a = np.ones(int(gib * 2**30) // 8, np.uint64)
    h = len(a) // 2
    readers = {"numpy_sum": lambda x: x.sum()}
    if (stream_sum := _stream_sum()) is not None:
        readers["stream_sum"] = stream_sum
    out = {}
    with ThreadPoolExecutor(2) as pool:
        for name, read in readers.items():
            def one(read=read) -> None:
                read(a)

            def two(read=read) -> None:
                list(pool.map(read, [a[:h], a[h:]]))

            for threads, fn in (("1_thread", one), ("2_threads", two)):
                fn()
                out[f"{name}_{threads}"] = a.nbytes / (_best(fn, 5)["min_ms"] / 1e3) / 1e9
    return out


def _gemm_session(spinning: bool = True) -> tuple[Any, dict[str, np.ndarray]]:
    """An ONNX Runtime session of one float32 MatMul ([2048, 2048] × [2048, 32], in cache) and its feeds."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2048, 2048]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [2048, 32])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2048, 32])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    if not spinning:  # no spin-waiting pool threads after a run: they would steal the next timed run's cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"a": np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32),
             "b": np.random.default_rng(1).standard_normal((2048, 32)).astype(np.float32)}
    return s, feeds


def gemm_peak() -> float:
    """float32 GEMM GFLOP/s of ONNX Runtime's MLAS on in-cache data ([2048, 2048] × [2048, 32])."""
    s, feeds = _gemm_session()
    t = _best(lambda: [s.run(None, feeds) for _ in range(20)], 5)["min_ms"] / 20
    return 2 * 2048 * 2048 * 32 / (t / 1e3) / 1e9


def fma_peaks(seconds: float = 0.2) -> dict[str, float]:
    """Multiply-add peaks (GFLOP/s; best of 3) of the native module's ``fma_rate`` probe: float32 FMAs, FP16 FMAs and
    BF16 dot products in registers, 1 and 2 threads, for the arithmetics this CPU has. The FP16 / BF16 peak is the
    compute ceiling of the scan kernel's filter for FP16 batches (the float32 GEMM rate is none: the filter does twice
    the products per instruction). Empty where the kernel is not built."""
    try:
        from vsrt.runtime import _scan
    except ImportError:
        return {}
    out: dict[str, float] = {}
    with ThreadPoolExecutor(2) as pool:
        for kind, name in ((0, "fp32"), (1, "fp16"), (2, "bf16")):
            if _scan.fma_rate(kind, 0.01) <= 0:
                continue
            out[f"{name}_1_thread"] = max(_scan.fma_rate(kind, seconds) for _ in range(3)) / 1e9
            out[f"{name}_2_threads"] = max(sum(pool.map(lambda _, k=kind: _scan.fma_rate(k, seconds), range(2)))
                                           for _ in range(3)) / 1e9
    return out


class Probes:
    """The two limits sampled right next to each timed run (the machine is shared and its speed drifts, so each run
    is compared with the bandwidth and GEMM rate measured moments before it): the best 2-thread read of a 1 GiB array
    (larger than the L3 cache) and ONNX Runtime's in-cache float32 GEMM."""

    def __init__(self) -> None:
        self.a = np.ones(2**30 // 8, np.uint64)
        self.read = _stream_sum() or (lambda x: x.sum())
        self.pool = ThreadPoolExecutor(2)
        # measured: with ONNX Runtime's default spinning, the run after a probe was 30 % slower
        self.sess, self.feeds = _gemm_session(spinning=False)

    def sample(self) -> tuple[float, float]:
        """``(read GB/s, GEMM GFLOP/s)`` now (best of 2 reads, best of 8 GEMMs)."""
        h = len(self.a) // 2
        best = np.inf
        for _ in range(2):
            t = time.perf_counter()
            list(self.pool.map(self.read, [self.a[:h], self.a[h:]]))
            best = min(best, time.perf_counter() - t)
        bw = self.a.nbytes / best / 1e9
        self.sess.run(None, self.feeds)
        g = np.inf
        for _ in range(8):
            t = time.perf_counter()
            self.sess.run(None, self.feeds)
            g = min(g, time.perf_counter() - t)
        return bw, 2 * 2048 * 2048 * 32 / g / 1e9


def timed_against_limits(fns: dict[str, Any], repeats: int, probes: Probes, nbytes: int, flops: float
                         ) -> dict[str, dict[str, Any]]:
    """:func:`_best` for each of ``fns`` (by name), with the limits sampled before every run: per run, time / (bytes at
    the bandwidth just measured) and time / max(that, flops at the GEMM rate just measured); the medians are the
    side-by-side ratios. Several functions run interleaved, one run of each per round, so that the drift of this
    shared machine's speed falls on all of them alike."""
    log: dict[str, dict[str, list]] = {name: {k: [] for k in ("times", "to_bw", "to_roof", "bws", "gemms")}
                                       for name in fns}
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            bw, gemm = probes.sample()
            t = time.perf_counter()
            out[name] = fn()
            dt = (time.perf_counter() - t) * 1e3
            lim_bw, lim_c = nbytes / (bw * 1e9) * 1e3, flops / (gemm * 1e9) * 1e3
            for key, value in (("times", dt), ("to_bw", dt / lim_bw), ("to_roof", dt / max(lim_bw, lim_c)),
                               ("bws", bw), ("gemms", gemm)):
                log[name][key].append(value)
    return {name: {"min_ms": float(np.min(v["times"])), "median_ms": float(np.median(v["times"])), "repeats": repeats,
                   "result": out[name], "times_ms": v["times"], "adjacent_read_gbps": v["bws"],
                   "adjacent_gemm_gflops": v["gemms"],
                   "ratio_to_adjacent_bandwidth_limit": float(np.median(v["to_bw"])),
                   "ratio_to_adjacent_roofline": float(np.median(v["to_roof"]))}
            for name, v in log.items()}


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


_BASE: dict[tuple[int, int], np.ndarray] = {}


def _block_vectors(lo: int, n: int, d: int, step: int = 65536) -> np.ndarray:
    """Gallery items ``lo…lo+step-1``, the same whatever the storage: one seeded block of random unit vectors,
    and for every later block that block with a seeded random sign per dimension and a seeded row permutation
    (still unit vectors, all distinct; generating 2·10⁹ normal deviates for 1M × 2048 would dominate the run)."""
    key = (d, step)
    if key not in _BASE:
        _BASE.clear()
        _BASE[key] = unit_rows(np.random.default_rng([SEED, 0]), step, d)
    base = _BASE[key]
    rows = min(step, n - lo)
    if lo == 0:
        return base[:rows].copy()
    rng = np.random.default_rng([SEED, lo])
    signs = np.where(rng.random(d) < 0.5, -1.0, 1.0).astype(np.float32)
    return base[rng.permutation(step)[:rows]] * signs


def _queries_from(x: np.ndarray, m: int) -> np.ndarray:
    """Noisy copies of ``m`` items of the first block (a meaningful top-k: one near neighbour, then close
    competitors; where the matches lie does not change the time of an exhaustive scan)."""
    rng = np.random.default_rng([SEED, 999])
    rows = np.sort(rng.choice(len(x), m, replace=False))
    q = x[rows] + 0.5 * unit_rows(rng, m, x.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def make_galleries(workdir: Path, n: int, d: int, storages: list[str], m: int
                   ) -> tuple[dict[str, Gallery], np.ndarray, np.ndarray]:
    """Galleries of ``n`` random unit vectors in every storage, the queries and their exact FP32 top-K over the
    generated vectors themselves (before any storage), all in one pass over the data (each 64K block is
    generated once, written to every storage and scored for the reference, then freed). Reused when complete."""
    import shutil

    paths = {s: workdir / f"g{n}_{d}_{s}" for s in storages}
    qpath, rpath = workdir / f"queries{n}_{d}_{m}.npy", workdir / f"ref{n}_{d}_{m}.npy"
    done = qpath.is_file() and rpath.is_file()
    for path in paths.values():
        done = done and (path / "gallery.json").is_file() and len(Gallery.open(path, check="size")) == n
    if done:
        return {s: Gallery.open(p, check="size") for s, p in paths.items()}, np.load(qpath), np.load(rpath)
    gals = {}
    for s, path in paths.items():  # an interrupted run's galleries are resumed (appends are whole 64K blocks)
        try:
            gals[s] = Gallery.create(path, d, s, {"family": "synthetic", "config_sha256": "0" * 64}, exist_ok=True)
        except GalleryError:
            shutil.rmtree(path)
            gals[s] = Gallery.create(path, d, s, {"family": "synthetic", "config_sha256": "0" * 64})
    step = 65536
    q = None
    best_s = best_i = None
    t0 = time.perf_counter()
    for lo in range(0, n, step):
        x = _block_vectors(lo, n, d, step)
        if q is None:
            q = _queries_from(x, m)
            best_s = np.full((m, 0), -np.inf, np.float32)
            best_i = np.zeros((m, 0), np.int64)
        keys = [str(i) for i in range(lo, lo + len(x))]
        hashes = [f"{i:064x}" for i in range(lo, lo + len(x))]
        for g in gals.values():
            if len(g) <= lo:
                g.add(keys, x, hashes=hashes)
        s = np.concatenate([best_s, q @ x.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(lo, lo + len(x)), (m, len(x)))], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :K]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
        del x, s, i
        print(f"  generated {lo + min(step, n - lo)}/{n} × {d} ({', '.join(storages)}) "
              f"{time.perf_counter() - t0:.0f} s", end="\r", flush=True)
    print()
    assert q is not None and best_i is not None
    np.save(qpath, q)
    np.save(rpath, best_i)
    return {s: Gallery.open(p, check="size") for s, p in paths.items()}, q, best_i


def numpy_search(blocks: list, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: float32 conversion (64K-row slices), one matmul per slice, argsort over everything."""
    parts = []
    for _, codes, scales in blocks:
        for lo in range(0, len(codes), 65536):
            g = np.asarray(codes[lo : lo + 65536], np.float32)
            s = g @ q.T
            if scales is not None:
                s *= scales[lo : lo + 65536, None]
            parts.append(s)
    scores = np.concatenate(parts)
    idx = np.argsort(-scores, axis=0)[:k].T
    return np.take_along_axis(scores.T, idx, axis=1), idx


@functools.cache
def _avx512_kernel() -> NativeKernel:
    """The native module's AVX-512 float32 kernel (no FP16 / BF16 filter), made once."""
    return NativeKernel("avx512")


def faiss_index(blocks: list, d: int, kind: str, storage: str) -> Any:
    import faiss

    if kind == "faiss-flat":
        index = faiss.IndexFlatIP(d)
    else:
        qt = faiss.ScalarQuantizer.QT_fp16 if storage == "fp16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexScalarQuantizer(d, qt, faiss.METRIC_INNER_PRODUCT)
    first = True
    for _, codes, scales in blocks:
        for lo in range(0, len(codes), 65536):
            x = np.asarray(codes[lo : lo + 65536], np.float32)
            if scales is not None:
                x *= scales[lo : lo + 65536, None]
            if first and not index.is_trained:
                index.train(x)
            first = False
            index.add(x)
    return index


def bench_size(n: int, d: int, storages: list[str], batches: list[int], engines: list[str], workdir: Path,
               repeats: int, slow_repeats: int, bw: float, peak: float, probes: Probes,
               engine_batches: dict[str, list[int]] | None = None) -> list[dict[str, Any]]:
    """Every engine × storage × batch on an ``n`` × ``d`` gallery (``engine_batches`` narrows an engine's batches).
    ``faiss-flat`` runs once per size, on the most precise storage (it searches a float32 copy, so its speed does
    not depend on the storage)."""
    engine_batches = engine_batches or {}
    rows: list[dict[str, Any]] = []
    gals, q_all, ref_all = make_galleries(workdir, n, d, storages, max(batches))
    flat_storage = next(s for s in ("fp32", "fp16", "int8") if s in storages)
    for storage in storages:
        g = gals.pop(storage)
        blocks = list(g.blocks())
        nbytes = g.nbytes()
        exact_search(blocks, q_all[:1], K)  # one full pass: every engine then reads the same resident pages
        for engine in engines:
            index = None
            if engine == "faiss-sq" and storage == "fp32":
                continue
            filtered = storage == "fp16" and bool(native_kernel_info().get("filter"))
            if engine == "vsrt-avx512" and (not filtered or "vsrt" in engines):  # runs beside vsrt, or not at all
                continue
            if engine == "faiss-flat" and storage != flat_storage:
                continue
            if engine.startswith("faiss"):
                need = n * d * (4 if engine == "faiss-flat" else (2 if storage == "fp16" else 1)) / 2**30
                if need > _mem_available_gib() - 2.0:
                    rows.append({"n": n, "dim": d, "storage": storage, "engine": engine, "batch": 0, "bytes": nbytes,
                                 "skipped": f"needs {need:.1f} GiB, not available"})
                    continue
                print(f"  {n} {storage}: building {engine}", flush=True)
                index = faiss_index(blocks, d, engine, storage)
            for m in engine_batches.get(engine, batches):
                q = q_all[:m]
                limit_bw = nbytes / (bw * 1e9) * 1e3
                limit_compute = 2 * n * d * m / (peak * 1e9) * 1e3
                common = {"n": n, "dim": d, "storage": storage, "batch": m, "bytes": nbytes,
                          "bandwidth_limit_ms": limit_bw, "compute_limit_ms": limit_compute,
                          "roofline_ms": max(limit_bw, limit_compute)}
                print(f"  {n} {storage} batch {m}: {engine}", flush=True)
                work = {"vsrt": lambda q=q, b=blocks: exact_search(b, q, K),
                        "vsrt-ort": lambda q=q, b=blocks: exact_search(b, q, K, kernel="ort"),
                        "vsrt-avx512": lambda q=q, b=blocks: exact_search(b, q, K, kernel=_avx512_kernel()),
                        "numpy": lambda q=q, b=blocks: numpy_search(b, q, K)}
                fns = {engine: work.get(engine, lambda q=q, index=index: index.search(q, K))}
                if engine == "vsrt" and filtered and "vsrt-avx512" in engines:
                    fns["vsrt-avx512"] = work["vsrt-avx512"]
                timed = timed_against_limits(fns, repeats if engine.startswith("vsrt") else slow_repeats, probes,
                                             nbytes, 2 * n * d * m)
                for name, t in timed.items():
                    got = t.pop("result")[1]
                    recall_fp32 = float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(got, ref_all[:m])]))
                    rows.append({**common, "engine": name, **t, "per_query_ms": t["median_ms"] / m,
                                 "ratio_to_bandwidth_limit": t["median_ms"] / limit_bw,
                                 "ratio_to_roofline": t["median_ms"] / max(limit_bw, limit_compute),
                                 "effective_gbps": nbytes / (t["median_ms"] / 1e3) / 1e9,
                                 "recall_at_10_vs_exact_fp32": recall_fp32})
            del index
            gc.collect()
        del blocks, g
        gc.collect()
    for r in rows:  # speed-ups over numpy, and of vsrt over its AVX-512 kernel alone, on the same storage and batch
        for engine, key in (("numpy", "speedup_vs_numpy"), ("vsrt-avx512", "speedup_vs_avx512_kernel")):
            if key == "speedup_vs_avx512_kernel" and r["engine"] != "vsrt":
                continue
            base = next((b for b in rows if b["engine"] == engine and b["n"] == r["n"] and b["storage"] == r["storage"]
                         and b["batch"] == r["batch"] and "median_ms" in b), None)
            if base and "median_ms" in r:
                r[key] = base["median_ms"] / r["median_ms"]
    return rows


def plot(rows: list[dict[str, Any]], path: Path, bw: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for (storage, engine), style in _series(rows, n):
            rs = sorted((r for r in rows if r["n"] == n and r["storage"] == storage and r["engine"] == engine
                         and "median_ms" in r), key=lambda r: r["batch"])
            if rs:
                ax.plot([r["batch"] for r in rs], [r["median_ms"] for r in rs], style, label=f"{engine} {storage}")
        for storage, ls in (("fp32", ":"), ("fp16", "--"), ("int8", "-.")):
            lim = [r["bandwidth_limit_ms"] for r in rows
                   if r["n"] == n and r["storage"] == storage and "bandwidth_limit_ms" in r]
            if lim:
                ax.axhline(lim[0], color="k", linestyle=ls, linewidth=1, label=f"bandwidth limit {storage}")
        comp = sorted({(r["batch"], r["compute_limit_ms"]) for r in rows if r["n"] == n and "compute_limit_ms" in r})
        if comp:
            ax.plot([b for b, _ in comp], [c for _, c in comp], color="0.5", linestyle="--", linewidth=1,
                    label="compute limit (GEMM peak)")
        filt = sorted({(r["batch"], r["filter_limit_ms"]) for r in rows if r["n"] == n and "filter_limit_ms" in r})
        if filt:
            arith = next(r["filter_arithmetic"] for r in rows if "filter_arithmetic" in r).upper()
            ax.plot([b for b, _ in filt], [c for _, c in filt], color="0.5", linestyle=":", linewidth=1,
                    label=f"compute limit FP16 batches ({arith} filter peak)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("queries per batch")
        ax.set_ylabel("latency per batch, ms (median)")
        ax.set_title(f"top-{K} over {n:,} × {rows[0]['dim']} (read bandwidth {bw:.1f} GB/s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(rows: list[dict[str, Any]], n: int) -> list[tuple[tuple[str, str], str]]:
    colors = {"vsrt": "C0", "numpy": "C1", "faiss-flat": "C2", "faiss-sq": "C3", "vsrt-ort": "C5", "vsrt-avx512": "C6"}
    marks = {"fp32": "o-", "fp16": "s-", "int8": "^-"}
    keys = sorted({(r["storage"], r["engine"]) for r in rows if r["n"] == n})
    return [((s, e), f"{colors.get(e, 'C4')}{marks.get(s, 'x-')}") for s, e in keys]


def _on_filter(r: dict[str, Any], filt: dict[str, Any] | None) -> bool:
    """Whether the row's search ran through the native kernel's filter ``filt`` (``native_kernel_info()["filter"]``):
    vsrt, FP16 storage, a batch of its ``min_queries`` or more."""
    return bool(filt) and r["engine"] == "vsrt" and r["storage"] == "fp16" and r["batch"] >= filt["min_queries"]


def _write(name: str, rows: list[dict[str, Any]], load_before: tuple[float, float, float],
           bw_before: dict[str, float], bw_after: dict[str, float] | None, peak: float,
           fma_peaks_seen: list[dict[str, float]]) -> tuple[dict[str, Any], float]:
    """Ratios against the best bandwidth measured so far; JSON and plot written (again after every size)."""
    bw = max(*bw_before.values(), *(bw_after or {}).values())
    info = native_kernel_info()
    filt = info.get("filter")
    filter_peak = max(fma.get(f"{filt['arithmetic']}_2_threads", 0.0) for fma in fma_peaks_seen) if filt else 0.0
    for r in rows:
        if "skipped" in r:
            continue
        r["bandwidth_limit_ms"] = r["bytes"] / (bw * 1e9) * 1e3
        r["roofline_ms"] = max(r["bandwidth_limit_ms"], r["compute_limit_ms"])
        if "median_ms" in r:
            r["ratio_to_bandwidth_limit"] = r["median_ms"] / r["bandwidth_limit_ms"]
            r["ratio_to_roofline"] = r["median_ms"] / r["roofline_ms"]
        if filter_peak and _on_filter(r, filt):  # its ceiling: the filter arithmetic's peak, not the GEMM rate
            r["filter_arithmetic"] = filt["arithmetic"]
            r["filter_limit_ms"] = 2 * r["n"] * r["dim"] * r["batch"] / (filter_peak * 1e9) * 1e3
            r["filter_roofline_ms"] = max(r["bandwidth_limit_ms"], r["filter_limit_ms"])
            if "median_ms" in r:
                r["ratio_to_filter_roofline"] = r["median_ms"] / r["filter_roofline_ms"]
    data = {
        "benchmark": "search",
        "complete": bw_after is not None,
        "k": K,
        "machine": {**machine(), **system_metadata()},
        "threads": default_threads(),
        "native_kernel": info,
        "load_average": {"before": load_before, "after": os.getloadavg(),
                         "note": "1/5/15-minute load averages of this (shared) machine; above the core count, "
                                 "other processes were competing for the CPU and memory bandwidth"},
        "read_bandwidth_gbps": {"before": bw_before, "after": bw_after, "used": bw},
        "gemm_peak_gflops": peak,
        "fma_peak_gflops": {"before": fma_peaks_seen[0],
                            "after": fma_peaks_seen[1] if len(fma_peaks_seen) > 1 else None,
                            "filter_used": filter_peak or None},
        "results": rows,
    }
    write_results(name, data)
    plot(rows, RESULTS / f"{name}.png", bw)
    return data, bw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="gallery sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--batches", default="1,4,8,32")
    ap.add_argument("--storages", default="fp32,fp16,int8", help="storages for sizes up to --large")
    ap.add_argument("--storages-large", default="fp32,fp16,int8", help="storages for sizes above --large")
    ap.add_argument("--keep", action="store_true", help="keep the generated galleries in --workdir for re-runs")
    ap.add_argument("--large", type=int, default=200_000)
    ap.add_argument("--engines", default="vsrt,vsrt-avx512,vsrt-ort,numpy,faiss-flat,faiss-sq")
    ap.add_argument("--batches-large", default="1,4,8,32", help="query batches for sizes above --large")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of vsrt search per point")
    ap.add_argument("--slow-repeats", type=int, default=2, help="timed runs of numpy / faiss per point")
    ap.add_argument("--large-repeats", type=int, default=5, help="timed runs of vsrt above --large (numpy, faiss: 1)")
    ap.add_argument("--large-slow-batches", default="numpy=32,faiss-flat=1,faiss-sq=1",
                    help="above --large, the batches of the slow engines (ENGINE=B[/B…], comma-separated)")
    ap.add_argument("--workdir", default=os.environ.get("VSRT_BENCH_DIR", "/tmp/vsrt-bench-search"))
    ap.add_argument("--name", default="search", help="results name (benchmarks/results/<name>.json/.png)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    try:
        import faiss  # noqa: F401
    except ImportError:
        print("faiss not installed: faiss rows skipped (pip install faiss-cpu)")
        engines = [e for e in engines if not e.startswith("faiss")]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print("measuring read bandwidth and GEMM peak…", flush=True)
    load_before = os.getloadavg()
    bw_before = read_bandwidth()
    peak = gemm_peak()
    fma_seen = [fma_peaks()]
    probes = Probes()
    rows: list[dict[str, Any]] = []
    for n in sizes:
        storages = (args.storages if n <= args.large else args.storages_large).split(",")
        print(f"gallery {n} × {args.dim}: {', '.join(storages)}", flush=True)
        bw = max(bw_before.values())
        large = n > args.large
        bs = [int(b) for b in args.batches_large.split(",")] if large else batches
        eb = {}
        if large:
            for item in filter(None, args.large_slow_batches.split(",")):
                eng, _, vals = item.partition("=")
                eb[eng] = [int(v) for v in vals.split("/")]
        rows += bench_size(n, args.dim, storages, bs, engines, workdir, args.large_repeats if large else args.repeats,
                           1 if large else args.slow_repeats, bw, peak, probes, eb)
        _write(args.name, rows, load_before, bw_before, None, peak, fma_seen)  # partial results survive a stop
        if not args.keep:
            import shutil

            for f in workdir.glob(f"*{n}_{args.dim}_*"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    bw_after = read_bandwidth()
    fma_seen.append(fma_peaks())
    data, bw = _write(args.name, rows, load_before, bw_before, bw_after, peak, fma_seen)
    out = RESULTS / f"{args.name}.json"
    filter_peak = data["fma_peak_gflops"]["filter_used"]
    arith = (data["native_kernel"].get("filter") or {}).get("arithmetic", "").upper()
    print(f"read bandwidth {bw:.1f} GB/s, GEMM peak {peak:.0f} GFLOP/s"
          + (f", {arith} filter peak {filter_peak:.0f} GFLOP/s" if filter_peak else "") + f"; results: {out}")
    print(f"{'n':>8} {'storage':>7} {'batch':>5} {'engine':>10} {'median ms':>10} {'per query':>10} "
          f"{'x BW limit':>10} {'x roofline':>10} {'x BW adj':>9} {'x roof adj':>10} {'x filt roof':>11} "
          f"{'vs numpy':>8} {'recall':>7}")
    for r in rows:
        if "median_ms" not in r:
            print(f"{r['n']:>8} {r['storage']:>7} {r['batch']:>5} {r['engine']:>10}  skipped: {r['skipped']}")
            continue
        print(f"{r['n']:>8} {r['storage']:>7} {r['batch']:>5} {r['engine']:>10} {r['median_ms']:>10.1f} "
              f"{r['per_query_ms']:>10.2f} {r['ratio_to_bandwidth_limit']:>10.2f} {r['ratio_to_roofline']:>10.2f} "
              f"{r['ratio_to_adjacent_bandwidth_limit']:>9.2f} {r['ratio_to_adjacent_roofline']:>10.2f} "
              f"{r.get('ratio_to_filter_roofline', float('nan')):>11.2f} "
              f"{r.get('speedup_vs_numpy', float('nan')):>8.1f} {r['recall_at_10_vs_exact_fp32']:>7.3f}")
    print(json.dumps({"load_average": {k: data["load_average"][k] for k in ("before", "after")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
