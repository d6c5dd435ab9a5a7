/*
 * Kernels of vsrt.runtime._scan (see _scan.c): tile dot products decoded in registers, a bounded heap per query,
 * and scan_block(), which scans one block of code rows. Plain C (no Python), so that it can be compiled and tested
 * on its own, for instance for AArch64.
 */
#ifndef VSRT_SCAN_KERNELS_H
#define VSRT_SCAN_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VSRT_X86 1
#include <immintrin.h>
#else
#define VSRT_X86 0
#endif

enum { CODE_F32 = 0, CODE_F16 = 1, CODE_I8 = 2 };
enum { ISA_AUTO = 0, ISA_GENERIC = 1, ISA_AVX2 = 2, ISA_AVX512 = 3, ISA_NEON = 4, ISA_AVX512FP16 = 5, ISA_AVX512BF16 = 6,
       ISA_COUNT };

#define ROWS_PER_TILE 4 /* rows decoded once per tile and reused for every query tile */
#define MAX_QUERY_TILE 6
#define PREFETCH_HINT 2  /* into L2: measured faster than into L1 */
#define PREFETCH_TILES 1 /* prefetch distance, in row tiles (measured: 1 beats 2 and 3) */

/* ------------------------------------------------------------------------------------------- bounded heap */
/* A min-heap of the k best (score, index) so far; its root is the worst kept entry. "Worse" = lower score, or
 * equal score and higher index (rows arrive in increasing index order, so an equal score never displaces). */
typedef struct {
    float *score;
    int64_t *index;
    int64_t size;
    int64_t cap;
} Heap;

static inline int worse(float sa, int64_t ia, float sb, int64_t ib) {
    return sa < sb || (sa == sb && ia > ib);
}

static void heap_sift_down(Heap *h, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->size && worse(h->score[l], h->index[l], h->score[m], h->index[m])) m = l;
        if (r < h->size && worse(h->score[r], h->index[r], h->score[m], h->index[m])) m = r;
        if (m == i) return;
        float ts = h->score[i];
        int64_t ti = h->index[i];
        h->score[i] = h->score[m];
        h->index[i] = h->index[m];
        h->score[m] = ts;
        h->index[m] = ti;
        i = m;
    }
}

static inline void heap_offer(Heap *h, float s, int64_t idx) {
    if (h->size < h->cap) {
        int64_t i = h->size++;
        while (i > 0) {
            int64_t p = (i - 1) / 2;
            if (!worse(s, idx, h->score[p], h->index[p])) break;
            h->score[i] = h->score[p];
            h->index[i] = h->index[p];
            i = p;
        }
        h->score[i] = s;
        h->index[i] = idx;
    } else if (s > h->score[0]) { /* NaN never enters a full heap */
        h->score[0] = s;
        h->index[0] = idx;
        heap_sift_down(h, 0);
    }
}

/* Pops the heap into out[0..size) best first. */
static void heap_drain_sorted(Heap *h, float *out_s, int64_t *out_i) {
    int64_t n = h->size;
    for (int64_t pos = n - 1; pos >= 0; --pos) {
        out_s[pos] = h->score[0];
        out_i[pos] = h->index[0];
        h->size--;
        if (h->size > 0) {
            h->score[0] = h->score[h->size];
            h->index[0] = h->index[h->size];
            heap_sift_down(h, 0);
        }
    }
}

/* ---------------------------------------------------------------------------------------- portable decode */
static inline float half_bits_to_float(uint16_t h) {
#if defined(__aarch64__)
    __fp16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while ((man & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

static inline __attribute__((always_inline)) float load_code(const void *codes, int kind, int64_t i) {
    switch (kind) {
        case CODE_F16: return half_bits_to_float(((const uint16_t *)codes)[i]);
        case CODE_I8: return (float)((const int8_t *)codes)[i];
        default: return ((const float *)codes)[i];
    }
}

/* ------------------------------------------------------------------------------------------ tile kernels */
/* Every kernel computes dots[r * nq + q] = <row r of the tile, query q> for nr <= ROWS_PER_TILE rows and
 * nq <= MAX_QUERY_TILE queries (queries are rows of `queries`, `d` floats apart). `next` (or NULL) is the next
 * tile's first byte: the kernels prefetch it a few lines per step, so that memory and FMAs overlap. Each row
 * of a large gallery is its own page, and hardware prefetchers stop at page boundaries. */
/* Floats between consecutive queries in the packed copy the kernels read: d rounded up to 16, plus 16. With d = 2048
 * the caller's rows are 8 KB apart, so every query's j-th vector falls in the same L1 set and six of them (plus the
 * row tile's four, 4 KB apart) evict each other; 64 extra bytes per row spreads them over different sets. */
static inline int64_t query_stride(int64_t d) { return ((d + 15) & ~(int64_t)15) + 16; }

typedef struct { /* a prefetch plan: `lines` 64-byte lines per inner step, from lo + (j << shift) for the step at j,
                  * while below end (lo = end = 0: none) */
    uintptr_t lo, end;
    int shift, lines;
} Prefetch;

/* The prefetch of `len` bytes at `next` spread over a kernel's `iters` inner steps of `lanes` values (a power of two,
 * at most 64) each: 1, 2, 4 or 8 lines per step, powers of two so that a step's address is its index j shifted (no
 * state to update per step: measured 10 % more FP16 tile throughput than a counter in memory). A share of fewer lines
 * than steps is done before the last steps. */
static inline Prefetch prefetch_plan(const char *next, int64_t len, int64_t iters, int lanes) {
    const int64_t lines = (len + 63) / 64;
    if (iters < 1) iters = 1;
    int per = 1, shift = 0;
    while (per < 8 && (int64_t)per * iters < lines) per *= 2;
    while ((1 << shift) * lanes < per * 64) ++shift; /* step s at byte s * per * 64 = j * per * 64 / lanes */
    const Prefetch pf = {(uintptr_t)next, (uintptr_t)next + (uintptr_t)len, shift, per};
    return pf;
}

/* Share `part` of `parts` (whole 64-byte lines, in order) of the tile_bytes at `next`, spread over `iters` steps of
 * `lanes` values: the query tiles (or groups) that read one row tile each prefetch their part of the next. */
static inline Prefetch prefetch_share(const char *next, int64_t tile_bytes, int64_t part, int64_t parts, int64_t iters,
                                      int lanes) {
    const int64_t share = ((tile_bytes + parts - 1) / parts + 63) / 64 * 64;
    const int64_t lo = part * share < tile_bytes ? part * share : tile_bytes;
    const int64_t hi = lo + share < tile_bytes ? lo + share : tile_bytes;
    return prefetch_plan(next + lo, hi - lo, iters, lanes);
}

/* The plan a kernel follows: *next, or none. */
static inline Prefetch prefetch_or_none(const Prefetch *next) {
    const Prefetch none = {0, 0, 0, 1};
    return next ? *next : none;
}

/* The prefetches of the inner step at j. */
static inline __attribute__((always_inline)) void prefetch_at(const Prefetch pf, int64_t j) {
    const uintptr_t p = pf.lo + ((uintptr_t)j << pf.shift);
    if (p < pf.end) {
        __builtin_prefetch((const void *)p, 0, PREFETCH_HINT);
        if (pf.lines >= 2) __builtin_prefetch((const void *)(p + 64), 0, PREFETCH_HINT);
        if (pf.lines >= 4) {
            __builtin_prefetch((const void *)(p + 128), 0, PREFETCH_HINT);
            __builtin_prefetch((const void *)(p + 192), 0, PREFETCH_HINT);
        }
        if (pf.lines >= 8)
            for (int l = 4; l < 8; ++l) __builtin_prefetch((const void *)(p + 64 * l), 0, PREFETCH_HINT);
    }
}

typedef void (*TileFn)(const void *rows, int64_t d, const float *queries, int nr, int nq, float *dots,
                       Prefetch *next);

/* The body of a tile function for kernels with 4-row tiles and up to 6 queries: calls FN with R and Q as
 * compile-time constants (so that FN's accumulators live in registers), for a full tile or a single last row. */
#define DISPATCH_4_ROWS_6_QUERIES(FN)                                                                                \
    switch ((nr == 4 ? 8 : 0) + nq) {                                                                                \
        case 8 + 1: FN(rows, d, queries, 4, 1, dots, next); return;                                                  \
        case 8 + 2: FN(rows, d, queries, 4, 2, dots, next); return;                                                  \
        case 8 + 3: FN(rows, d, queries, 4, 3, dots, next); return;                                                  \
        case 8 + 4: FN(rows, d, queries, 4, 4, dots, next); return;                                                  \
        case 8 + 5: FN(rows, d, queries, 4, 5, dots, next); return;                                                  \
        case 8 + 6: FN(rows, d, queries, 4, 6, dots, next); return;                                                  \
        case 1: FN(rows, d, queries, 1, 1, dots, next); return;                                                      \
        case 2: FN(rows, d, queries, 1, 2, dots, next); return;                                                      \
        case 3: FN(rows, d, queries, 1, 3, dots, next); return;                                                      \
        case 4: FN(rows, d, queries, 1, 4, dots, next); return;                                                      \
        case 5: FN(rows, d, queries, 1, 5, dots, next); return;                                                      \
        default: FN(rows, d, queries, 1, 6, dots, next); return;                                                     \
    }

#define LANES_GENERIC 8
/* Portable: 8 independent lanes per accumulator, so the compiler can vectorise without reassociating sums. */
#define DEFINE_GENERIC_TILE(KIND, CODE)                                                                              \
    static void tile_generic_##KIND(const void *rows, int64_t d, const float *queries, int nr, int nq,               \
                                    float *dots, Prefetch *next) {                                                   \
        float acc[ROWS_PER_TILE][MAX_QUERY_TILE][LANES_GENERIC];                                                     \
        memset(acc, 0, sizeof acc);                                                                                  \
        const int64_t qs = query_stride(d);                                                                          \
        const Prefetch pf = prefetch_or_none(next);                                                                  \
        int64_t j = 0;                                                                                               \
        for (; j + LANES_GENERIC <= d; j += LANES_GENERIC) {                                                         \
            prefetch_at(pf, j);                                                                                      \
            float x[ROWS_PER_TILE][LANES_GENERIC];                                                                   \
            for (int r = 0; r < nr; ++r)                                                                             \
                for (int l = 0; l < LANES_GENERIC; ++l) x[r][l] = load_code(rows, CODE, r * d + j + l);              \
            for (int q = 0; q < nq; ++q) {                                                                           \
                const float *qv = queries + q * qs + j;                                                              \
                for (int r = 0; r < nr; ++r)                                                                         \
                    for (int l = 0; l < LANES_GENERIC; ++l) acc[r][q][l] += x[r][l] * qv[l];                         \
            }                                                                                                        \
        }                                                                                                            \
        for (int r = 0; r < nr; ++r)                                                                                 \
            for (int q = 0; q < nq; ++q) {                                                                           \
                float s = 0.0f;                                                                                      \
                for (int l = 0; l < LANES_GENERIC; ++l) s += acc[r][q][l];                                           \
                for (int64_t t = j; t < d; ++t) s += load_code(rows, CODE, r * d + t) * queries[q * qs + t];         \
                dots[r * nq + q] = s;                                                                                \
            }                                                                                                        \
    }
DEFINE_GENERIC_TILE(f32, CODE_F32)
DEFINE_GENERIC_TILE(f16, CODE_F16)
DEFINE_GENERIC_TILE(i8, CODE_I8)

/* One template for the SIMD kernels: VEC holds LANES floats; R rows x Q queries accumulators, compile-time constants
 * at each call site (always_inline + a switch), so that they stay in registers; a scalar tail for d % LANES. */
#define DEFINE_SIMD_TILE_RQ(NAME, TARGET, VEC, LANES, ZERO, LOADX, LOADQ, FMA, HSUM, CODE)                           \
    static inline __attribute__((always_inline)) TARGET void NAME(const void *rows, int64_t d, const float *queries, \
                                                                  const int R, const int Q, float *dots,             \
                                                                  Prefetch *next) {                                  \
        VEC acc[ROWS_PER_TILE][MAX_QUERY_TILE];                                                                      \
        for (int r = 0; r < R; ++r)                                                                                  \
            for (int q = 0; q < Q; ++q) acc[r][q] = ZERO();                                                          \
        const int64_t qs = query_stride(d);                                                                          \
        const Prefetch pf = prefetch_or_none(next);                                                                  \
        int64_t j = 0;                                                                                               \
        for (; j + LANES <= d; j += LANES) {                                                                         \
            prefetch_at(pf, j);                                                                                      \
            VEC x[ROWS_PER_TILE];                                                                                    \
            for (int r = 0; r < R; ++r) x[r] = LOADX(rows, r * d + j);                                               \
            for (int q = 0; q < Q; ++q) {                                                                            \
                const VEC qv = LOADQ(queries + q * qs + j);                                                          \
                for (int r = 0; r < R; ++r) acc[r][q] = FMA(x[r], qv, acc[r][q]);                                    \
            }                                                                                                        \
        }                                                                                                            \
        for (int r = 0; r < R; ++r)                                                                                  \
            for (int q = 0; q < Q; ++q) {                                                                            \
                float s = HSUM(acc[r][q]);                                                                           \
                for (int64_t t = j; t < d; ++t) s += load_code(rows, CODE, r * d + t) * queries[q * qs + t];         \
                dots[r * Q + q] = s;                                                                                 \
            }                                                                                                        \
    }

#if VSRT_X86
/* x86 kernels: AVX-512 4 rows x 6 queries = 24 zmm accumulators, AVX2 3 x 4 = 12 ymm. */
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

AVX512_TARGET static inline __m512 z_f32(const void *p, int64_t i) { return _mm512_loadu_ps((const float *)p + i); }
AVX512_TARGET static inline __m512 z_f16(const void *p, int64_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
}
AVX512_TARGET static inline __m512 z_i8(const void *p, int64_t i) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)p + i))));
}

#define DEFINE_AVX512_TILE(KIND, CODE)                                                                               \
    DEFINE_SIMD_TILE_RQ(avx512_##KIND##_rq, AVX512_TARGET, __m512, 16, _mm512_setzero_ps, z_##KIND, _mm512_loadu_ps, \
                        _mm512_fmadd_ps, _mm512_reduce_add_ps, CODE)                                                 \
    static AVX512_TARGET void tile_avx512_##KIND(const void *rows, int64_t d, const float *queries, int nr,          \
                                                 int nq, float *dots, Prefetch *next) {                              \
        DISPATCH_4_ROWS_6_QUERIES(avx512_##KIND##_rq)                                                                \
    }
DEFINE_AVX512_TILE(f32, CODE_F32)
DEFINE_AVX512_TILE(f16, CODE_F16)
DEFINE_AVX512_TILE(i8, CODE_I8)

AVX2_TARGET static inline __m256 y_f32(const void *p, int64_t i) { return _mm256_loadu_ps((const float *)p + i); }
AVX2_TARGET static inline __m256 y_f16(const void *p, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}
AVX2_TARGET static inline __m256 y_i8(const void *p, int64_t i) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)p + i))));
}
AVX2_TARGET static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define DEFINE_AVX2_TILE(KIND, CODE)                                                                                 \
    DEFINE_SIMD_TILE_RQ(avx2_##KIND##_rq, AVX2_TARGET, __m256, 8, _mm256_setzero_ps, y_##KIND, _mm256_loadu_ps,      \
                        _mm256_fmadd_ps, hsum256, CODE)                                                              \
    static AVX2_TARGET void tile_avx2_##KIND(const void *rows, int64_t d, const float *queries, int nr, int nq,      \
                                           float *dots, Prefetch *next) { /* nr is 3 or 1; nq <= 4 */                \
        switch ((nr == 3 ? 8 : 0) + nq) {                                                                            \
            case 8 + 1: avx2_##KIND##_rq(rows, d, queries, 3, 1, dots, next); return;                                \
            case 8 + 2: avx2_##KIND##_rq(rows, d, queries, 3, 2, dots, next); return;                                \
            case 8 + 3: avx2_##KIND##_rq(rows, d, queries, 3, 3, dots, next); return;                                \
            case 8 + 4: avx2_##KIND##_rq(rows, d, queries, 3, 4, dots, next); return;                                \
            case 1: avx2_##KIND##_rq(rows, d, queries, 1, 1, dots, next); return;                                    \
            case 2: avx2_##KIND##_rq(rows, d, queries, 1, 2, dots, next); return;                                    \
            case 3: avx2_##KIND##_rq(rows, d, queries, 1, 3, dots, next); return;                                    \
            default: avx2_##KIND##_rq(rows, d, queries, 1, 4, dots, next); return;                                   \
        }                                                                                                            \
    }
DEFINE_AVX2_TILE(f32, CODE_F32)
DEFINE_AVX2_TILE(f16, CODE_F16)
DEFINE_AVX2_TILE(i8, CODE_I8)
#endif /* VSRT_X86 */

#include "_scan_filter.h"
#include "_scan_fp16.h"
#include "_scan_bf16.h"

#if defined(__aarch64__)
/* AArch64 (Jetson): NEON, 4 lanes, 32 registers: 4 rows x 6 queries = 24 accumulators. */
#include <arm_neon.h>

static inline float32x4_t n_f32(const void *p, int64_t i) { return vld1q_f32((const float *)p + i); }
static inline float32x4_t n_f16(const void *p, int64_t i) {
    return vcvt_f32_f16(vld1_f16((const __fp16 *)((const uint16_t *)p + i)));
}
static inline float32x4_t n_i8(const void *p, int64_t i) {
    int32_t four;
    memcpy(&four, (const int8_t *)p + i, 4);
    const int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(four)));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
}

static inline float32x4_t n_zero(void) { return vdupq_n_f32(0.0f); }
static inline float32x4_t n_fma(float32x4_t a, float32x4_t b, float32x4_t c) { return vfmaq_f32(c, a, b); }

#define DEFINE_NEON_TILE(KIND, CODE)                                                                                 \
    DEFINE_SIMD_TILE_RQ(neon_##KIND##_rq, , float32x4_t, 4, n_zero, n_##KIND, vld1q_f32, n_fma, vaddvq_f32, CODE)    \
    static void tile_neon_##KIND(const void *rows, int64_t d, const float *queries, int nr, int nq,                  \
                                 float *dots, Prefetch *next) {                                                      \
        DISPATCH_4_ROWS_6_QUERIES(neon_##KIND##_rq)                                                                  \
    }
DEFINE_NEON_TILE(f32, CODE_F32)
DEFINE_NEON_TILE(f16, CODE_F16)
DEFINE_NEON_TILE(i8, CODE_I8)
#endif /* __aarch64__ */

/* ------------------------------------------------------------------------------------------------ ISAs */
typedef struct {
    const char *name;
    TileFn tile[3]; /* by CODE_* */
    int rows_per_tile;  /* full tiles; the last rows of a block go one at a time */
    int max_query_tile;
    int lanes;          /* floats per inner step */
    const FilterKernel *filter; /* or NULL: FP16 batches of its min_queries or more go through scan_block_filtered */
} Isa;

static const Isa ISA_TABLE_GENERIC = {"generic", {tile_generic_f32, tile_generic_f16, tile_generic_i8}, 4, 4,
                                      LANES_GENERIC, NULL};
#if defined(__aarch64__)
static const Isa ISA_TABLE_NEON = {"neon", {tile_neon_f32, tile_neon_f16, tile_neon_i8}, 4, 6, 4, NULL};
#endif
#if VSRT_X86
static const Isa ISA_TABLE_AVX2 = {"avx2", {tile_avx2_f32, tile_avx2_f16, tile_avx2_i8}, 3, 4, 8, NULL};
static const Isa ISA_TABLE_AVX512 = {"avx512", {tile_avx512_f32, tile_avx512_f16, tile_avx512_i8}, 4, 6, 16, NULL};
/* The filter kernels: AVX-512 for FP32, INT8 and single FP16 queries (memory-bound there already) */
#if VSRT_FP16
static const Isa ISA_TABLE_AVX512FP16 = {"avx512fp16", {tile_avx512_f32, tile_avx512_f16, tile_avx512_i8}, 4, 6, 16,
                                         &FILTER_FP16};
#endif
#if VSRT_BF16
static const Isa ISA_TABLE_AVX512BF16 = {"avx512bf16", {tile_avx512_f32, tile_avx512_f16, tile_avx512_i8}, 4, 6, 16,
                                         &FILTER_BF16};
#endif
#endif

/* Whether this CPU (and OS) can run the kernel `isa`, probed with CPUID. */
static int cpu_probe(int isa) {
#if VSRT_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    if (isa == ISA_AVX512) return avx512 && __builtin_cpu_supports("avx512bw");
#if VSRT_FP16
    if (isa == ISA_AVX512FP16) { /* CPUID.(7,0):EDX[23]; the OS saves zmm state if AVX-512 F is usable */
        unsigned a, b, c, dx;
        return cpu_probe(ISA_AVX512) && __get_cpuid_count(7, 0, &a, &b, &c, &dx) && (dx & (1u << 23));
    }
#endif
#if VSRT_BF16
    if (isa == ISA_AVX512BF16) { /* CPUID.(7,1):EAX[5] */
        unsigned a, b, c, dx;
        return cpu_probe(ISA_AVX512) && __get_cpuid_count(7, 1, &a, &b, &c, &dx) && (a & (1u << 5));
    }
#endif
    if (isa == ISA_AVX2) return avx2;
#endif
#if defined(__aarch64__)
    if (isa == ISA_NEON) return 1; /* Advanced SIMD is part of the AArch64 base */
#endif
    return isa == ISA_GENERIC;
}

/* cpu_probe, remembered: CPUID traps to the hypervisor in a VM (measured here: 2.5 us each, 5 us per call of
 * isa_table(ISA_AUTO)), and every scan_block call asks. Threads that race here store the same answer. */
static int cpu_has(int isa) {
    static volatile signed char known[ISA_COUNT]; /* 0: not probed yet, 1: no, 2: yes */
    if (isa < 0 || isa >= ISA_COUNT) return 0;
    if (!known[isa]) known[isa] = (signed char)(cpu_probe(isa) ? 2 : 1);
    return known[isa] == 2;
}

static const Isa *isa_table(int isa) {
    if (isa == ISA_AUTO)
        isa = cpu_has(ISA_AVX512FP16) ? ISA_AVX512FP16
              : cpu_has(ISA_AVX512BF16) ? ISA_AVX512BF16
              : cpu_has(ISA_AVX512) ? ISA_AVX512
              : cpu_has(ISA_AVX2) ? ISA_AVX2
              : cpu_has(ISA_NEON) ? ISA_NEON
                                  : ISA_GENERIC;
    if (!cpu_has(isa)) return NULL;
#if VSRT_X86
    if (isa == ISA_AVX512) return &ISA_TABLE_AVX512;
#if VSRT_FP16
    if (isa == ISA_AVX512FP16) return &ISA_TABLE_AVX512FP16;
#endif
#if VSRT_BF16
    if (isa == ISA_AVX512BF16) return &ISA_TABLE_AVX512BF16;
#endif
    if (isa == ISA_AVX2) return &ISA_TABLE_AVX2;
#endif
#if defined(__aarch64__)
    if (isa == ISA_NEON) return &ISA_TABLE_NEON;
#endif
    return &ISA_TABLE_GENERIC;
}

/* ------------------------------------------------------------------------------------------------ scan */
static void scan_block_packed(const Isa *isa, int kind, const char *codes, int64_t n, int64_t d,
                              const float *scales, const float *queries, int64_t m, Heap *heaps);

/* Scans n code rows for m queries ([m, d], contiguous) into the heaps. floors (float32 [m], or NULL): a row whose
 * score for query q is below floors[q] may be left out of heap q (a kernel that can tell so cheaply skips it; every
 * row scoring floors[q] or more is offered), so a caller that passes a lower bound on the final k-th best score of
 * each query loses nothing. Returns 0 if it could not allocate the packed copy of the queries (m x query_stride(d)
 * floats), 1 otherwise. */
static int scan_block(const Isa *isa, int kind, const char *codes, int64_t n, int64_t d, const float *scales,
                      const float *queries, int64_t m, const float *floors, Heap *heaps) {
    const int64_t qs = query_stride(d);
    float *packed = aligned_alloc(64, sizeof(float) * (size_t)(m * qs));
    if (!packed) return 0;
    for (int64_t q = 0; q < m; ++q) {
        memcpy(packed + q * qs, queries + q * d, sizeof(float) * (size_t)d);
        memset(packed + q * qs + d, 0, sizeof(float) * (size_t)(qs - d));
    }
#if !VSRT_FILTER
    (void)floors;
#else
    if (isa->filter && kind == CODE_F16 && m >= isa->filter->min_queries) {
        const int ok = scan_block_filtered(isa->filter, codes, n, d, queries, packed, qs, m, floors, heaps);
        free(packed);
        return ok;
    }
#endif
    scan_block_packed(isa, kind, codes, n, d, scales, packed, m, heaps);
    free(packed);
    return 1;
}

static void scan_block_packed(const Isa *isa, int kind, const char *codes, int64_t n, int64_t d,
                              const float *scales, const float *queries, int64_t m, Heap *heaps) {
    const size_t row_bytes = (size_t)d * (kind == CODE_F32 ? 4 : (kind == CODE_F16 ? 2 : 1));
    const TileFn tile = isa->tile[kind];
    const int rows_per_tile = isa->rows_per_tile;
    const int64_t tiles = (m + isa->max_query_tile - 1) / isa->max_query_tile;
    const int64_t tile_bytes = (int64_t)row_bytes * rows_per_tile;
    float dots[ROWS_PER_TILE * MAX_QUERY_TILE];
    for (int64_t r0 = 0; r0 < n; r0 += rows_per_tile) {
        const int nr = (int)(n - r0 < rows_per_tile ? n - r0 : rows_per_tile);
        int64_t q0 = 0;
        for (int64_t t = 0; t < tiles; ++t) { /* query tiles of equal size (+-1) */
            const int nq = (int)(m / tiles + (t < m % tiles));
            const float *qs = queries + q0 * query_stride(d);
            if (nr == rows_per_tile) { /* each query tile prefetches its share of the next row tile */
                const int64_t ahead = r0 + PREFETCH_TILES * rows_per_tile;
                if (ahead + rows_per_tile <= n) {
                    Prefetch pf = prefetch_share(codes + (size_t)ahead * row_bytes, tile_bytes, t, tiles, d / isa->lanes,
                                                 isa->lanes);
                    tile(codes + (size_t)r0 * row_bytes, d, qs, nr, nq, dots, &pf);
                } else {
                    tile(codes + (size_t)r0 * row_bytes, d, qs, nr, nq, dots, NULL);
                }
            } else {
                for (int r = 0; r < nr; ++r)
                    tile(codes + (size_t)(r0 + r) * row_bytes, d, qs, 1, nq, dots + r * nq, NULL);
            }
            for (int r = 0; r < nr; ++r) {
                const float scale = scales ? scales[r0 + r] : 1.0f;
                for (int q = 0; q < nq; ++q) {
                    const float s = scales ? dots[r * nq + q] * scale : dots[r * nq + q];
                    heap_offer(&heaps[q0 + q], s, r0 + r);
                }
            }
            q0 += nq;
        }
    }
}


#endif /* VSRT_SCAN_KERNELS_H */
