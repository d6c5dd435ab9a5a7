/*
 * vsrt.runtime._scan: fused exact top-k scan over a block of gallery codes (FP32, FP16 or INT8 rows).
 *
 * One pass over the codes: each small tile of rows is decoded to float32 in registers (FP16 -> F16C / AVX-512
 * `vcvtph2ps`, INT8 -> sign-extend + convert), multiplied into every query with float32 FMAs while the tile is in
 * L1, and each score goes straight into a per-query bounded heap. Nothing the size of the block is ever written,
 * so the scan runs at memory speed for few queries and at FMA speed for many: what numpy (no SIMD float16) and
 * ONNX Runtime (Cast, then MatMul, then TopK, each a separate pass) cannot do.
 *
 * Kernels: AVX-512 (F+BW+VL) and AVX2+FMA+F16C on x86-64, chosen at run time from the CPU; NEON on AArch64 (Jetson);
 * a portable C kernel everywhere (and for tests, `isa=1`). On CPUs with AVX512-FP16 or AVX512-BF16, batches over FP16
 * codes are filtered in that cheaper arithmetic first and refined by the AVX-512 kernel (_scan_filter.h: the same
 * results, bit for bit). Scores are the
 * float32 dot product (times the row's scale for INT8); ties at the cut keep the lower row index, like ONNX TopK.
 * The GIL is released during the scan, so Python threads can scan different blocks in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <time.h>

#include "_scan_kernels.h"

/* ------------------------------------------------------------------------------------------------ Python */
static int need(Py_buffer *b, Py_ssize_t bytes, const char *what) {
    if (b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "_scan.topk: %s holds %zd bytes, needs %zd", what, b->len, bytes);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(topk_doc,
             "topk(codes, kind, n, d, scales, queries, m, k, out_scores, out_indices, isa=0, floors=None) -> int\n\n"
             "Exact top-k inner products of m float32 queries [m, d] over n C-contiguous code rows [n, d]\n"
             "(kind 0 float32, 1 float16, 2 int8; scales: float32 [n] or None). Writes best-first scores\n"
             "[m, k] and row indices [m, k] (int64) and returns min(k, n). isa: 0 auto, 1 generic, 2 avx2,\n"
             "3 avx512, 4 neon, 5 avx512fp16, 6 avx512bf16. floors: float32 [m] or None; rows scoring below\n"
             "floors[q] may be left out of query q's result, whose missing entries are then score -inf and\n"
             "index -1 (pass a lower bound on each query's final k-th best score, from blocks already scanned).\n"
             "Releases the GIL.");

static PyObject *py_topk(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes = {0}, queries = {0}, out_s = {0}, out_i = {0}, scales = {0}, floors = {0};
    PyObject *scales_obj = NULL, *floors_obj = Py_None, *result = NULL;
    int kind = 0, isa_id = ISA_AUTO;
    Py_ssize_t n = 0, d = 0, m = 0, k = 0;
    if (!PyArg_ParseTuple(args, "y*innOy*nnw*w*|iO", &codes, &kind, &n, &d, &scales_obj, &queries, &m, &k, &out_s,
                          &out_i, &isa_id, &floors_obj))
        return NULL;
    const int have_scales = scales_obj != Py_None, have_floors = floors_obj != Py_None;
    if (have_scales && PyObject_GetBuffer(scales_obj, &scales, PyBUF_SIMPLE) < 0) goto done;
    if (have_floors && PyObject_GetBuffer(floors_obj, &floors, PyBUF_SIMPLE) < 0) goto done;
    if (kind < CODE_F32 || kind > CODE_I8 || n < 0 || d < 1 || m < 1 || k < 1) {
        PyErr_SetString(PyExc_ValueError, "_scan.topk: bad kind, n, d, m or k");
        goto done;
    }
    const Isa *isa = isa_table(isa_id);
    if (!isa) {
        PyErr_Format(PyExc_RuntimeError, "_scan.topk: this CPU has no kernel for isa=%d", isa_id);
        goto done;
    }
    const Py_ssize_t esz = kind == CODE_F32 ? 4 : (kind == CODE_F16 ? 2 : 1);
    const Py_ssize_t kk = k < n ? k : n;
    if (!need(&codes, n * d * esz, "codes") || !need(&queries, m * d * 4, "queries") ||
        !need(&out_s, m * k * 4, "out_scores") || !need(&out_i, m * k * 8, "out_indices") ||
        (have_scales && !need(&scales, n * 4, "scales")) || (have_floors && !need(&floors, m * 4, "floors")))
        goto done;
    float *hs = malloc(sizeof(float) * (size_t)(m * (kk ? kk : 1)));
    int64_t *hi = malloc(sizeof(int64_t) * (size_t)(m * (kk ? kk : 1)));
    Heap *heaps = malloc(sizeof(Heap) * (size_t)m);
    if (!hs || !hi || !heaps) {
        free(hs);
        free(hi);
        free(heaps);
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t q = 0; q < m; ++q) heaps[q] = (Heap){hs + q * kk, hi + q * kk, 0, kk};
    int scanned = 1;
    Py_BEGIN_ALLOW_THREADS
    if (kk > 0)
        scanned = scan_block(isa, kind, (const char *)codes.buf, n, d,
                             have_scales ? (const float *)scales.buf : NULL, (const float *)queries.buf, m,
                             have_floors ? (const float *)floors.buf : NULL, heaps);
    if (scanned)
        for (Py_ssize_t q = 0; q < m; ++q) { /* row q of the outputs is k wide */
            float *os = (float *)out_s.buf + q * k;
            int64_t *oi = (int64_t *)out_i.buf + q * k;
            const int64_t kept = heaps[q].size;
            heap_drain_sorted(&heaps[q], os, oi);
            for (int64_t j = kept; j < kk; ++j) { /* rows left out under the floor */
                os[j] = -INFINITY;
                oi[j] = -1;
            }
        }
    Py_END_ALLOW_THREADS
    free(hs);
    free(hi);
    free(heaps);
    result = scanned ? PyLong_FromSsize_t(kk) : PyErr_NoMemory();
done:
    PyBuffer_Release(&codes);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&out_s);
    PyBuffer_Release(&out_i);
    if (have_scales && scales.obj) PyBuffer_Release(&scales);
    if (have_floors && floors.obj) PyBuffer_Release(&floors);
    return result;
}

static PyObject *py_filter(PyObject *self, PyObject *args) {
    (void)self;
    int isa_id = ISA_AUTO;
    if (!PyArg_ParseTuple(args, "|i", &isa_id)) return NULL;
    const Isa *isa = isa_table(isa_id);
    if (!isa || !isa->filter) Py_RETURN_NONE;
    const FilterKernel *f = isa->filter;
    return Py_BuildValue("{s:s,s:i,s:i,s:i}", "arithmetic", f->arithmetic, "min_queries", f->min_queries, "rows",
                         f->rows, "queries_per_tile", f->group);
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    int isa_id = ISA_AUTO;
    if (!PyArg_ParseTuple(args, "|i", &isa_id)) return NULL;
    const Isa *isa = isa_table(isa_id);
    if (!isa) Py_RETURN_NONE;
    return PyUnicode_FromString(isa->name);
}

/* A memory-bandwidth probe for benchmarks/search.py: the sum of a buffer's 64-bit words (wrapping), read as the
 * scan reads its codes (several streams a page apart, software prefetch into L2), so that "the bandwidth limit" the
 * benchmark compares against is what this machine can actually deliver to a reader, not what numpy's sum reaches. */
static uint64_t stream_sum(const uint64_t *w, int64_t words) {
    enum { STREAMS = 4, PAGE_WORDS = 512, PF_AHEAD = 2 * PAGE_WORDS * STREAMS };
    uint64_t acc[STREAMS][8] = {{0}};
    int64_t i = 0;
    const int64_t group = (int64_t)STREAMS * PAGE_WORDS; /* STREAMS consecutive pages, read in parallel */
    for (; i + group <= words; i += group) {
        for (int64_t j = 0; j < PAGE_WORDS; j += 8) {
            for (int s = 0; s < STREAMS; ++s) {
                const uint64_t *p = w + i + (int64_t)s * PAGE_WORDS + j;
                if (i + PF_AHEAD + group <= words) __builtin_prefetch(p + PF_AHEAD, 0, PREFETCH_HINT);
                for (int l = 0; l < 8; ++l) acc[s][l] += p[l];
            }
        }
    }
    uint64_t total = 0;
    for (; i < words; ++i) total += w[i];
    for (int s = 0; s < STREAMS; ++s)
        for (int l = 0; l < 8; ++l) total += acc[s][l];
    return total;
}

/* A multiply-add rate probe for benchmarks/search.py, as stream_sum is a bandwidth one: FMAs into 16 independent
 * accumulators in registers (no memory traffic), `iters` rounds; float32 with AVX-512 or AVX2 + FMA, FP16 with
 * AVX512-FP16, or BF16 dot products (vdpbf16ps, 32 products into 16 float32 lanes) with AVX512-BF16. Returns the
 * flops done (0 where the CPU cannot), the accumulators' sum into *sink. */
/* NAME(iters, sink): the rounds with accumulators VEC and operands OPVEC of LANES products per instruction (SET1,
 * OPSET1, FMA(a, x, y): a multiply-add of a, x and y into a; ADD; SUM: one lane total as float). */
#define DEFINE_FMA_ROUNDS(NAME, TARGET, VEC, OPVEC, LANES, SCALAR, SET1, OPSET1, FMA, ADD, SUM)                      \
    TARGET static double NAME(int64_t iters, float *sink) {                                                          \
        VEC a[16];                                                                                                   \
        const OPVEC x = OPSET1((SCALAR)0.999f), y = OPSET1((SCALAR)0.001f);                                          \
        for (int i = 0; i < 16; ++i) a[i] = SET1((SCALAR)(0.01f * (float)i));                                       \
        for (int64_t it = 0; it < iters; ++it)                                                                       \
            for (int i = 0; i < 16; ++i) a[i] = FMA(a[i], x, y);                                                     \
        for (int i = 1; i < 16; ++i) a[0] = ADD(a[0], a[i]);                                                         \
        *sink += SUM(a[0]);                                                                                          \
        return (double)iters * 16 * LANES * 2;                                                                       \
    }
#if VSRT_X86
#define FMA_PS512(a, x, y) _mm512_fmadd_ps(a, x, y)
DEFINE_FMA_ROUNDS(fma_rounds_avx512, AVX512_TARGET, __m512, __m512, 16, float, _mm512_set1_ps, _mm512_set1_ps,
                  FMA_PS512, _mm512_add_ps, _mm512_reduce_add_ps)
#define FMA_PS256(a, x, y) _mm256_fmadd_ps(a, x, y)
DEFINE_FMA_ROUNDS(fma_rounds_avx2, AVX2_TARGET, __m256, __m256, 8, float, _mm256_set1_ps, _mm256_set1_ps, FMA_PS256,
                  _mm256_add_ps, hsum256)
#endif
#if VSRT_FP16
#define F16_LANE0(v) (f16_widen(v)[0])
#define FMA_PH512(a, x, y) _mm512_fmadd_ph(a, x, y)
DEFINE_FMA_ROUNDS(fma_rounds_fp16, FP16_TARGET, __m512h, __m512h, 32, _Float16, _mm512_set1_ph, _mm512_set1_ph,
                  FMA_PH512, _mm512_add_ph, F16_LANE0)
#endif
#if VSRT_BF16
#define BF16_SET1(f) ((__m512bh)bf16_pack(_mm512_set1_ps(f), _mm512_set1_ps(f)))
DEFINE_FMA_ROUNDS(fma_rounds_bf16, BF16_TARGET, __m512, __m512bh, 32, float, _mm512_set1_ps, BF16_SET1,
                  _mm512_dpbf16_ps, _mm512_add_ps, _mm512_reduce_add_ps)
#endif

static double fma_rounds(int kind, int64_t iters, float *sink) {
#if VSRT_FP16
    if (kind == 1) return cpu_has(ISA_AVX512FP16) ? fma_rounds_fp16(iters, sink) : 0.0;
#endif
#if VSRT_BF16
    if (kind == 2) return cpu_has(ISA_AVX512BF16) ? fma_rounds_bf16(iters, sink) : 0.0;
#endif
#if VSRT_X86
    if (kind == 0 && cpu_has(ISA_AVX512)) return fma_rounds_avx512(iters, sink);
    if (kind == 0 && cpu_has(ISA_AVX2)) return fma_rounds_avx2(iters, sink);
#endif
    (void)kind, (void)iters, (void)sink;
    return 0.0;
}

static double now_seconds(void) {
#if defined(CLOCK_MONOTONIC)
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
#else
    return 0.0;
#endif
}

static PyObject *py_fma_rate(PyObject *self, PyObject *args) {
    (void)self;
    int kind = 0;
    double seconds = 0.2;
    if (!PyArg_ParseTuple(args, "i|d", &kind, &seconds)) return NULL;
    if (kind < 0 || kind > 2) {
        PyErr_SetString(PyExc_ValueError, "fma_rate: kind is 0 (float32), 1 (FP16) or 2 (BF16 dot products)");
        return NULL;
    }
    double flops = 0.0, elapsed = 0.0;
    float sink = 0.0f;
    Py_BEGIN_ALLOW_THREADS
    const double t0 = now_seconds();
    do {
        const double f = fma_rounds(kind, 1 << 16, &sink);
        if (f == 0.0) break;
        flops += f;
        elapsed = now_seconds() - t0;
    } while (elapsed < seconds && elapsed > 0.0);
    Py_END_ALLOW_THREADS
    if (!isfinite(sink)) flops = 0.0; /* keeps the sums alive; never expected */
    return PyFloat_FromDouble(flops > 0.0 && elapsed > 0.0 ? flops / elapsed : 0.0);
}

static PyObject *py_stream_sum(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf = {0};
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    uint64_t total;
    Py_BEGIN_ALLOW_THREADS
    total = stream_sum((const uint64_t *)buf.buf, buf.len / 8);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLongLong(total);
}

static PyMethodDef methods[] = {
    {"topk", py_topk, METH_VARARGS, topk_doc},
    {"stream_sum", py_stream_sum, METH_VARARGS,
     "stream_sum(buffer) -> int: the wrapping sum of its 64-bit words (a read-bandwidth probe). Releases the GIL."},
    {"isa", py_isa, METH_VARARGS, "isa(isa=0) -> the kernel name used for that request on this CPU, or None."},
    {"filter", py_filter, METH_VARARGS,
     "filter(isa=0) -> {arithmetic, min_queries, rows, queries_per_tile} of that kernel's filter for FP16 batches "
     "(batches of min_queries or more are filtered in 'fp16' or 'bf16' arithmetic, then refined), or None."},
    {"fma_rate", py_fma_rate, METH_VARARGS,
     "fma_rate(kind, seconds=0.2) -> float: this thread's multiply-add flops per second (FMAs in registers, no memory "
     "traffic), kind 0 float32 (AVX-512 or AVX2), 1 FP16 (AVX512-FP16) or 2 BF16 dot products (AVX512-BF16, two "
     "products per float32 lane); 0.0 where the CPU has none. Releases the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", "Fused top-k scan over gallery codes.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
