/*
 * The AVX512-BF16 filter of vsrt.runtime._scan (included by _scan_kernels.h after _scan_filter.h, whose driver runs
 * it): FP16 rows against batches of queries on CPUs with AVX512-BF16 but no AVX512-FP16 (AMD Zen 4, Xeon Cooper Lake).
 * Each 32 values of a row are decoded once per query group (two F16C conversions to float32, one rounding to BF16),
 * then multiplied into every query of the group by `vdpbf16ps`: 32 products per instruction where the AVX-512
 * kernel's float32 FMAs do 16, so batches that the FMA ports bound go about 1.7 times faster (measured on Zen 4).
 *
 * Arithmetic. Rows g (FP16 values, exact in float32) and queries q are rounded to nearest BF16 (8 significant bits,
 * u = 2^-8): g~ = g (1 + d1), q~ = q (1 + d2), |d1|, |d2| <= u (FP16 values are normal BF16 numbers; a float32 query
 * value below 2^-126 becomes 0). `vdpbf16ps` adds the exact products g~ q~ (8 x 8 bits) to float32 lane sums with
 * at most two roundings each (v = 2^-24); the 16 lanes are then summed with 4 roundings. Inputs below 2^-126 are read
 * as 0 and results below it flushed to 0. For the exact score e the AVX-512 kernel computes, |e - g.q| <= E_avx |g||q|
 * (E_avx = (d / 16 + 21) v, its own rounding), and the filter's score a:
 *     |a - e| <= |g| coef_q + offset_q,
 *     coef_q = ((2u + u^2) + gamma(2 S + 4) (1 + u)^2 + E_avx) |q|       (S = ceil(d / 32) steps per lane)
 *     offset_q = (2^16 d + 2 d + 64 S) 2^-126                              (flushed query values, products, sums)
 * by Cauchy-Schwarz, with |g| from the BF16 squared norm N the same sums give: |g|^2 <= N / ((1 - gamma) (1 - u)^2).
 * Both carry 1 % of margin for their float32 evaluation. A query of norm beyond 2^100 (or NaN, inf) gets coef inf:
 * its rows are always refined, so no float32 overflow in the filter's sums can hide a row; rows with NaN or inf codes
 * give NaN or inf sums and are always refined too.
 *
 * Tiles: 3 rows x up to 8 queries (24 zmm accumulators, 3 rows, 3 norm sums and a query: 31 registers), the first
 * query group of each row tile also summing the norms; software prefetch of the next row tile as in the AVX-512
 * kernel. Measured in L2 on Zen 4, one thread: 3 x 8 196 GFLOP/s, 4 x 6 176, 4 x 4 140; AVX-512 float32 113.
 */
#ifndef VSRT_SCAN_BF16_H
#define VSRT_SCAN_BF16_H

#if VSRT_BF16
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#define BF16_ROWS 3
#define BF16_GROUP 8
#define BF16_MIN_QUERIES 6 /* fewer: the AVX-512 kernel, memory-bound there (measured on 100K x 2048, Zen 4, 2 threads:
                            * the filter 3-5 % slower at 2-5 queries, 5 % faster at 6, 9-12 % at 7-8) */

/* 32 float32 values (16 from lo, 16 from hi) as BF16, in order, rounded to nearest even. */
static inline __attribute__((always_inline)) BF16_TARGET __m512i bf16_pack(__m512 lo, __m512 hi) {
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* Rounds and packs the queries (rows `d` floats apart) into fq->qh and computes the bound constants (coef, offset;
 * inv_scale stays unused: the queries are not scaled). Returns 0 if out of memory. */
BF16_TARGET static int bf16_prepare(const float *queries, int64_t m, int64_t d, FilterQueries *fq) {
    if (!filter_queries_alloc(fq, m, d)) return 0;
    const double u = 0x1p-8, v = 0x1p-24, steps = (double)((d + 31) / 32);
    const double gamma = filter_gamma(2.0 * steps + 4.0, v), e_avx = ((double)d / 16.0 + 21.0) * v;
    const double rel = (2.0 * u + u * u) + gamma * (1.0 + u) * (1.0 + u) + e_avx;
    fq->norm_rel = (float)((1.0 - (1.0 - gamma) * (1.0 - u) * (1.0 - u)) * 1.01);
    fq->norm_abs = 0.0f; /* FP16 values are at least 2^-24, so their BF16 squares are never flushed */
    const float offset = (float)((65536.0 * (double)d + 2.0 * (double)d + 64.0 * steps) * 0x1p-126 * 1.01) + 0x1p-120f;
    for (int64_t q = 0; q < m; ++q) {
        const float *x = queries + q * d;
        uint16_t *h = fq->qh + q * fq->qhs;
        __m512d qn8 = _mm512_setzero_pd();
        for (int64_t i = 0; i < d; i += 32) {
            const __m512 lo = _mm512_maskz_loadu_ps(filter_mask16(d - i), x + i);
            const __m512 hi = _mm512_maskz_loadu_ps(filter_mask16(d - i - 16), x + i + 16);
            _mm512_store_si512(h + i, bf16_pack(lo, hi)); /* qhs and i are multiples of 32 */
            const __m512 both[2] = {lo, hi};
            for (int k = 0; k < 2; ++k) {
                const __m512d w0 = _mm512_cvtps_pd(_mm512_castps512_ps256(both[k]));
                const __m512d w1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(both[k], 1));
                qn8 = _mm512_fmadd_pd(w1, w1, _mm512_fmadd_pd(w0, w0, qn8));
            }
        }
        const int64_t padded = (d + 31) / 32 * 32;
        memset(h + padded, 0, sizeof(uint16_t) * (size_t)(fq->qhs - padded));
        const double qn = sqrt(_mm512_reduce_add_pd(qn8)) * (1.0 + 1e-12);
        fq->coef[q] = isfinite(qn) && qn <= 0x1p100 ? (float)(rel * qn * 1.01) : INFINITY; /* inf: always refine */
        fq->offset[q] = offset;
    }
    return 1;
}

/* The 32 values of a row from p as BF16 (left < 32: only the first `left`, the rest zeros). */
static inline __attribute__((always_inline)) BF16_TARGET __m512i bf16_row(const uint16_t *p, int64_t left) {
    if (left >= 32)
        return bf16_pack(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)),
                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16))));
    return bf16_pack(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(filter_mask16(left), p)),
                     _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(filter_mask16(left - 16), p + 16)));
}

/* One step of bf16_tile_rq: 32 values of d from j. */
#define BF16_STEP(LEFT)                                                                                              \
    do {                                                                                                             \
        prefetch_at(pf, j);                                                                                          \
        __m512bh x[BF16_ROWS];                                                                                       \
        for (int r = 0; r < R; ++r) x[r] = (__m512bh)bf16_row(rows + r * d + j, LEFT);                               \
        if (NORM)                                                                                                    \
            for (int r = 0; r < R; ++r) nacc[r] = _mm512_dpbf16_ps(nacc[r], x[r], x[r]);                             \
        for (int q = 0; q < Q; ++q) {                                                                                \
            const __m512bh qv = (__m512bh)_mm512_load_si512(qh + q * qhs + j);                                       \
            for (int r = 0; r < R; ++r) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], x[r], qv);                           \
        }                                                                                                            \
    } while (0)

/* BF16 dot products of R rows x Q queries (compile-time constants at each call site) into sc[r * Q + q]; with NORM
 * the rows' BF16 squared norms into nrm[r]. */
static inline __attribute__((always_inline)) BF16_TARGET void bf16_tile_rq(const uint16_t *rows, int64_t d,
                                                                          const uint16_t *qh, int64_t qhs,
                                                                          const float *inv_scale, const int R,
                                                                          const int Q, const int NORM, float *sc,
                                                                          float *nrm, Prefetch *next) {
    (void)inv_scale; /* unused: the queries are not scaled */
    __m512 acc[BF16_ROWS][BF16_GROUP], nacc[BF16_ROWS];
    for (int r = 0; r < R; ++r) {
        nacc[r] = _mm512_setzero_ps();
        for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_setzero_ps();
    }
    const Prefetch pf = prefetch_or_none(next);
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) BF16_STEP(32);
    if (j < d) BF16_STEP(d - j);
    __m512 wide[2 * 16]; /* the R x Q scores, then the R norms */
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < Q; ++q) wide[r * Q + q] = acc[r][q];
    if (NORM)
        for (int r = 0; r < R; ++r) wide[R * Q + r] = nacc[r];
    filter_tile_out(wide, R, Q, NORM, NULL, sc, nrm);
}

DEFINE_FILTER_TILES_8(bf16, BF16_TARGET, 3)
DEFINE_FILTER_TILES_8(bf16, BF16_TARGET, 1)

static const FilterKernel FILTER_BF16 = {
    "bf16", BF16_ROWS, BF16_GROUP, BF16_MIN_QUERIES, bf16_prepare,
    {{FILTER_TILES_8(bf16, 3)}, {FILTER_TILES_8(bf16, 1)}},
};
#endif /* VSRT_BF16 */

#endif /* VSRT_SCAN_BF16_H */
