"""The native fused scan kernel (vsrt.runtime._scan): built where a C compiler exists, and equal to brute force on
every CPU kernel this machine can run (generic is the portable code AArch64 uses), for every storage dtype."""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vsrt.runtime.search import NativeKernel, exact_search, native_kernel_info

INFO = native_kernel_info()
ISAS = INFO.get("isas", [])
needs_native = pytest.mark.skipif(not INFO["available"], reason=f"native kernel not built: {INFO.get('error')}")


def test_native_kernel_is_built_where_a_compiler_exists() -> None:
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on this machine, so the optional extension was not built")
    assert INFO["available"], INFO.get("error")
    assert "generic" in INFO["isas"] and INFO["isa"] in INFO["isas"]
    if sys.platform.startswith("linux") and "avx2" in Path("/proc/cpuinfo").read_text():
        assert INFO["isa"] in ("avx2", "avx512", "avx512fp16", "avx512bf16")  # x86 SIMD, not the portable one


def _codes(rng: np.random.Generator, n: int, d: int, dtype: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Codes, scales and the float64 values they stand for."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    if dtype == "int8":
        codes = rng.integers(-127, 128, (n, d)).astype(np.int8)
        scales = rng.uniform(0.001, 0.02, n).astype(np.float32)
        return codes, scales, codes.astype(np.float64) * scales.astype(np.float64)[:, None]
    codes = x.astype(dtype)
    return codes, None, codes.astype(np.float64)


def _check(kernel: NativeKernel, codes: np.ndarray, scales: np.ndarray | None, values: np.ndarray, q: np.ndarray,
           k: int) -> None:
    s, i = kernel(codes, scales, kernel.prepare(q), k)
    ref = q.astype(np.float64) @ values.T
    kk = min(k, len(codes))
    assert s.shape == i.shape == (kk, len(q))
    order = np.argsort(-ref, axis=1, kind="stable")[:, :kk]
    ref_s = np.take_along_axis(ref, order, 1)
    tol = 1e-5 * np.abs(q).sum(1, keepdims=True) * np.abs(values).max()
    assert np.all(np.abs(s.T - ref_s) <= tol + 1e-6)
    # the same items, except where a float32 rounding difference can swap near-tied neighbours
    got_true = np.take_along_axis(ref, i.T, 1)
    assert np.all(np.abs(got_true - ref_s) <= tol + 1e-6)
    assert np.all(np.diff(s.T, axis=1) <= 0)  # best first


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_every_cpu_kernel_equals_brute_force(isa: str, dtype: str) -> None:
    kernel = NativeKernel(isa)
    rng = np.random.default_rng(len(isa) * 7 + len(dtype))
    shapes = [(1, 1, 1, 1), (3, 7, 2, 5), (4, 8, 6, 4), (5, 15, 7, 3), (9, 16, 13, 9), (13, 17, 1, 20),
              (250, 33, 12, 10), (101, 100, 32, 7), (64, 2048, 8, 10)]
    for n, d, m, k in shapes:
        codes, scales, values = _codes(rng, n, d, dtype)
        q = rng.standard_normal((m, d)).astype(np.float32)
        _check(kernel, codes, scales, values, q, k)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_every_float16_value_decodes_exactly(isa: str) -> None:
    """All 63,488 finite half-precision values (subnormals included), read through one-hot queries."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    vals = bits.view(np.float16)
    vals = vals[np.isfinite(vals)]
    codes = np.ascontiguousarray(vals.reshape(-1, 8))
    q = np.eye(8, dtype=np.float32)
    s, i = NativeKernel(isa)(codes, None, q, len(codes))
    for j in range(8):
        got = np.empty(len(codes), np.float32)
        got[i[:, j]] = s[:, j]
        assert np.array_equal(got, codes[:, j].astype(np.float32)), j  # exact (-0 sums to +0, which compares equal)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_ties_keep_the_lower_index(isa: str) -> None:
    codes = np.ones((23, 19), np.float16)
    codes[[5, 17]] = 2.0
    s, i = NativeKernel(isa)(codes, None, np.ones((3, 19), np.float32), 6)
    assert i.T.tolist() == [[5, 17, 0, 1, 2, 3]] * 3


def _fp16_case(rng: np.random.Generator, trial: int) -> tuple[np.ndarray, np.ndarray, int]:
    """FP16 codes, queries and k for one case of the filter kernels' equality test: random shapes (d with and without
    a tail of 32), and every 8th case each of the inputs where a filter is close to its error bound or overflows."""
    n, d = int(rng.integers(1, 400)), int(rng.choice([1, 7, 31, 32, 33, 100, 255, 256, 257, 500, 2048]))
    m, k = int(rng.integers(2, 20)), int(rng.integers(1, 40))
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((m, d)).astype(np.float32)
    mode = trial % 8
    if mode == 1:  # every row equal: ties everywhere
        x[:] = x[0]
    elif mode == 2:  # near duplicates: scores within the filter's error of each other
        x[rng.random(n) < 0.5] = x[0] + 1e-3 * rng.standard_normal(d)
    elif mode == 3:  # norms from 1e-6 (FP16 subnormals) to 1e2; queries from 1e-20 to 1e20, some from 1e-45 (float32
        x *= 10.0 ** rng.integers(-6, 3, (n, 1))  # subnormals, which BF16 reads as 0) to 1e33 (past the BF16 bound)
        q *= 10.0 ** rng.integers(-20, 21, (m, 1))
        if trial % 16 == 11:
            q *= 10.0 ** rng.integers(-25, 14, (m, 1))
    elif mode == 4:  # a zero query, a tiny one, a huge one and one with NaN or infinity
        q[0] = 0.0
        q[-1] *= 1e-30
        q[1, 0] = np.nan if trial % 16 == 4 else np.inf
        if m > 3:
            q[2] = 3e38
    elif mode == 5:  # unit rows, as galleries hold them
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    elif mode == 6:  # values whose FP16 products and norms overflow: every row goes to the exact re-score
        x *= 300.0
    elif mode == 7:  # NaN or infinity in some codes
        x[rng.random((n, d)) < 0.01] = np.inf if trial % 16 == 7 else np.nan
    return x.astype(np.float16), q, k


@pytest.mark.parametrize("isa", ["avx512fp16", "avx512bf16"])
def test_filter_kernels_equal_avx512_bit_for_bit(isa: str) -> None:
    """The FP16 / BF16 filter plus exact re-score gives the AVX-512 kernel's scores and indices exactly, bound
    included, for batches of 2 to 19 queries (query groups of every size)."""
    if isa not in ISAS:
        pytest.skip(f"this CPU has no {isa.upper().replace('AVX512', 'AVX512-')} (or the kernel is not built)")
    fast, avx512 = NativeKernel(isa), NativeKernel("avx512")
    rng = np.random.default_rng(11)
    for trial in range(160):
        codes, q, k = _fp16_case(rng, trial)
        a, b = fast(codes, None, q, k), avx512(codes, None, q, k)
        assert np.array_equal(a[1], b[1]), trial
        assert np.array_equal(a[0], b[0], equal_nan=True), trial


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_floors_only_leave_out_rows_below_them(isa: str) -> None:
    """With floors, every row scoring at or above its query's floor is still in the result, in the same place;
    the places of rows left out hold score -inf and index -1."""
    kernel = NativeKernel(isa)
    rng = np.random.default_rng(12)
    codes = rng.standard_normal((3000, 96)).astype(np.float16)
    q = rng.standard_normal((6, 96)).astype(np.float32)
    full_s, full_i = kernel(codes, None, q, 20)
    floors = full_s[[2, 5, 9, 12, 19, 0], np.arange(6)]  # the 3rd, 6th, … best score of each query
    floors[5] = np.float32(-np.inf)  # no floor for the last query
    s, i = kernel(codes, None, q, 20, floors)
    assert s.shape == i.shape == (20, 6)
    for j in range(6):
        keep = full_s[:, j] >= floors[j]
        assert np.array_equal(s[keep, j], full_s[keep, j]) and np.array_equal(i[keep, j], full_i[keep, j])
        rest = ~keep
        assert np.all((i[rest, j] == -1) == (s[rest, j] == -np.inf))
        assert np.all(s[rest, j] < floors[j])
    assert np.array_equal(i[:, 5], full_i[:, 5])


@needs_native
def test_inputs_it_must_copy_or_refuse(tmp_path: Path) -> None:
    kernel = NativeKernel()
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((40, 64)).astype(np.float16)
    q = rng.standard_normal((2, 32)).astype(np.float32)
    s1, i1 = kernel(wide[:, :32], None, q, 5)  # not contiguous: copied
    s2, i2 = kernel(np.ascontiguousarray(wide[:, :32]), None, q, 5)
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    path = tmp_path / "codes.npy"
    np.save(path, wide)
    mm = np.load(path, mmap_mode="r")  # read-only memory map, as gallery segments are
    s3, i3 = kernel(mm, None, rng.standard_normal((1, 64)).astype(np.float32), 3)
    assert s3.shape == (3, 1)
    from vsrt.runtime import _scan

    out_s, out_i = np.empty((1, 3), np.float32), np.empty((1, 3), np.int64)
    with pytest.raises(ValueError, match="codes holds"):
        _scan.topk(wide, 1, 41, 64, None, q[:1, :1].repeat(64, 1), 1, 3, out_s, out_i)
    with pytest.raises(ValueError, match="out_indices holds"):
        _scan.topk(wide, 1, 40, 64, None, np.zeros((1, 64), np.float32), 1, 3, out_s, out_i[:, :2])
    with pytest.raises(TypeError):
        _scan.topk(wide, 1, 40, 64, None, np.zeros((1, 64), np.float32), 1, 3, out_s, out_i.copy().data.toreadonly())


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_exact_search_runs_a_given_cpu_kernel(isa: str) -> None:
    """exact_search takes a kernel object (how the search benchmark runs the AVX-512 kernel beside the filtered one):
    each CPU kernel, through the blocks and threads, equals brute force; queries of another dtype are converted, not
    misread as float32."""
    rng = np.random.default_rng(13)
    codes = rng.standard_normal((5000, 64)).astype(np.float16)
    q = rng.standard_normal((9, 64))  # float64
    ref_s, ref_i = (q.astype(np.float32) @ codes.astype(np.float32).T), None
    ref_i = np.argsort(-ref_s, axis=1, kind="stable")[:, :7]
    kernel = NativeKernel(isa)
    s, i = exact_search([(0, codes, None)], q, 7, block_rows=600, threads=2, kernel=kernel)
    assert np.array_equal(i, ref_i)
    s2, i2 = kernel(codes, None, q, 7)  # called directly with float64 queries: converted
    assert np.array_equal(i2.T, ref_i) and np.allclose(s2.T, s, atol=1e-4)


@needs_native
def test_threads_scan_in_parallel_with_the_same_result() -> None:
    """The GIL is released: blocks scanned from several threads give the single-thread result."""
    rng = np.random.default_rng(4)
    codes = rng.standard_normal((20000, 96)).astype(np.float16)
    q = rng.standard_normal((5, 96)).astype(np.float32)
    one = exact_search([(0, codes, None)], q, 10, block_rows=1000, threads=1, kernel="native")
    many = exact_search([(0, codes, None)], q, 10, block_rows=1000, threads=4, kernel="native")
    assert np.array_equal(one[1], many[1]) and np.array_equal(one[0], many[0])
    kernel = NativeKernel()
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: kernel(codes, None, q, 10), range(4)))
    assert all(np.array_equal(o[1], outs[0][1]) for o in outs)


@needs_native
def test_unknown_isa_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from vsrt.errors import InputError

    monkeypatch.setenv("VSRT_SCAN_ISA", "sse9")
    with pytest.raises(InputError, match="VSRT_SCAN_ISA"):
        NativeKernel()


@needs_native
def test_fma_rate_probe() -> None:
    """The benchmark's compute-ceiling probe: positive float32 rate on x86 with AVX2 or AVX-512, FP16 only with
    AVX512-FP16 and BF16 dot products only with AVX512-BF16 (about twice the float32 rate there), a clear error for an
    unknown kind."""
    from vsrt.runtime import _scan

    f32, f16, bf16 = _scan.fma_rate(0, 0.05), _scan.fma_rate(1, 0.05), _scan.fma_rate(2, 0.05)
    isas = set(INFO["isas"])
    assert (f32 > 1e9) == bool(isas & {"avx2", "avx512"})
    assert (f16 > 1e9) == ("avx512fp16" in isas)
    assert (bf16 > 1e9) == ("avx512bf16" in isas)
    for rate in (f16, bf16):
        if rate:  # 32 products per instruction instead of 16 (this shared machine's speed varies: no tighter bound)
            assert rate > f32
    with pytest.raises(ValueError, match="kind"):
        _scan.fma_rate(3)


@pytest.mark.parametrize("compiler", ["cc", "clang"])
def test_kernel_header_alone_with_the_host_compiler(tmp_path: Path, compiler: str) -> None:
    """tests/native/scan_check.c built for this machine with the default C compiler and with clang (whose older
    releases lack some intrinsics the kernels use: those kernels must then be left out, not break the build): prefetch
    plans cover their shares, and the top-k of the CPU's own kernel and the portable one equal a double-precision
    brute force (FP16 codes are zeros off AArch64)."""
    import subprocess

    cc = shutil.which(compiler) or (compiler == "cc" and shutil.which("gcc"))
    if not cc:
        pytest.skip(f"needs the C compiler '{compiler}' (apt install {'gcc' if compiler == 'cc' else 'clang'})")
    exe = tmp_path / "scan_check"
    src = Path(__file__).parent / "native" / "scan_check.c"
    subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Werror", str(src), "-o", str(exe), "-lm"],
                   check=True, capture_output=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok (kernel generic)" in out.stdout and "prefetch" not in out.stdout


def test_aarch64_kernels_under_qemu(tmp_path: Path) -> None:
    """Jetson's code path (NEON and the portable kernel), cross-compiled and run in qemu: tests/native/scan_check.c."""
    import subprocess

    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not (cc and qemu):
        pytest.skip("needs an AArch64 cross compiler and qemu-user (apt install gcc-aarch64-linux-gnu "
                    "libc6-dev-arm64-cross qemu-user)")
    exe = tmp_path / "scan_check"
    src = Path(__file__).parent / "native" / "scan_check.c"
    subprocess.run([cc, "-O3", "-std=gnu11", "-Wall", "-Werror", "-static", str(src), "-o", str(exe), "-lm"],
                   check=True, capture_output=True)
    out = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok (kernel neon)" in out.stdout and "ok (kernel generic)" in out.stdout
