/*
 * Filter-and-refine scans of FP16 rows for vsrt.runtime._scan (included by _scan_kernels.h after the AVX-512 tile
 * kernels and Heap): the driver shared by the AVX512-FP16 kernel (_scan_fp16.h) and the AVX512-BF16 kernel
 * (_scan_bf16.h), with exactly the results of the AVX-512 kernel (scores and indices, bit for bit).
 *   1. Filter: every row is scored against every query in a cheaper arithmetic than the AVX-512 kernel's float32
 *      FMAs on decoded rows (FP16 FMAs, or BF16 dot products: 32 products per instruction instead of 16), together
 *      with a proven bound on that score's error.
 *   2. Refine: a row whose filter score plus its bound could still beat its query's k-th best exact score (or reach
 *      the caller's floor) is scored again as the AVX-512 kernel scores it and offered to the heap. No other row
 *      could have entered it. The pairs of a tile that pass are re-scored together, up to 8 at a time (a single pair is
 *      one chain of dependent FMAs: measured 0.2 ms of a 0.55 ms block of 2000 rows x 8 queries on Zen 4).
 * A kernel (FilterKernel) brings its query preparation, which rounds the queries to its 16-bit numbers and computes
 * the bound's constants, and its tile functions, which score rows x queries and sum the rows' squared norms.
 * The bound of query q and row r is |g_r| coef[q] + offset[q], |g_r| from the kernel's squared norm N as
 * sqrt((N + norm_abs) / (1 - norm_rel)); the filter adds |a| 2^-22 for its own float32 evaluation. With floors
 * (scan_block), rows surely below the caller's bound on the final k-th best score are not refined either, so that
 * blocks after the first refine almost nothing.
 */
#ifndef VSRT_SCAN_FILTER_H
#define VSRT_SCAN_FILTER_H

/* Compilers that know the instructions (the CPU is asked at run time) */
#if VSRT_X86 && ((defined(__clang__) && __clang_major__ >= 16) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 12))
#define VSRT_FP16 1
#else
#define VSRT_FP16 0
#endif
#if VSRT_X86 && ((defined(__clang__) && __clang_major__ >= 11) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define VSRT_BF16 1
#else
#define VSRT_BF16 0
#endif
#define VSRT_FILTER (VSRT_FP16 || VSRT_BF16)

#define FILTER_MAX_ROWS 4   /* rows per tile, at most, of any kernel */
#define FILTER_MAX_GROUP 8  /* queries per tile, at most, of any kernel */
#define FILTER_MAX_PAIRS 24 /* rows x queries per tile, at most, of any kernel */

typedef struct {
    uint16_t *qh;    /* the queries as the kernel's 16-bit numbers, qhs apart, zero-padded to a multiple of 32 */
    int64_t qhs;
    float *inv_scale, *coef, *offset; /* per query: the factor of the filter's sums (if the kernel scales), the
                                       * bound's coef and offset */
    float norm_rel, norm_abs;         /* |g|^2 <= (N + norm_abs) / (1 - norm_rel) */
} FilterQueries;

/* Filter scores of a tile's rows x queries into sc[r * Q + q], and with nrm (else NULL) the rows' squared norms. */
typedef void (*FilterTileFn)(const uint16_t *rows, int64_t d, const uint16_t *qh, int64_t qhs, const float *inv_scale,
                             float *sc, float *nrm, Prefetch *next);

typedef struct {
    const char *arithmetic; /* "fp16" or "bf16": what the filter multiplies in */
    int rows;        /* per full tile (the last rows of a block go one at a time) */
    int group;       /* queries per tile, at most: query groups of equal size */
    int min_queries; /* smaller batches go to the AVX-512 kernel (memory-bound there already) */
    int (*prepare)(const float *queries, int64_t m, int64_t d, FilterQueries *fq); /* 0: out of memory */
    FilterTileFn tiles[2][FILTER_MAX_GROUP]; /* [full tile or one row][queries - 1] */
} FilterKernel;

/* NAME##_tile_R_Q, a FilterTileFn: NAME##_tile_rq (always inlined) with R rows, Q queries and NORM (whether nrm is
 * given) as compile-time constants, so that its accumulators live in registers. */
#define DEFINE_FILTER_TILE(NAME, TARGET, R, Q)                                                                        \
    static TARGET void NAME##_tile_##R##_##Q(const uint16_t *rows, int64_t d, const uint16_t *qh, int64_t qhs,       \
                                             const float *inv_scale, float *sc, float *nrm, Prefetch *next) {        \
        if (nrm) NAME##_tile_rq(rows, d, qh, qhs, inv_scale, R, Q, 1, sc, nrm, next);                                \
        else NAME##_tile_rq(rows, d, qh, qhs, inv_scale, R, Q, 0, sc, nrm, next);                                    \
    }
/* The tiles of R rows and 1 to 6 queries, and their row of FilterKernel.tiles */
#define DEFINE_FILTER_TILES_6(NAME, TARGET, R)                                                                        \
    DEFINE_FILTER_TILE(NAME, TARGET, R, 1) DEFINE_FILTER_TILE(NAME, TARGET, R, 2)                                     \
    DEFINE_FILTER_TILE(NAME, TARGET, R, 3) DEFINE_FILTER_TILE(NAME, TARGET, R, 4)                                     \
    DEFINE_FILTER_TILE(NAME, TARGET, R, 5) DEFINE_FILTER_TILE(NAME, TARGET, R, 6)
#define FILTER_TILES_6(NAME, R)                                                                                       \
    NAME##_tile_##R##_1, NAME##_tile_##R##_2, NAME##_tile_##R##_3, NAME##_tile_##R##_4, NAME##_tile_##R##_5,          \
        NAME##_tile_##R##_6
/* ... and of 1 to 8 queries */
#define DEFINE_FILTER_TILES_8(NAME, TARGET, R)                                                                        \
    DEFINE_FILTER_TILES_6(NAME, TARGET, R) DEFINE_FILTER_TILE(NAME, TARGET, R, 7) DEFINE_FILTER_TILE(NAME, TARGET, R, 8)
#define FILTER_TILES_8(NAME, R) FILTER_TILES_6(NAME, R), NAME##_tile_##R##_7, NAME##_tile_##R##_8

#if VSRT_FILTER
#include <cpuid.h>
#include <math.h>

/* The first min(left, 16) of 16 lanes (none for left <= 0). */
static inline __mmask16 filter_mask16(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* n rounding errors of unit u: n u / (1 - n u). */
static inline double filter_gamma(double n, double u) { return n * u / (1.0 - n * u); }

/* Room for m queries of d values (qh 64-byte aligned) and the per-query constants; 0 if out of memory. */
static int filter_queries_alloc(FilterQueries *fq, int64_t m, int64_t d) {
    fq->qhs = (d + 31) / 32 * 32 + 32; /* + 64 bytes: the queries' j-th vectors do not share one L1 set */
    fq->qh = aligned_alloc(64, sizeof(uint16_t) * (size_t)(m * fq->qhs));
    fq->inv_scale = calloc(3 * (size_t)m + 16, sizeof(float)); /* + 16: the filter loads 16 from any query on */
    if (!fq->qh || !fq->inv_scale) {
        free(fq->qh);
        free(fq->inv_scale);
        return 0;
    }
    fq->coef = fq->inv_scale + m;
    fq->offset = fq->coef + m;
    return 1;
}

static void filter_queries_free(FilterQueries *fq) {
    free(fq->qh);
    free(fq->inv_scale);
}

/* out[i] = the sum of the 16 lanes of v[i], for 16 vectors at once (a transposing tree: 15 adds and 30 shuffles
 * instead of 16 separate reductions; 4 roundings per sum, like one reduction). */
static inline __attribute__((always_inline)) AVX512_TARGET void sums16(const __m512 v[16], float out[16]) {
    __m512 t[8], u[4], w[2];
    for (int i = 0; i < 8; ++i) /* per 128-bit lane: pairs of vectors, 2 partial sums each */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i) { /* per 128-bit lane: the lane's sum of 4 vectors */
        const __m512d c = _mm512_castps_pd(t[2 * i]), d = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    for (int i = 0; i < 2; ++i)
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xdd));
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xdd)));
}

/* A tile's results from its float32 lane vectors (wide[] holds 32; those past the results are overwritten):
 * wide[r * Q + q] the scores and, with NORM, wide[R * Q + r] the squared norms, each summed over its 16 lanes into
 * sc[r * Q + q] (times inv_scale[q] where given) and nrm[r]. */
static inline __attribute__((always_inline)) AVX512_TARGET void filter_tile_out(__m512 wide[32], const int R,
                                                                               const int Q, const int NORM,
                                                                               const float *inv_scale, float *sc,
                                                                               float *nrm) {
    const int count = R * Q + (NORM ? R : 0);
    float sums[32];
    for (int i = count; i < (count + 15) / 16 * 16; ++i) wide[i] = _mm512_setzero_ps();
    for (int i = 0; i < count; i += 16) sums16(wide + i, sums + i);
    for (int r = 0; r < R; ++r) {
        if (NORM) nrm[r] = sums[R * Q + r];
        for (int q = 0; q < Q; ++q) sc[r * Q + q] = inv_scale ? sums[r * Q + q] * inv_scale[q] : sums[r * Q + q];
    }
}

/* The AVX-512 kernel's exact scores (bit for bit: each pair summed the way tile_avx512_f16 sums it) of W pairs
 * (row rows + r[i] d, query packed + q[i] qs) into e[i]: W independent FMA chains instead of one latency-bound one. */
static inline __attribute__((always_inline)) AVX512_TARGET void refine_w(const uint16_t *rows, int64_t d,
                                                                        const float *packed, int64_t qs,
                                                                        const int32_t *r, const int32_t *q, const int W,
                                                                        float *e) {
    const uint16_t *rp[8];
    const float *qp[8];
    __m512 acc[8];
    for (int p = 0; p < W; ++p) {
        rp[p] = rows + r[p] * d;
        qp[p] = packed + q[p] * qs;
        acc[p] = _mm512_setzero_ps();
    }
    int64_t j = 0;
    for (; j + 16 <= d; j += 16)
        for (int p = 0; p < W; ++p) acc[p] = _mm512_fmadd_ps(z_f16(rp[p], j), _mm512_loadu_ps(qp[p] + j), acc[p]);
    for (int p = 0; p < W; ++p) {
        float sum = _mm512_reduce_add_ps(acc[p]);
        for (int64_t t = j; t < d; ++t) sum += load_code(rp[p], CODE_F16, t) * qp[p][t];
        e[p] = sum;
    }
}

/* refine_w over `count` pairs: 8, 4, 2 or 1 at a time. */
AVX512_TARGET static void refine_pairs(const uint16_t *rows, int64_t d, const float *packed, int64_t qs,
                                       const int32_t *r, const int32_t *q, int count, float *e) {
    for (int i = 0; i < count;) {
        const int left = count - i;
        const int w = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        switch (w) {
            case 8: refine_w(rows, d, packed, qs, r + i, q + i, 8, e + i); break;
            case 4: refine_w(rows, d, packed, qs, r + i, q + i, 4, e + i); break;
            case 2: refine_w(rows, d, packed, qs, r + i, q + i, 2, e + i); break;
            default: refine_w(rows, d, packed, qs, r + i, q + i, 1, e + i); break;
        }
        i += w;
    }
}

/* Scans n FP16 rows for m queries ([m, d] raw and `packed` as the AVX-512 kernel reads them, qs floats apart) into
 * the heaps, filtering with kernel fk. With floors (or NULL), a row whose score is surely below floors[q] is not
 * offered to heap q (see scan_block). Returns 0 if out of memory (nothing scanned). */
AVX512_TARGET static int scan_block_filtered(const FilterKernel *fk, const char *codes, int64_t n, int64_t d,
                                             const float *queries, const float *packed, int64_t qs, int64_t m,
                                             const float *floors, Heap *heaps) {
    FilterQueries fq;
    if (!fk->prepare(queries, m, d, &fq)) return 0;
    const uint16_t *rows16 = (const uint16_t *)codes;
    const int rows_per_tile = fk->rows;
    const int64_t groups = (m + fk->group - 1) / fk->group;
    const int64_t tile_bytes = (int64_t)rows_per_tile * d * 2, steps = (d + 31) / 32;
    /* per query: the heap's k-th best once full, the floor (NaN: none yet / no floor); + 16 as for fq.coef */
    float *le_thr = malloc(sizeof(float) * (2 * (size_t)m + 32));
    if (!le_thr) {
        filter_queries_free(&fq);
        return 0;
    }
    float *lt_thr = le_thr + m + 16;
    for (int64_t q = 0; q < m + 16; ++q) {
        le_thr[q] = NAN;
        lt_thr[q] = floors && q < m ? floors[q] : NAN;
    }
    for (int64_t q = 0; q < m; ++q)
        if (heaps[q].size == heaps[q].cap) le_thr[q] = heaps[q].score[0];
    enum { PAIRS = FILTER_MAX_PAIRS + 16 };
    int32_t q_of[FILTER_MAX_GROUP][PAIRS], r_of[FILTER_MAX_GROUP][PAIRS]; /* pair -> q, r */
    for (int nq = 1; nq <= fk->group; ++nq)
        for (int i = 0; i < PAIRS; ++i) {
            q_of[nq - 1][i] = i % nq;
            r_of[nq - 1][i] = i / nq < rows_per_tile ? i / nq : 0;
        }
    float sc[PAIRS], nrm[FILTER_MAX_ROWS], gnorm[16] = {0};
    for (int64_t r0 = 0; r0 < n; r0 += rows_per_tile) {
        const int nr = (int)(n - r0 < rows_per_tile ? n - r0 : rows_per_tile);
        const uint16_t *rows = rows16 + r0 * d;
        int64_t q0 = 0;
        for (int64_t g = 0; g < groups; ++g) { /* groups of equal size (+-1); the first also sums the norms */
            const int nq = (int)(m / groups + (g < m % groups));
            const uint16_t *qh = fq.qh + q0 * fq.qhs;
            const float *inv = fq.inv_scale + q0;
            const int64_t ahead = r0 + PREFETCH_TILES * rows_per_tile;
            if (nr == rows_per_tile && ahead + rows_per_tile <= n) { /* each group prefetches its share of the next */
                Prefetch pf = prefetch_share(codes + (size_t)ahead * d * 2, tile_bytes, g, groups, steps, 32);
                fk->tiles[0][nq - 1](rows, d, qh, fq.qhs, inv, sc, g ? NULL : nrm, &pf);
            } else if (nr == rows_per_tile) {
                fk->tiles[0][nq - 1](rows, d, qh, fq.qhs, inv, sc, g ? NULL : nrm, NULL);
            } else {
                float one[FILTER_MAX_GROUP];
                for (int r = 0; r < nr; ++r) {
                    fk->tiles[1][nq - 1](rows + r * d, d, qh, fq.qhs, inv, one, g ? NULL : nrm + r, NULL);
                    memcpy(sc + r * nq, one, sizeof(float) * (size_t)nq);
                }
            }
            if (g == 0)
                for (int r = 0; r < nr; ++r)
                    gnorm[r] = sqrtf((nrm[r] + fq.norm_abs) / (1.0f - fq.norm_rel)) * (1.0f + 0x1p-20f);
            /* The filter, 16 (row, query) pairs at a time: top = a + bound >= the exact score (NaN where the filter's
             * sums overflowed); skip when top <= the heap's k-th best or top < the floor (NaN thresholds: never). */
            const int pairs = nr * nq;
            const __m512 gv = _mm512_loadu_ps(gnorm), cv = _mm512_loadu_ps(fq.coef + q0);
            const __m512 ov = _mm512_loadu_ps(fq.offset + q0), fv = _mm512_loadu_ps(lt_thr + q0);
            int32_t cand_r[PAIRS], cand_q[PAIRS];
            int cands = 0;
            for (int base = 0; base < pairs; base += 16) {
                const __mmask16 valid = filter_mask16(pairs - base);
                const __m512i qi = _mm512_loadu_si512(q_of[nq - 1] + base), ri = _mm512_loadu_si512(r_of[nq - 1] + base);
                const __m512 a = _mm512_maskz_loadu_ps(valid, sc + base);
                const __m512 bound = _mm512_add_ps(
                    _mm512_add_ps(_mm512_mul_ps(_mm512_permutexvar_ps(ri, gv), _mm512_permutexvar_ps(qi, cv)),
                                  _mm512_permutexvar_ps(qi, ov)),
                    _mm512_mul_ps(_mm512_abs_ps(a), _mm512_set1_ps(0x1p-22f)));
                const __m512 top = _mm512_add_ps(a, bound);
                const __m512 kth = _mm512_permutexvar_ps(qi, _mm512_loadu_ps(le_thr + q0));
                const __mmask16 skip = _mm512_cmp_ps_mask(top, kth, _CMP_LE_OQ) |
                                       _mm512_cmp_ps_mask(top, _mm512_permutexvar_ps(qi, fv), _CMP_LT_OQ);
                for (unsigned todo = valid & ~skip; todo; todo &= todo - 1) { /* rare after the first rows */
                    const int i = base + __builtin_ctz(todo);
                    cand_r[cands] = r_of[nq - 1][i];
                    cand_q[cands++] = q_of[nq - 1][i];
                }
            }
            if (cands) { /* offered in row order per query, as the AVX-512 kernel offers them */
                float e[PAIRS];
                refine_pairs(rows, d, packed + q0 * qs, qs, cand_r, cand_q, cands, e);
                for (int i = 0; i < cands; ++i) {
                    Heap *h = &heaps[q0 + cand_q[i]];
                    heap_offer(h, e[i], r0 + cand_r[i]);
                    if (h->size == h->cap) le_thr[q0 + cand_q[i]] = h->score[0];
                }
            }
            q0 += nq;
        }
    }
    free(le_thr);
    filter_queries_free(&fq);
    return 1;
}
#endif /* VSRT_FILTER */

#endif /* VSRT_SCAN_FILTER_H */
