/*
 * The AVX512-FP16 filter of vsrt.runtime._scan (included by _scan_kernels.h after _scan_filter.h, whose driver runs
 * it): FP16 rows against batches of queries on CPUs with AVX512-FP16 (Xeon Sapphire Rapids and later, Zen 5), every
 * row scored in FP16 arithmetic, 32 values per instruction and no decode at all. The AVX-512 kernel spends a third of
 * its vector work converting FP16 to float32 and gets 16 products per FMA, so once a batch has a few queries it is
 * bound by the FMA ports, not by memory.
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
 * row tile also summing the norms; software prefetch of the next row tile as in the AVX-512 kernel.
 */
#ifndef VSRT_SCAN_FP16_H
#define VSRT_SCAN_FP16_H

#if VSRT_FP16

#define FP16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512fp16,avx2,fma,f16c")))
#define F16_ROWS 4   /* rows per tile (the last rows of a block go one at a time) */
#define F16_GROUP 6  /* queries per tile: query groups of equal size, at most 6 */
#define F16_CHUNK 16 /* 32-value steps per FP16 partial sum (measured 1.5-4 % faster than 8 at 8-32 queries, for an
                      * error bound of 20 u instead of 16 u at d = 2048) */
#define F16_MIN_QUERIES 2 /* one query: the AVX-512 kernel, memory-bound there already */

/* Scales, rounds and packs the queries (rows `d` floats apart) into fq->qh and computes the bound constants (inv_scale
 * 1 / s, coef A_q, offset C_q). Returns 0 if out of memory. */
FP16_TARGET static int f16_prepare(const float *queries, int64_t m, int64_t d, FilterQueries *fq) {
    const int64_t steps = (d + 31) / 32, chunks = (steps + F16_CHUNK - 1) / F16_CHUNK;
    const int64_t lane_steps = steps < F16_CHUNK ? steps : F16_CHUNK;
    if (!filter_queries_alloc(fq, m, d)) return 0;
    const double u = 0x1p-11, v = 0x1p-24, eta = 0x1p-25;
    const double e16 = filter_gamma((double)lane_steps, u) +
                       filter_gamma((double)chunks, u) * (1.0 + filter_gamma((double)lane_steps, u));
    const double e = e16 + 6.0 * v * (1.0 + e16), e_avx = ((double)d / 16.0 + 21.0) * v;
    const double abs_lanes = 32.0 * (double)(lane_steps + chunks + 2) * eta;
    fq->norm_rel = (float)(e * 1.01);
    fq->norm_abs = (float)(abs_lanes * 1.01);
    for (int64_t q = 0; q < m; ++q) {
        const float *x = queries + q * d;
        uint16_t *h = fq->qh + q * fq->qhs;
        __m512 big16 = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16) {
            const __mmask16 mk = filter_mask16(d - i);
            big16 = _mm512_max_ps(big16, _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, x + i)));
        }
        const float big = _mm512_reduce_max_ps(big16); /* NaN and inf are caught by the sums below */
        int ex = 0;
        if (big > 0.0f && isfinite(big)) frexpf(big, &ex); /* big = f 2^ex, f in [1/2, 1) */
        const float s = ldexpf(1.0f, -ex);
        const __m512 sv = _mm512_set1_ps(s);
        __m512d qn8 = _mm512_setzero_pd(), qtn8 = _mm512_setzero_pd();
        for (int64_t i = 0; i < d; i += 16) {
            const __mmask16 mk = filter_mask16(d - i);
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
    __m512 wide[2 * 16]; /* the R x Q scores, then the R norms */
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < Q; ++q) wide[r * Q + q] = f16_widen(tot[r][q]);
    if (NORM)
        for (int r = 0; r < R; ++r) wide[R * Q + r] = f16_widen(ntot[r]);
    filter_tile_out(wide, R, Q, NORM, inv_scale, sc, nrm);
}

DEFINE_FILTER_TILES_6(f16, FP16_TARGET, 4)
DEFINE_FILTER_TILES_6(f16, FP16_TARGET, 1)

static const FilterKernel FILTER_FP16 = {
    "fp16", F16_ROWS, F16_GROUP, F16_MIN_QUERIES, f16_prepare,
    {{FILTER_TILES_6(f16, 4)}, {FILTER_TILES_6(f16, 1)}},
};
#endif /* VSRT_FP16 */

#endif /* VSRT_SCAN_FP16_H */
