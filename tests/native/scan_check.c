/* Stand-alone check of vsrt/runtime/_scan_kernels.h for cross-compiled targets (AArch64 under qemu; see
 * tests/test_scan_kernel.py): every finite float16 value decodes exactly, and the top-k of each code type equals
 * a double-precision brute force. Prints "ok" and exits 0, or says what differs and exits 1. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../vsrt/runtime/_scan_kernels.h"

static uint32_t state = 12345u;
static float rnd(void) { /* uniform in [-1, 1) */
    state = state * 1664525u + 1013904223u;
    return (float)((state >> 8) & 0xffffffu) / 8388608.0f - 1.0f;
}

static uint16_t float_to_half(float f) { /* AArch64 only: elsewhere the FP16 cases see zeros (pytest covers x86) */
#if defined(__aarch64__)
    __fp16 h = (__fp16)f;
    uint16_t b;
    memcpy(&b, &h, 2);
    return b;
#else
    (void)f;
    return 0;
#endif
}

static int run_topk(const Isa *isa, int kind, const void *codes, int64_t n, int64_t d, const float *scales,
                    const float *q, int64_t m, int64_t k, float *out_s, int64_t *out_i) {
    const int64_t kk = k < n ? k : n;
    float *hs = malloc(sizeof(float) * (size_t)(m * kk));
    int64_t *hi = malloc(sizeof(int64_t) * (size_t)(m * kk));
    Heap *heaps = malloc(sizeof(Heap) * (size_t)m);
    for (int64_t j = 0; j < m; ++j) heaps[j] = (Heap){hs + j * kk, hi + j * kk, 0, kk};
    if (!scan_block(isa, kind, codes, n, d, scales, q, m, NULL, heaps)) {
        printf("out of memory\n");
        exit(1);
    }
    for (int64_t j = 0; j < m; ++j) heap_drain_sorted(&heaps[j], out_s + j * k, out_i + j * k);
    free(hs);
    free(hi);
    free(heaps);
    return (int)kk;
}

static int check(const Isa *isa);

/* Prefetch plans: the steps of a plan (prefetch_at at j = 0, lanes, 2 lanes, ...) touch every 64-byte line of their
 * share (up to 8 lines a step), none before it and none more than 7 lines past it. */
static int check_prefetch(void) {
    int failures = 0;
    static unsigned char hit[8 * 131 + 16];
    const int lanes_of[] = {4, 8, 16, 32};
    for (int li = 0; li < 4; ++li)
        for (int64_t iters = 1; iters <= 131; iters += 5)
            for (int64_t len = 0; len <= 8 * 64 * iters; len += 61 + 64 * (iters / 4)) {
                const int lanes = lanes_of[li];
                const uintptr_t lo = (uintptr_t)1 << 20; /* addresses only: nothing is read */
                const Prefetch pf = prefetch_plan((const char *)lo, len, iters, lanes);
                memset(hit, 0, sizeof hit);
                int bad = pf.lo != lo || pf.end != lo + (uintptr_t)len || pf.lines < 1 || pf.lines > 8;
                for (int64_t s = 0; s < iters && !bad; ++s) {
                    const uintptr_t p = pf.lo + ((uintptr_t)(s * lanes) << pf.shift); /* as prefetch_at */
                    if (p >= pf.end) continue;
                    if (p < lo || (p - lo) % 64) bad = 1;
                    for (int l = 0; l < pf.lines && !bad; ++l) {
                        const uintptr_t line = (p - lo) / 64 + (uintptr_t)l;
                        if (line * 64 >= (uintptr_t)len + 7 * 64) bad = 1;
                        else if (line < sizeof hit) hit[line] = 1;
                    }
                }
                for (int64_t line = 0; line * 64 < len && !bad; ++line)
                    if (!hit[line]) bad = 1;
                if (bad && failures++ < 5)
                    printf("prefetch plan: len %lld, %lld steps of %d lanes: lines %d shift %d\n", (long long)len,
                           (long long)iters, lanes, pf.lines, pf.shift);
            }
    return failures;
}

int main(void) { /* the CPU's own kernel, and the portable one */
    int failures = check_prefetch();
    if (failures) printf("prefetch plans: %d failures\n", failures);
    failures += check(isa_table(ISA_AUTO));
    if (isa_table(ISA_AUTO) != isa_table(ISA_GENERIC)) failures += check(isa_table(ISA_GENERIC));
    return failures ? 1 : 0;
}

static int check(const Isa *isa) {
    int failures = 0;
    /* 1. every finite half decodes exactly (one-hot queries, k = n) */
    {
        int64_t count = 0;
        uint16_t *codes = malloc(65536 * 2);
        for (uint32_t b = 0; b < 65536; ++b)
            if (((b >> 10) & 0x1f) != 0x1f) codes[count++] = (uint16_t)b;
        const int64_t d = 8, n = count / d;
        float q[8 * 8] = {0};
        for (int j = 0; j < 8; ++j) q[j * 8 + j] = 1.0f;
        float *s = malloc(sizeof(float) * 8 * n);
        int64_t *ix = malloc(sizeof(int64_t) * 8 * n);
        run_topk(isa, CODE_F16, codes, n, d, NULL, q, 8, n, s, ix);
        for (int j = 0; j < 8; ++j)
            for (int64_t r = 0; r < n; ++r) {
                const float want = half_bits_to_float(codes[ix[j * n + r] * d + j]);
                if (s[j * n + r] != want) {
                    if (failures++ < 5) printf("decode: %g != %g\n", s[j * n + r], want);
                }
            }
#if defined(__aarch64__)
        for (uint32_t b = 0; b < 65536; ++b) { /* __fp16 path against the bit-level formula */
            if (((b >> 10) & 0x1f) == 0x1f) continue;
            __fp16 h;
            uint16_t hb = (uint16_t)b;
            memcpy(&h, &hb, 2);
            if ((float)h != half_bits_to_float(hb)) failures++;
        }
#endif
        free(codes);
        free(s);
        free(ix);
    }
    /* 2. top-k vs a double brute force, every code type, odd shapes */
    const int64_t shapes[][4] = {{1, 1, 1, 1}, {5, 7, 3, 4}, {9, 16, 7, 5}, {250, 33, 13, 10}, {64, 2048, 8, 10}};
    for (int kind = 0; kind < 3; ++kind)
        for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; ++t) {
            const int64_t n = shapes[t][0], d = shapes[t][1], m = shapes[t][2], k = shapes[t][3];
            void *codes = malloc((size_t)(n * d * 4));
            double *vals = malloc(sizeof(double) * (size_t)(n * d));
            float *scales = kind == CODE_I8 ? malloc(sizeof(float) * (size_t)n) : NULL;
            float *q = malloc(sizeof(float) * (size_t)(m * d));
            for (int64_t r = 0; r < n; ++r) {
                if (scales) scales[r] = 0.001f + 0.01f * (rnd() + 1.0f);
                for (int64_t c = 0; c < d; ++c) {
                    const float x = rnd();
                    if (kind == CODE_F32) {
                        ((float *)codes)[r * d + c] = x;
                        vals[r * d + c] = x;
                    } else if (kind == CODE_I8) {
                        const int8_t v = (int8_t)lrintf(x * 127.0f);
                        ((int8_t *)codes)[r * d + c] = v;
                        vals[r * d + c] = (double)v * scales[r];
                    } else {
                        const uint16_t h = float_to_half(x);
                        ((uint16_t *)codes)[r * d + c] = h;
                        vals[r * d + c] = half_bits_to_float(h);
                    }
                }
            }
            for (int64_t i = 0; i < m * d; ++i) q[i] = rnd();
            float *s = malloc(sizeof(float) * (size_t)(m * k));
            int64_t *ix = malloc(sizeof(int64_t) * (size_t)(m * k));
            const int kk = run_topk(isa, kind, codes, n, d, scales, q, m, k, s, ix);
            for (int64_t j = 0; j < m; ++j) {
                double best_prev = INFINITY;
                for (int r = 0; r < kk; ++r) { /* each returned score is the true score of its row, and no row
                                                * left out beats the k-th by more than the float32 tolerance */
                    double truth = 0;
                    for (int64_t c = 0; c < d; ++c) truth += vals[ix[j * k + r] * d + c] * q[j * d + c];
                    if (fabs(truth - s[j * k + r]) > 1e-4 * d || s[j * k + r] > best_prev) failures++;
                    best_prev = s[j * k + r];
                }
                for (int64_t row = 0; row < n; ++row) {
                    double truth = 0;
                    for (int64_t c = 0; c < d; ++c) truth += vals[row * d + c] * q[j * d + c];
                    if (truth > s[j * k + kk - 1] + 1e-4 * d) {
                        int found = 0;
                        for (int r = 0; r < kk; ++r) found |= ix[j * k + r] == row;
                        if (!found && failures++ < 5) printf("kind %d: row %lld missing\n", kind, (long long)row);
                    }
                }
            }
            free(codes);
            free(vals);
            free(scales);
            free(q);
            free(s);
            free(ix);
        }
    if (failures)
        printf("%d failures (kernel %s)\n", failures, isa->name);
    else
        printf("ok (kernel %s)\n", isa->name);
    return failures;
}
