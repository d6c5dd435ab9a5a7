/*
 * The AVX512-FP16 kernel of vsrt.runtime._scan (included by _scan_kernels.h after the AVX-512 tile kernels and Heap).
 *
 * FP16 rows against batches of queries on CPUs with AVX512-FP16 (Xeon Sapphire Rapids and later, Zen 5): filter,
 * then refine, with exactly the results of the AVX-512 kernel (scores and indices, bit for bit).
 *   1. Filter: every row is scored against every query in FP16 arithmetic, 32 values per instruction and no decode
 *      at all. The AVX-512 kernel spends a third of its vector work converting FP16 to float32 and gets 16 products
 *      per FMA, so once a batch has a few queries it is bound by the FMA ports, not by memory.
 *   2. Refine: a row whose FP16 score plus a proven bound on its error could still beat its query's k-th best exact
 *      score is scored again by the AVX-512 kernel and offered to the heap. No other row could have entered it.
 *
 * Arithmetic. Query q is scaled by a power of two s (largest |s q_i| in [1/2, 1)) and rounded to FP16: q~. Each of
 * the 32 lanes sums its products in chunks of F16_CHUNK FMAs, each chunk added to a lane total (FP16); the totals are
 * widened to float32 and summed. The row's squared norm is summed the same way, for the Cauchy-Schwarz bound.
 * Error bound (f16_prepare; u = 2^-11, v = 2^-24, eta = 2^-25 the FP16 underflow unit), for the exact score e the
 * AVX-512 kernel computes and the filter's score a:
 *     |a - e| <= |g| A_q + C_q,  A_q = (E |q~| + eta sqrt(d)) / s + (u + E_avx) |q|,  C_q = 32 (L + C + 2) eta / s
 * with E = gamma(L) + gamma(C) (1 + gamma(L)) + 6 v (lane chunks of L steps, C chunks, 6 float32 roundings),
 * E_avx = (d / 16 + 21) v the AVX-512 kernel's own rounding, and |g| from the FP16 norm, (N + abs) / (1 - E).
 * A_q and C_q carry 1 % of margin for their own float32 evaluation. Rows whose FP16 sums overflow (|g| beyond a few
 * tens) give inf or NaN and are always refined.
 *
 * Tiles: 4 rows x up to 6 queries (24 zmm chunk accumulators, the totals in memory), the first query group of each
 * row tile also summing the norms; software prefetch of the next row tile as in the AVX-512 kernel. With floors
 * (scan_block), rows surely below the caller's bound on the final k-th best score are not refined either, so that
 * blocks after the first refine almost nothing.
 */
#ifndef VSRT_SCAN_FP16_H
#define VSRT_SCAN_FP16_H

#if VSRT_X86 && ((defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 12))
#define VSRT_FP16 1
#else
#define VSRT_FP16 0
#endif

#if VSRT_FP16
#include <cpuid.h>
#include <math.h>

#define FP16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512fp16,avx2,fma,f16c")))
#define F16_ROWS 4   /* rows per tile (the last rows of a block go one at a time) */
#define F16_GROUP 6  /* queries per tile: query groups of equal size, at most 6 */
#define F16_CHUNK 16 /* 32-value steps per FP16 partial sum (measured 1.5-4 % faster than 8 at 8-32 queries, for an
                      * error bound of 20 u instead of 16 u at d = 2048) */
#define F16_MIN_QUERIES 2 /* one query: the AVX-512 kernel, memory-bound there already */

typedef struct {
    uint16_t *qh;    /* scaled FP16 queries, qhs halves apart, zero-padded to a multiple of 32 */
    int64_t qhs;
    float *inv_scale, *coef, *offset; /* per query: 1 / s, A_q, C_q */
    float norm_rel, norm_abs;         /* |g|^2 <= (N + norm_abs) / (1 - norm_rel) */
} F16Queries;

/* The first min(left, 16) of 16 lanes. */
static inline __mmask16 f16_mask16(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

static inline double f16_gamma(double n) { return n * 0x1p-11 / (1.0 - n * 0x1p-11); }

/* Scales, rounds and packs the queries (rows `d` floats apart) and computes the bound constants. Returns 0 if out of
 * memory (and frees what it allocated). */
FP16_TARGET static int f16_prepare(const float *queries, int64_t m, int64_t d, F16Queries *fq) {
    const int64_t steps = (d + 31) / 32, chunks = (steps + F16_CHUNK - 1) / F16_CHUNK;
    const int64_t lane_steps = steps < F16_CHUNK ? steps : F16_CHUNK;
    fq->qhs = steps * 32 + 32; /* + 64 bytes: the queries' j-th vectors do not share one L1 set */
    fq->qh = aligned_alloc(64, sizeof(uint16_t) * (size_t)(m * fq->qhs));
    fq->inv_scale = calloc(3 * (size_t)m + 16, sizeof(float)); /* + 16: the filter loads 16 from any query on */
    if (!fq->qh || !fq->inv_scale) {
        free(fq->qh);
        free(fq->inv_scale);
        return 0;
    }
    fq->coef = fq->inv_scale + m;
    fq->offset = fq->coef + m;
    const double u = 0x1p-11, v = 0x1p-24, eta = 0x1p-25;
    const double e16 = f16_gamma((double)lane_steps) + f16_gamma((double)chunks) * (1.0 + f16_gamma((double)lane_steps));
    const double e = e16 + 6.0 * v * (1.0 + e16), e_avx = ((double)d / 16.0 + 21.0) * v;
    const double abs_lanes = 32.0 * (double)(lane_steps + chunks + 2) * eta;
    fq->norm_rel = (float)(e * 1.01);
    fq->norm_abs = (float)(abs_lanes * 1.01);
    for (int64_t q = 0; q < m; ++q) {
        const float *x = queries + q * d;
        uint16_t *h = fq->qh + q * fq->qhs;
        __m512 big16 = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16) {
            const __mmask16 mk = f16_mask16(d - i);
            big16 = _mm512_max_ps(big16, _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, x + i)));
        }
        const float big = _mm512_reduce_max_ps(big16); /* NaN and inf are caught by the sums below */
        int ex = 0;
        if (big > 0.0f && isfinite(big)) frexpf(big, &ex); /* big = f 2^ex, f in [1/2, 1) */
        const float s = ldexpf(1.0f, -ex);
        const __m512 sv = _mm512_set1_ps(s);
        __m512d qn8 = _mm512_setzero_pd(), qtn8 = _mm512_setzero_pd();
        for (int64_t i = 0; i < d; i += 16) {
            const __mmask16 mk = f16_mask16(d - i);
            const __m512 v = _mm512_maskz_loadu_ps(mk, x + i);
            /* exact scaling by a power of two (no float32 under/overflow at these sizes), then round to FP16 */
            const __m256i hv = _mm512_cvtps_ph(_mm512_mul_ps(v, sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_mask_storeu_epi16(h + i, mk, hv);
            const __m512 t = _mm512_cvtph_ps(hv);
            const __m512d v0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), v1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
            const __m512d t0 = _mm512_cvtps_pd(_mm512_castps512_ps256(t)), t1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1));
            qn8 = _mm512_fmadd_pd(v1, v1, _mm512_fmadd_pd(v0, v0, qn8));
            qtn8 = _mm512_fmadd_pd(t1, t1, _mm512_fmadd_pd(t0, t0, qtn8));
        }
        memset(h + d, 0, sizeof(uint16_t) * (size_t)(fq->qhs - d));
        const double qn = sqrt(_mm512_reduce_add_pd(qn8)) * (1.0 + 1e-12), qtn = sqrt(_mm512_reduce_add_pd(qtn8)) * (1.0 + 1e-12);
        fq->inv_scale[q] = 1.0f / s;
        fq->coef[q] = (float)(((e * qtn + eta * sqrt((double)d)) / s + (u + e_avx) * qn) * 1.01);
        fq->offset[q] = (float)(abs_lanes / s * 1.01) + 0x1p-120f;
        if (!isfinite(fq->coef[q]) || !isfinite(qn) || !isfinite(big)) fq->coef[q] = INFINITY; /* always refine */
    }
    return 1;
}

/* The 32 FP16 lanes of t widened to float32 and added pairwise: 16 float32 lanes with the same sum. */
FP16_TARGET static inline __m512 f16_widen(__m512h t) {
    const __m512i b = _mm512_castph_si512(t);
    return _mm512_add_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(b)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64(b, 1)));
}

/* out[i] = the sum of the 16 lanes of v[i], for 16 vectors at once (a transposing tree: 15 adds and 30 shuffles
 * instead of 16 separate reductions; 4 roundings per sum, like one reduction). */
FP16_TARGET static inline void f16_sums16(const __m512 v[16], float out[16]) {
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

/* One step of f16_tile_rq: 32 values of d from j (masked past d when TAIL). */
#define F16_STEP(TAIL)                                                                                               \
    do {                                                                                                             \
        prefetch_at(pf, j);                                                                                          \
        __m512h x[F16_ROWS];                                                                                         \
        for (int r = 0; r < R; ++r)                                                                                  \
            x[r] = _mm512_castsi512_ph(TAIL ? _mm512_maskz_loadu_epi16(tail, rows + r * d + j)                       \
                                            : _mm512_loadu_si512(rows + r * d + j));                                 \
        if (NORM)                                                                                                    \
            for (int r = 0; r < R; ++r) nacc[r] = _mm512_fmadd_ph(x[r], x[r], nacc[r]);                              \
        for (int q = 0; q < Q; ++q) {                                                                                \
            const __m512h qv = _mm512_castsi512_ph(_mm512_load_si512(qh + q * qhs + j));                             \
            for (int r = 0; r < R; ++r) acc[r][q] = _mm512_fmadd_ph(x[r], qv, acc[r][q]);                            \
        }                                                                                                            \
    } while (0)

/* FP16 scores of R rows x Q queries (compile-time constants at each call site, so that the chunk accumulators live in
 * registers) into sc[r * Q + q], already times 1 / s; with NORM the rows' FP16 squared norms into nrm[r]. */
static inline __attribute__((always_inline)) FP16_TARGET void f16_tile_rq(const uint16_t *rows, int64_t d,
                                                                         const uint16_t *qh, int64_t qhs,
                                                                         const float *inv_scale, const int R,
                                                                         const int Q, const int NORM, float *sc,
                                                                         float *nrm, Prefetch *next) {
    __m512h tot[F16_ROWS][F16_GROUP], ntot[F16_ROWS], acc[F16_ROWS][F16_GROUP], nacc[F16_ROWS];
    const Prefetch pf = prefetch_or_none(next);
    for (int r = 0; r < R; ++r) {
        ntot[r] = _mm512_setzero_ph();
        for (int q = 0; q < Q; ++q) tot[r][q] = _mm512_setzero_ph();
    }
    const int64_t chunk = 32 * F16_CHUNK, full = d / chunk * chunk;
    const __mmask32 tail = (__mmask32)((1ull << (d % 32)) - 1u);
    for (int64_t c = 0; c <= full; c += chunk) { /* full chunks, then the rest (if any) as one short chunk */
        const int64_t end = c < full ? c + chunk : d;
        if (c == end) break;
        for (int r = 0; r < R; ++r) {
            nacc[r] = _mm512_setzero_ph();
            for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_setzero_ph();
        }
        int64_t j = c;
        for (; j + 32 <= end; j += 32) F16_STEP(0);
        if (j < end) F16_STEP(1);
        for (int r = 0; r < R; ++r) {
            if (NORM) ntot[r] = _mm512_add_ph(ntot[r], nacc[r]);
            for (int q = 0; q < Q; ++q) tot[r][q] = _mm512_add_ph(tot[r][q], acc[r][q]);
        }
    }
    __m512 wide[2 * 16]; /* the R x Q scores, then the R norms, summed 16 at a time */
    float sums[2 * 16];
    const int count = R * Q + (NORM ? R : 0);
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < Q; ++q) wide[r * Q + q] = f16_widen(tot[r][q]);
    if (NORM)
        for (int r = 0; r < R; ++r) wide[R * Q + r] = f16_widen(ntot[r]);
    for (int i = count; i < (count + 15) / 16 * 16; ++i) wide[i] = _mm512_setzero_ps();
    for (int i = 0; i < count; i += 16) f16_sums16(wide + i, sums + i);
    for (int r = 0; r < R; ++r) {
        if (NORM) nrm[r] = sums[R * Q + r];
        for (int q = 0; q < Q; ++q) sc[r * Q + q] = sums[r * Q + q] * inv_scale[q];
    }
}

typedef void (*F16TileFn)(const uint16_t *rows, int64_t d, const uint16_t *qh, int64_t qhs, const float *inv_scale,
                          float *sc, float *nrm, Prefetch *next);

#define DEFINE_F16_TILE(R, Q)                                                                                         \
    static FP16_TARGET void f16_tile_##R##_##Q(const uint16_t *rows, int64_t d, const uint16_t *qh, int64_t qhs,     \
                                               const float *inv_scale, float *sc, float *nrm, Prefetch *next) {      \
        if (nrm) f16_tile_rq(rows, d, qh, qhs, inv_scale, R, Q, 1, sc, nrm, next);                                   \
        else f16_tile_rq(rows, d, qh, qhs, inv_scale, R, Q, 0, sc, nrm, next);                                       \
    }
#define DEFINE_F16_TILES(R)                                                                                           \
    DEFINE_F16_TILE(R, 1) DEFINE_F16_TILE(R, 2) DEFINE_F16_TILE(R, 3) DEFINE_F16_TILE(R, 4) DEFINE_F16_TILE(R, 5)     \
    DEFINE_F16_TILE(R, 6)
DEFINE_F16_TILES(1)
DEFINE_F16_TILES(4)
static const F16TileFn F16_TILES[2][F16_GROUP] = { /* [full tile of F16_ROWS rows or one row][queries - 1] */
    {f16_tile_4_1, f16_tile_4_2, f16_tile_4_3, f16_tile_4_4, f16_tile_4_5, f16_tile_4_6},
    {f16_tile_1_1, f16_tile_1_2, f16_tile_1_3, f16_tile_1_4, f16_tile_1_5, f16_tile_1_6},
};

/* Scans n FP16 rows for m queries ([m, d] raw and `packed` as the AVX-512 kernel reads them, qs floats apart) into
 * the heaps. With floors (or NULL), a row whose score is surely below floors[q] is not offered to heap q (see
 * scan_block). Returns 0 if out of memory (nothing scanned). */
FP16_TARGET static int scan_block_f16(const char *codes, int64_t n, int64_t d, const float *queries,
                                      const float *packed, int64_t qs, int64_t m, const float *floors, Heap *heaps) {
    F16Queries fq;
    if (!f16_prepare(queries, m, d, &fq)) return 0;
    const uint16_t *rows16 = (const uint16_t *)codes;
    const int64_t groups = (m + F16_GROUP - 1) / F16_GROUP;
    const int64_t tile_bytes = (int64_t)F16_ROWS * d * 2, steps = (d + 31) / 32;
    /* per query: the heap's k-th best once full, the floor (NaN: none yet / no floor); + 16 as for fq.coef */
    float *le_thr = malloc(sizeof(float) * (2 * (size_t)m + 32));
    if (!le_thr) {
        free(fq.qh);
        free(fq.inv_scale);
        return 0;
    }
    float *lt_thr = le_thr + m + 16;
    for (int64_t q = 0; q < m + 16; ++q) {
        le_thr[q] = NAN;
        lt_thr[q] = floors && q < m ? floors[q] : NAN;
    }
    for (int64_t q = 0; q < m; ++q)
        if (heaps[q].size == heaps[q].cap) le_thr[q] = heaps[q].score[0];
    int32_t q_of[F16_GROUP][F16_ROWS * F16_GROUP + 16], r_of[F16_GROUP][F16_ROWS * F16_GROUP + 16]; /* pair -> q, r */
    for (int nq = 1; nq <= F16_GROUP; ++nq)
        for (int i = 0; i < F16_ROWS * F16_GROUP + 16; ++i) {
            q_of[nq - 1][i] = i % nq;
            r_of[nq - 1][i] = i / nq < F16_ROWS ? i / nq : 0;
        }
    float sc[F16_ROWS * F16_GROUP + 16], nrm[F16_ROWS], gnorm[16] = {0};
    for (int64_t r0 = 0; r0 < n; r0 += F16_ROWS) {
        const int nr = (int)(n - r0 < F16_ROWS ? n - r0 : F16_ROWS);
        const uint16_t *rows = rows16 + r0 * d;
        int64_t q0 = 0;
        for (int64_t g = 0; g < groups; ++g) { /* groups of equal size (+-1); the first also sums the norms */
            const int nq = (int)(m / groups + (g < m % groups));
            const uint16_t *qh = fq.qh + q0 * fq.qhs;
            const float *inv = fq.inv_scale + q0;
            const int64_t ahead = r0 + PREFETCH_TILES * F16_ROWS;
            if (nr == F16_ROWS && ahead + F16_ROWS <= n) { /* each group prefetches its share of the next tile */
                Prefetch pf = prefetch_share(codes + (size_t)ahead * d * 2, tile_bytes, g, groups, steps, 32);
                F16_TILES[0][nq - 1](rows, d, qh, fq.qhs, inv, sc, g ? NULL : nrm, &pf);
            } else if (nr == F16_ROWS) {
                F16_TILES[0][nq - 1](rows, d, qh, fq.qhs, inv, sc, g ? NULL : nrm, NULL);
            } else {
                float one[F16_GROUP];
                for (int r = 0; r < nr; ++r) {
                    F16_TILES[1][nq - 1](rows + r * d, d, qh, fq.qhs, inv, one, g ? NULL : nrm + r, NULL);
                    memcpy(sc + r * nq, one, sizeof(float) * (size_t)nq);
                }
            }
            if (g == 0)
                for (int r = 0; r < nr; ++r)
                    gnorm[r] = sqrtf((nrm[r] + fq.norm_abs) / (1.0f - fq.norm_rel)) * (1.0f + 0x1p-20f);
            /* The filter, 16 (row, query) pairs at a time: top = a + bound >= the exact score (NaN where the FP16
             * sums overflowed); skip when top <= the heap's k-th best or top < the floor (NaN thresholds: never). */
            const int pairs = nr * nq;
            const __m512 gv = _mm512_loadu_ps(gnorm), cv = _mm512_loadu_ps(fq.coef + q0);
            const __m512 ov = _mm512_loadu_ps(fq.offset + q0), fv = _mm512_loadu_ps(lt_thr + q0);
            for (int base = 0; base < pairs; base += 16) {
                const __mmask16 valid = f16_mask16(pairs - base);
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
                    const int i = base + __builtin_ctz(todo), r = r_of[nq - 1][i], q = q_of[nq - 1][i];
                    Heap *h = &heaps[q0 + q];
                    float e;
                    tile_avx512_f16(rows + r * d, d, packed + (q0 + q) * qs, 1, 1, &e, NULL);
                    heap_offer(h, e, r0 + r);
                    if (h->size == h->cap) le_thr[q0 + q] = h->score[0];
                }
            }
            q0 += nq;
        }
    }
    free(le_thr);
    free(fq.qh);
    free(fq.inv_scale);
    return 1;
}
#endif /* VSRT_FP16 */

#endif /* VSRT_SCAN_FP16_H */
