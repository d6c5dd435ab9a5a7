"""Exact top-k search over gallery blocks, text→image / image→text helpers, and faiss for large galleries. No torch.

Exact search (:func:`exact_search`) scans the gallery in blocks of ``block_rows`` rows, so memory stays bounded
whatever the gallery size (a block, its scores and ``k`` candidates per block and query; blocks of memory-mapped
segments are paged in by the OS and never copied whole). Each block is scored for all queries at once and cut to
its own top-k; the per-block candidates are merged as they arrive. Ties are broken by item index, so the result
does not depend on block size or thread count.

Block kernels (``kernel=``):

* ``"native"`` — :mod:`vsrt.runtime._scan`, the one compiled part of vsrt (built at install time, optional): each
  small tile of rows is decoded to float32 in registers (F16C / AVX-512 on x86-64, NEON on AArch64), multiplied
  into every query with float32 FMAs while it is in L1, and every score goes straight into a per-query bounded heap.
  One pass over the codes and nothing block-sized written, so few queries run at memory speed and many at FMA speed.
  On CPUs with AVX512-FP16 (Sapphire Rapids and later), batches over FP16 codes are scored in FP16 arithmetic
  first (32 products per instruction and no decode), and only the rows that could enter a query's top-k, by a
  proven bound on that score's error, are scored again exactly: the same results as the AVX-512 kernel, bit for
  bit, at about twice its multiply rate. :func:`exact_search` passes each block the k-th best scores of the blocks
  merged so far (``floors``), so that later blocks re-score almost nothing. On CPUs with AVX512-BF16 but not
  AVX512-FP16 (AMD Zen 4, Xeon Cooper Lake) the filter decodes each row once per group of 8 queries and scores it
  with BF16 dot products (32 products per instruction; about 1.7 times the float32 kernel's rate, measured on
  Zen 4), with the same exact re-score and results.
  ``VSRT_SCAN_ISA`` (``avx512fp16``, ``avx512bf16``, ``avx512``, ``avx2``, ``neon``, ``generic``) overrides the kernel
  chosen from the CPU.
* ``"ort"`` — a four-node ONNX graph run by ONNX Runtime on the CPU: ``Cast`` to float32 (in cache-sized blocks),
  ``MatMul`` with the queries (MLAS GEMM), ``Mul`` by the per-vector scales (INT8 storage), ``TopK`` over the block.
  Each step is its own pass over the block, so FP16/INT8 storage costs a conversion on top of the GEMM.
* ``"numpy"`` — the same steps in numpy (dequantise into a reused buffer, BLAS ``sgemm``, ``argpartition``): the
  portable reference.
* ``"auto"`` (default) — ``native`` where it was built, else ``ort`` (and ``ort`` for FP32 batches of
  :data:`AUTO_FP32_ORT_FROM` queries or more, where MLAS's GEMM is faster and there is no conversion to fuse).

All kernels return the same top-k up to float32 summation order. Blocks are spread over ``threads`` Python threads
(every kernel releases the GIL), one block per call.

faiss (optional, ``pip install faiss-cpu``): :class:`FaissSearcher` builds any faiss index from a gallery
(``"Flat"`` is exact; ``"IVF4096,SQ8"``, ``"HNSW32"``… are approximate) and caches it beside the gallery, keyed by
the gallery's last commit; :func:`recall_vs_exact` reports what an approximate index costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import BackendUnavailableError, InputError

Block = tuple[int, np.ndarray, np.ndarray | None]  # (first item index, codes [n, D], scales [n] or None)
KERNELS = ("auto", "native", "ort", "numpy")
#: a converted (FP16/INT8) block's float32 form, by default: small enough to stay in cache between Cast and MatMul
DEFAULT_BLOCK_BYTES = 4 << 20
#: an FP32 block by default: no conversion, so larger blocks (fewer calls) are faster
DEFAULT_FP32_BLOCK_BYTES = 16 << 20
#: stored bytes per block for the native kernel, at most (blocks never span gallery segments, 256 MB of FP16 at
#: D = 2048). It writes nothing block-sized (blocks only spread the threads), but every block is a call with its own
#: query set-up, cold start and result merge: measured on 1M × 2048 FP16, 64 MB blocks searched 7–15 % faster than
#: 16 MB blocks at 1, 4 and 8 queries (Xeon), 256 MB blocks 7 % faster than 64 MB ones at 1 query, 3 % at 8 (Zen 4)
DEFAULT_NATIVE_BLOCK_BYTES = 256 << 20
#: native blocks per thread, at least, where the gallery is large enough (smaller galleries get smaller blocks, so
#: that every thread has one). Measured on 100K × 2048 FP16 (Zen 4, 2 threads, blocks taken as threads free up):
#: 1 block per thread searched 5–7 % faster than 4 at 1 and 8 queries, 2–4 % faster than 2
NATIVE_BLOCKS_PER_THREAD = 1


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _scan_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` block-scanning workers, started once (a new pool per search cost about
    0.3 ms, measured: 1 % of a 100K-item search)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix=f"vsrt-scan{threads}")
        return pool


def _forget_pools_after_fork() -> None:
    """A forked child has none of its parent's worker threads: it starts its own pools."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def default_threads() -> int:
    """Threads for block scanning: ``VSRT_SEARCH_THREADS`` or the CPUs this process may use."""
    env = os.environ.get("VSRT_SEARCH_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_block_rows(dim: int, dtype: np.dtype | type = np.float16, kernel: str = "ort",
                       total_rows: int | None = None, threads: int = 1) -> int:
    """Rows per block. ``ort``/``numpy``: :data:`DEFAULT_BLOCK_BYTES` of float32 for converted codes,
    :data:`DEFAULT_FP32_BLOCK_BYTES` for FP32 codes; ``native``: :data:`DEFAULT_NATIVE_BLOCK_BYTES` of stored codes,
    or fewer where ``total_rows`` would otherwise give ``threads`` threads under :data:`NATIVE_BLOCKS_PER_THREAD`
    blocks each. At least 256 rows, so the per-call overhead stays small."""
    dt = np.dtype(dtype)
    if kernel == "native":
        rows = DEFAULT_NATIVE_BLOCK_BYTES // max(1, dim * dt.itemsize)
        if total_rows is not None:
            share = -(-int(total_rows) // (max(1, int(threads)) * NATIVE_BLOCKS_PER_THREAD))
            rows = min(rows, share)
        return int(max(256, rows))
    budget = DEFAULT_FP32_BLOCK_BYTES if dt == np.float32 else DEFAULT_BLOCK_BYTES
    return int(max(256, budget // max(1, dim * 4)))


# ---------------------------------------------------------------------------------------------------- kernels
class OrtKernel:
    """Scores and per-block top-k in one small ONNX Runtime graph per storage dtype (see module docstring)."""

    name = "ort"

    @staticmethod
    def prepare(queries: np.ndarray) -> np.ndarray:
        """The queries as this kernel takes them: ``[D, M]`` float32, contiguous."""
        return np.ascontiguousarray(np.asarray(queries, np.float32).T)

    def __init__(self, threads_per_call: int = 1) -> None:
        self.threads_per_call = threads_per_call
        self._sessions: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()

    def _session(self, dtype: np.dtype, scaled: bool) -> Any:
        key = (np.dtype(dtype).str, scaled)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = self._build(np.dtype(dtype), scaled)
            return self._sessions[key]

    def _build(self, dtype: np.dtype, scaled: bool) -> Any:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
                np.dtype(np.int8): TensorProto.INT8}.get(dtype)
        if elem is None:
            raise InputError(f"search kernel cannot scan codes of dtype {dtype}")
        inputs = [helper.make_tensor_value_info("codes", elem, ["n", "d"]),
                  helper.make_tensor_value_info("queries_t", TensorProto.FLOAT, ["d", "m"]),
                  helper.make_tensor_value_info("k", TensorProto.INT64, [1])]
        nodes = []
        x = "codes"
        if elem != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT))
            x = "codes_f"
        nodes.append(helper.make_node("MatMul", [x, "queries_t"], ["scores"]))
        s = "scores"
        if scaled:
            inputs.append(helper.make_tensor_value_info("scales", TensorProto.FLOAT, ["n", 1]))
            nodes.append(helper.make_node("Mul", ["scores", "scales"], ["scores_s"]))
            s = "scores_s"
        nodes.append(helper.make_node("TopK", [s, "k"], ["values", "indices"], axis=0, largest=1, sorted=1))
        outputs = [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["kk", "m"]),
                   helper.make_tensor_value_info("indices", TensorProto.INT64, ["kk", "m"])]
        model = helper.make_model(helper.make_graph(nodes, "vsrt_block_topk", inputs, outputs),
                                  opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads_per_call
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def __call__(self, codes: np.ndarray, scales: np.ndarray | None, queries_t: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        sess = self._session(codes.dtype, scales is not None)
        feeds = {"codes": np.ascontiguousarray(codes), "queries_t": queries_t,
                 "k": np.array([min(k, len(codes))], np.int64)}
        if scales is not None:
            feeds["scales"] = np.ascontiguousarray(scales, np.float32).reshape(-1, 1)
        values, indices = sess.run(None, feeds)
        return values, indices


class NumpyKernel:
    """The same block step in numpy: dequantise into a per-thread buffer, BLAS matmul, ``argpartition``."""

    name = "numpy"
    prepare = staticmethod(OrtKernel.prepare)

    def __init__(self) -> None:
        self._local = threading.local()

    def _buffer(self, shape: tuple[int, int]) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < shape[0] * shape[1]:
            buf = np.empty(shape[0] * shape[1], np.float32)
            self._local.buf = buf
        return buf[: shape[0] * shape[1]].reshape(shape)

    def __call__(self, codes: np.ndarray, scales: np.ndarray | None, queries_t: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        if codes.dtype == np.float32:
            x = codes
        else:
            x = self._buffer(codes.shape)
            np.copyto(x, codes, casting="unsafe")
        s = x @ queries_t
        if scales is not None:
            s *= np.asarray(scales, np.float32)[:, None]
        kk = min(k, len(s))
        if kk == len(s):
            idx = np.argsort(-s, axis=0, kind="stable")
        else:
            idx = np.argpartition(-s, kk - 1, axis=0)[:kk]
            kth = np.take_along_axis(s, idx, axis=0).min(axis=0)
            for j in np.flatnonzero((s >= kth).sum(axis=0) > kk):  # ties at the cut: lower index wins, like TopK
                idx[:, j] = np.argsort(-s[:, j], kind="stable")[:kk]
        return np.take_along_axis(s, idx, axis=0), idx.astype(np.int64)


#: the CPU kernels of :mod:`vsrt.runtime._scan` by name, best first, with the ids its ``isa`` argument takes
SCAN_ISAS = {"avx512fp16": 5, "avx512bf16": 6, "avx512": 3, "avx2": 2, "neon": 4, "generic": 1}


def available_isas(scan: Any) -> list[str]:
    """The CPU kernels the built module ``scan`` can run on this machine, best first."""
    return [name for name, i in SCAN_ISAS.items() if scan.isa(i)]


class NativeKernel:
    """The fused scan of :mod:`vsrt.runtime._scan` (see module docstring): decode, FMA and top-k in one pass.

    Args:
        isa: ``"auto"`` (from the CPU, or ``VSRT_SCAN_ISA``), ``"avx512fp16"``, ``"avx512bf16"``, ``"avx512"``,
            ``"avx2"``, ``"neon"`` or ``"generic"``. ``avx512fp16`` and ``avx512bf16`` are ``avx512`` except for
            batches over FP16 codes: an FP16 (or BF16 dot-product) filter, then an exact AVX-512 re-score of the rows
            that could enter the top-k (the same results, bit for bit).
    """

    name = "native"
    #: takes ``floors``: per query, a lower bound on the final k-th best score (see :meth:`__call__`)
    uses_floors = True
    _CODES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int8): 2}
    _ISAS = {"auto": 0, **SCAN_ISAS}

    def __init__(self, isa: str | None = None) -> None:
        self._scan = _native_module()
        if self._scan is None:
            raise BackendUnavailableError(f"the native search kernel is not built: {_NATIVE_ERROR}")
        isa = (isa or os.environ.get("VSRT_SCAN_ISA") or "auto").lower()
        if isa not in self._ISAS:
            raise InputError(f"unknown VSRT_SCAN_ISA / isa '{isa}' (choose from {', '.join(self._ISAS)})")
        self._isa = self._ISAS[isa]
        self.isa = self._scan.isa(self._isa)
        if self.isa is None:
            raise BackendUnavailableError(f"this CPU cannot run the '{isa}' search kernel (choose from: auto, "
                                          f"{', '.join(available_isas(self._scan))})")

    @staticmethod
    def prepare(queries: np.ndarray) -> np.ndarray:
        """The queries as this kernel takes them: ``[M, D]`` float32, contiguous."""
        return np.ascontiguousarray(queries, np.float32)

    def __call__(self, codes: np.ndarray, scales: np.ndarray | None, queries: np.ndarray, k: int,
                 floors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of one block: ``(scores [k', M], indices [k', M])``. With ``floors`` (float32 ``[M]``), rows
        scoring below ``floors[q]`` may be left out for query ``q`` (the AVX512-FP16 kernel skips them without
        scoring them exactly); their places hold score ``-inf`` and index ``-1``."""
        kind = self._CODES.get(np.dtype(codes.dtype))
        if kind is None:
            raise InputError(f"search kernel cannot scan codes of dtype {codes.dtype}")
        codes = np.ascontiguousarray(codes)
        queries = self.prepare(queries)  # already prepared: no copy; the module reads raw float32 buffers
        n, d = codes.shape
        m = len(queries)
        out_s = np.empty((m, k), np.float32)
        out_i = np.empty((m, k), np.int64)
        sc = None if scales is None else np.ascontiguousarray(scales, np.float32).reshape(-1)
        fl = None if floors is None else np.ascontiguousarray(floors, np.float32).reshape(-1)
        kk = self._scan.topk(codes, kind, n, d, sc, queries, m, k, out_s, out_i, self._isa, fl)
        return out_s[:, :kk].T, out_i[:, :kk].T


_NATIVE_ERROR = ""


def _native_module() -> Any | None:
    """:mod:`vsrt.runtime._scan`, or ``None`` (with the reason in ``_NATIVE_ERROR``) where it was not built."""
    global _NATIVE_ERROR
    try:
        from vsrt.runtime import _scan
    except ImportError as exc:
        _NATIVE_ERROR = (f"{exc} (it is compiled when vsrt is installed from source with a C compiler present: "
                         "`pip install --force-reinstall --no-deps .`)")
        return None
    return _scan


def native_kernel_info() -> dict[str, Any]:
    """Whether the native scan kernel is built, which CPU kernel it runs here and which it can run, and that kernel's
    filter for FP16 batches (``None``, or its arithmetic and the batch size from which it is used) (the tests' skip
    reasons and the search benchmark's metadata; ``vsrt doctor`` reports the same through its probe)."""
    mod = _native_module()
    if mod is None:
        return {"available": False, "error": _NATIVE_ERROR}
    return {"available": True, "isa": mod.isa(0), "isas": available_isas(mod), "filter": mod.filter(0)}


#: FP32 galleries from this many queries per batch on go to ONNX Runtime: with no conversion to fuse, MLAS's GEMM
#: beats the native scan's FMAs once a batch is compute-bound (``benchmarks/search.py``: 100K × 2048 FP32, batch 32,
#: native 150 ms vs ONNX Runtime 112 ms; batch 8, 68 vs 82 ms)
AUTO_FP32_ORT_FROM = 16


def auto_kernel(dtype: np.dtype | type, queries: int) -> str:
    """The kernel ``"auto"`` picks for codes of ``dtype`` and a batch of ``queries``: ``native`` where it was built
    (except FP32 batches from :data:`AUTO_FP32_ORT_FROM` on), else ``ort``."""
    if _native_module() is None:
        return "ort"
    if np.dtype(dtype) == np.float32 and queries >= AUTO_FP32_ORT_FROM:
        return "ort"
    return "native"


_KERNELS: dict[str, Any] = {}
_KERNELS_LOCK = threading.Lock()


def get_kernel(name: str = "auto") -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The shared block kernel called ``name`` (``auto``, ``native``, ``ort`` or ``numpy``); ``auto`` here is
    ``native`` where it was built, else ``ort`` (:func:`exact_search` also weighs dtype and batch:
    :func:`auto_kernel`)."""
    if name not in KERNELS:
        raise InputError(f"unknown search kernel '{name}' (choose from {', '.join(KERNELS)})")
    if name == "auto":
        name = "native" if _native_module() is not None else "ort"
    with _KERNELS_LOCK:
        if name not in _KERNELS:
            _KERNELS[name] = {"native": NativeKernel, "ort": OrtKernel, "numpy": NumpyKernel}[name]()
        return _KERNELS[name]


# ---------------------------------------------------------------------------------------------------- merging
def _select(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the ``k`` best ``(score, id)`` pairs of ``scores/ids [T, M]`` sorted by score desc, id asc;
    returned as ``[M, k]``."""
    t = scores.shape[0]
    kk = min(k, t)
    if kk < t:
        part = np.argpartition(-scores, kk - 1, axis=0)[:kk]
        # include everything tied with the k-th score so that the id tie-break is exact
        kth = np.take_along_axis(scores, part, axis=0).min(axis=0)
        scores_sel, ids_sel = [], []
        for j in range(scores.shape[1]):
            mask = scores[:, j] >= kth[j]
            scores_sel.append(scores[mask, j])
            ids_sel.append(ids[mask, j])
    else:
        scores_sel = [scores[:, j] for j in range(scores.shape[1])]
        ids_sel = [ids[:, j] for j in range(scores.shape[1])]
    out_s = np.full((scores.shape[1], kk), -np.inf, np.float32)
    out_i = np.full((scores.shape[1], kk), -1, np.int64)
    for j, (s, i) in enumerate(zip(scores_sel, ids_sel)):
        order = np.lexsort((i, -s))[:kk]
        out_s[j, : len(order)] = s[order]
        out_i[j, : len(order)] = i[order]
    return out_s, out_i


class _Merger:
    """Keeps the running top-k per query from per-block candidates (memory bounded by ``k`` × blocks held)."""

    def __init__(self, m: int, k: int) -> None:
        self.k = k
        self.scores: list[np.ndarray] = []  # each [kk, M]
        self.ids: list[np.ndarray] = []
        self.rows = 0
        self.m = m
        self._best = np.full((m, 0), -np.inf, np.float32)  # the k best scores so far per query (for floors)

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        self.scores.append(scores)
        self.ids.append(ids)
        self.rows += len(scores)
        best = np.concatenate([self._best, scores.T], axis=1)
        if best.shape[1] > self.k:
            best = -np.partition(-best, self.k - 1, axis=1)[:, : self.k]
        self._best = best
        if self.rows > 64 * self.k:
            s, i = self._merged()
            self.scores, self.ids, self.rows = [s.T.copy()], [i.T.copy()], s.shape[1]

    def floors(self) -> np.ndarray | None:
        """Per query, the k-th best score merged so far: a lower bound on the final k-th best (``None`` until every
        query has ``k`` finite candidates)."""
        best = self._best
        if best.shape[1] < self.k:
            return None
        kth = best.min(axis=1)
        return kth if np.isfinite(kth).all() else None

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.scores:
            return np.zeros((self.m, 0), np.float32), np.zeros((self.m, 0), np.int64)
        return _select(np.concatenate(self.scores), np.concatenate(self.ids), self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self._merged()


# ---------------------------------------------------------------------------------------------------- search
def exact_search(
    blocks: Sequence[Block],
    queries: np.ndarray,
    k: int = 10,
    block_rows: int | None = None,
    threads: int | None = None,
    kernel: str | NativeKernel | OrtKernel | NumpyKernel = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries [M, D]`` over ``blocks`` (``(start, codes, scales)``).

    ``kernel``: a name from :data:`KERNELS`, or a kernel object (``NativeKernel("avx512")`` to run one CPU kernel
    of the native module side by side with another). Returns ``(scores [M, k'], indices [M, k'])`` with
    ``k' = min(k, items)``, best first (ties: lower index first). Scores of INT8 codes include their per-vector
    scales.
    """
    q = np.asarray(queries, np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2:
        raise InputError(f"queries must have shape [M, D], got {list(q.shape)}")
    if not np.isfinite(q).all():
        raise InputError("queries contain NaN or Inf")
    if int(k) < 1:
        raise InputError(f"k must be >= 1, got {k}")
    k = int(k)
    dims = {b[1].shape[1] for b in blocks if len(b[1])}
    if dims and dims != {q.shape[1]}:
        raise InputError(f"queries have dimension {q.shape[1]}, the gallery {sorted(dims)[0]}")
    if kernel == "auto":
        dtype = next((b[1].dtype for b in blocks if len(b[1])), np.dtype(np.float16))
        kernel = auto_kernel(dtype, len(q))
    fn = get_kernel(kernel) if isinstance(kernel, str) else kernel
    prepared = fn.prepare(q)
    work: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    nthreads = max(1, threads or default_threads())
    total = sum(len(b[1]) for b in blocks)
    for start, codes, scales in blocks:
        n = len(codes)
        if n == 0:
            continue
        rows = block_rows or default_block_rows(codes.shape[1], codes.dtype, fn.name, total, nthreads)
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            work.append((start + lo, codes[lo:hi], None if scales is None else scales[lo:hi]))
    merger = _Merger(q.shape[0], k)

    floors = getattr(fn, "uses_floors", False)

    def run(item: tuple[int, np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        start, codes, scales = item
        if floors:  # blocks merged so far bound each query's final k-th best score from below
            values, indices = fn(codes, scales, prepared, k, merger.floors())
            return values, np.where(indices < 0, -1, indices + start)
        values, indices = fn(codes, scales, prepared, k)
        return values, indices + start

    nthreads = min(nthreads, max(1, len(work)))
    if nthreads <= 1:
        for item in work:
            merger.add(*run(item))
    else:
        for values, indices in _scan_pool(nthreads).map(run, work):
            merger.add(values, indices)
    return merger.result()


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k results ``(scores [M, k_i], ids [M, k_i])`` into the global top-``k``.

    Exact whenever each shard returned its own top-k (the global top-k of a query is in the union); ids must be
    globally unique (e.g. shard offset + item index). Padding entries (id -1) are ignored.
    """
    if not parts:
        raise InputError("no shard results to merge")
    m = {np.asarray(s).shape[0] for s, _ in parts}
    if len(m) != 1:
        raise InputError(f"shard results have different query counts: {sorted(m)}")
    scores = np.concatenate([np.asarray(s, np.float32) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, np.int64) for _, i in parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    return _select(scores.T, ids.T, int(k))


def brute_force(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full score matrix, stable sort (ties by index). For tests and small galleries."""
    s = np.asarray(queries, np.float32) @ np.asarray(items, np.float32).T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order.astype(np.int64)


@dataclass
class SearchResult:
    """Top-k per query: ``scores [M, k]``, ``indices [M, k]`` (gallery item numbers), and the gallery for keys."""

    scores: np.ndarray
    indices: np.ndarray
    gallery: Any = None

    def __len__(self) -> int:
        return len(self.scores)

    def hits(self, query: int = 0) -> list[dict[str, Any]]:
        """Query ``query``'s results, best first: ``{"rank", "index", "score", "key", "meta"}``."""
        out = []
        for r, (s, i) in enumerate(zip(self.scores[query], self.indices[query])):
            if i < 0:
                continue
            hit: dict[str, Any] = {"rank": r + 1, "index": int(i), "score": float(s)}
            if self.gallery is not None:
                item = self.gallery.item(int(i))
                hit["key"], hit["meta"] = item["key"], item["meta"]
            out.append(hit)
        return out

    def to_json(self, queries: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One ``{"query", "hits"}`` entry per query (JSON-ready)."""
        return [{"query": queries[j] if queries is not None else j, "hits": self.hits(j)} for j in range(len(self))]


# ---------------------------------------------------------------------------------------------------- modalities
def search_texts(gallery: Any, model: Any, texts: Sequence[str], k: int = 10, **options: Any) -> SearchResult:
    """Captions → the gallery's best items (text→image on an image gallery). Checks the model first."""
    if isinstance(texts, str):
        texts = [texts]
    gallery.check_model(model)
    return gallery.search(model.encode_texts(list(texts)), k, **options)


def search_regions(gallery: Any, model: Any, regions: np.ndarray, k: int = 10, **options: Any) -> SearchResult:
    """Region features ``[N, R, F]`` → the gallery's best items (image→text on a caption gallery)."""
    gallery.check_model(model)
    return gallery.search(model.encode_regions(np.asarray(regions, np.float32)), k, **options)


def search_images(gallery: Any, model: Any, images: Sequence[Any], k: int = 10, **options: Any) -> SearchResult:
    """Raw images (paths or arrays, through the model's detector) → the gallery's best items."""
    gallery.check_model(model)
    return gallery.search(model.encode_images(list(images)), k, **options)


# ---------------------------------------------------------------------------------------------------- faiss
def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise BackendUnavailableError(
            "faiss is not installed: `pip install faiss-cpu` (or faiss-gpu on a CUDA x86-64 server); exact search "
            "needs no faiss"
        ) from None
    return faiss


def _safe_name(factory: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in factory)


class FaissSearcher:
    """A faiss index (inner product) over a gallery's dequantised embeddings.

    Args:
        index: a faiss index whose ids are gallery item numbers.
        factory: the ``faiss.index_factory`` string it was built from.
    """

    def __init__(self, index: Any, factory: str) -> None:
        self.index = index
        self.factory = factory

    @classmethod
    def build(cls, gallery: Any, factory: str = "Flat", train_size: int = 100_000, block: int = 65_536,
              nprobe: int | None = None, progress: Callable[[int, int], None] | None = None) -> FaissSearcher:
        """Build ``factory`` (``Flat``, ``SQfp16``, ``SQ8``, ``IVF1024,Flat``, ``HNSW32``…) over ``gallery``,
        streaming it in blocks of ``block`` items; IVF/PQ indexes train on an evenly spaced sample."""
        faiss = _faiss()
        try:
            index = faiss.index_factory(gallery.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InputError(f"faiss cannot build index '{factory}': {exc}") from None
        n = len(gallery)
        if n == 0:
            raise InputError(f"gallery {gallery.path} is empty")
        if not index.is_trained:
            idx = np.unique(np.linspace(0, n - 1, min(n, train_size)).astype(np.int64))
            index.train(gallery.take(idx))
        for lo in range(0, n, block):
            index.add(gallery.embeddings(lo, lo + block))
            if progress:
                progress(min(n, lo + block), n)
        s = cls(index, factory)
        if nprobe is not None:
            s.set_nprobe(nprobe)
        return s

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists probed per query (more: slower, closer to exact)."""
        faiss = _faiss()
        with contextlib.suppress(RuntimeError):  # not an IVF index: nothing to set
            faiss.extract_index_ivf(self.index).nprobe = int(nprobe)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [M, k], indices [M, k])``; index -1 marks an empty slot (fewer than k reachable)."""
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, np.float32)))
        scores, idx = self.index.search(q, int(k))
        return scores.astype(np.float32), idx.astype(np.int64)

    # -- caching beside the gallery
    @staticmethod
    def cache_paths(gallery: Any, factory: str) -> tuple[Path, Path]:
        base = Path(gallery.path) / "faiss" / _safe_name(factory)
        return base.with_suffix(".index"), base.with_suffix(".json")

    @staticmethod
    def _stamp(gallery: Any, factory: str) -> dict[str, Any]:
        faiss = _faiss()
        last = gallery.commits()[-1] if len(gallery) else {}
        return {"factory": factory, "items": len(gallery), "segments": len(gallery.segments),
                "last_commit": last.get("files", {}).get("emb", {}).get("sha256", ""), "faiss": faiss.__version__}

    def save(self, gallery: Any) -> Path:
        """Write the index beside ``gallery`` (atomic), stamped with the gallery's last commit."""
        from vsrt.io import atomic_write_bytes, atomic_write_json

        faiss = _faiss()
        ipath, jpath = self.cache_paths(gallery, self.factory)
        data = faiss.serialize_index(self.index).tobytes()
        atomic_write_bytes(ipath, data)
        stamp = {**self._stamp(gallery, self.factory), "index_sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_json(jpath, stamp)
        return ipath

    @classmethod
    def load_or_build(cls, gallery: Any, factory: str = "Flat", nprobe: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> FaissSearcher:
        """The cached index for ``gallery`` if it is current (same items and last commit) and matches its recorded
        SHA-256, else a new one, saved."""
        import json

        faiss = _faiss()
        ipath, jpath = cls.cache_paths(gallery, factory)
        if ipath.is_file() and jpath.is_file():
            try:
                stamp = json.loads(jpath.read_text())
            except json.JSONDecodeError:
                stamp = {}
            want = stamp.pop("index_sha256", None) if isinstance(stamp, dict) else None
            if stamp == cls._stamp(gallery, factory):
                raw = ipath.read_bytes()
                if hashlib.sha256(raw).hexdigest() == want:  # a damaged or foreign cache file is rebuilt, never read
                    s = cls(faiss.deserialize_index(np.frombuffer(raw, np.uint8)), factory)
                    if s.index.ntotal == len(gallery):
                        if nprobe is not None:
                            s.set_nprobe(nprobe)
                        return s
        s = cls.build(gallery, factory, nprobe=nprobe, progress=progress)
        s.save(gallery)
        return s


def recall_vs_exact(approx_indices: np.ndarray, exact_indices: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k (recall@k against exact search)."""
    a = np.asarray(approx_indices)
    e = np.asarray(exact_indices)
    if a.shape[0] != e.shape[0]:
        raise InputError(f"{a.shape[0]} approximate vs {e.shape[0]} exact result rows")
    return float(np.mean([len(np.intersect1d(x[x >= 0], y)) / max(1, len(y)) for x, y in zip(a, e)]))
