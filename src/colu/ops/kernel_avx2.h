/* AVX2 blocks of 8 cones for S = 16, 24, 32... (float32, included by
 * kernel_vector.h where the machine has AVX2 and FMA). */
/* For S a multiple of 8 from 16 up (float32, identity axis) each cone is whole
 * 8-lane vectors. Vectorising across cones, as the flat loops do, would need an
 * S-way de-interleave of every load (gcc's code for S = 16 ran at about
 * 1.5x ReLU's time); here a block of 8 cones is read along each cone, every
 * cone's partial sums stay in one vector, and a transpose-and-add tree turns
 * the 8 vectors into one vector of the 8 cones' sums. The per-cone scalars
 * (norm, weight, slope) then go through the same helpers as everywhere else,
 * in a fixed 8-step loop the compiler makes one vector pass of, and are
 * broadcast back along each cone for the writes. Each value is still read
 * once from memory (the second read of a block hits L1) and written once. */

/* {sum(v[0]), ..., sum(v[7])}; each sum only ever adds lanes of one vector,
 * so a NaN stays in its own cone */
ALWAYS_INLINE __m256 avx_hsum8(const __m256* v) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    /* u0 = {v0..v3 lanes 0-3 | v0..v3 lanes 4-7}, u1 the same for v4..v7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* 8 cones of S floats at x; the chunk loops unroll where S is a constant */
ALWAYS_INLINE void avx_fwd8(const float* x, float* y, const i64 S, const int kind, const int sc, const float eps) {
    __m256 acc[8];
    float ss[8], a[8], w[8];
    const __m256 zero = _mm256_setzero_ps();
    if (kind == COLU_KIND_COLU) {
        for (int i = 0; i < 8; ++i) {
            const float* xc = x + i * S;
            const __m256 v = _mm256_loadu_ps(xc);
            __m256 s = _mm256_blend_ps(_mm256_mul_ps(v, v), zero, 1); /* lane 0 is the axis */
            for (i64 k = 8; k < S; k += 8) {
                const __m256 u = _mm256_loadu_ps(xc + k);
                s = _mm256_fmadd_ps(u, u, s);
            }
            acc[i] = s;
            a[i] = xc[0];
        }
        _mm256_storeu_ps(ss, avx_hsum8(acc));
        _Pragma("omp simd") for (int j = 0; j < 8; ++j) w[j] = weight_f32(a[j] / (sqrtf(ss[j]) + eps), sc);
        const __m256 one = _mm256_set1_ps(1.0f);
        for (int i = 0; i < 8; ++i) {
            const float* xc = x + i * S;
            float* yc = y + i * S;
            const __m256 bw = _mm256_broadcast_ss(w + i);
            _mm256_storeu_ps(yc, _mm256_mul_ps(_mm256_loadu_ps(xc), _mm256_blend_ps(bw, one, 1)));
            for (i64 k = 8; k < S; k += 8) _mm256_storeu_ps(yc + k, _mm256_mul_ps(_mm256_loadu_ps(xc + k), bw));
        }
        return;
    }
    /* RCoLU: the mean first, then the centred sum of squares (as cone_fwd) */
    const float rs = sqrtf((float)S), inv_s = 1.0f / (float)S;
    float mu[8];
    for (int i = 0; i < 8; ++i) {
        const float* xc = x + i * S;
        __m256 s = _mm256_loadu_ps(xc);
        for (i64 k = 8; k < S; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(xc + k));
        acc[i] = s;
    }
    _mm256_storeu_ps(mu, _mm256_mul_ps(avx_hsum8(acc), _mm256_set1_ps(inv_s)));
    for (int i = 0; i < 8; ++i) {
        const float* xc = x + i * S;
        const __m256 bm = _mm256_broadcast_ss(mu + i);
        __m256 s = zero;
        for (i64 k = 0; k < S; k += 8) {
            const __m256 p = _mm256_sub_ps(_mm256_loadu_ps(xc + k), bm);
            s = _mm256_fmadd_ps(p, p, s);
        }
        acc[i] = s;
    }
    _mm256_storeu_ps(ss, avx_hsum8(acc));
    _Pragma("omp simd") for (int j = 0; j < 8; ++j) w[j] = weight_f32(mu[j] * rs / (sqrtf(ss[j]) + eps), sc);
    for (int i = 0; i < 8; ++i) {
        const float* xc = x + i * S;
        float* yc = y + i * S;
        const __m256 bm = _mm256_broadcast_ss(mu + i), bw = _mm256_broadcast_ss(w + i);
        for (i64 k = 0; k < S; k += 8)
            _mm256_storeu_ps(yc + k, _mm256_fmadd_ps(bw, _mm256_sub_ps(_mm256_loadu_ps(xc + k), bm), bm));
    }
}

/* Software prefetch, 8 KB ahead, of the block that the loop will read then.
 * A block reads all its cache lines, computes, then writes them all; with
 * that rhythm the hardware prefetcher fell behind on tensors that stream
 * from memory: the S = 16 blocks measured 1.4x slower than the AVX2 ones on
 * a (4096, 1024) forward until the prefetch, and then matched or beat them
 * (and every block size gained on small tensors, which are L2-resident).
 * The forward of the S = 4 and S = 8 blocks also prefetches its output for
 * writing, so that the stores find their lines already owned: A/B runs on
 * (4096, 1024) (benchmarks/kernel_ab.py) took 6-20% off against 4 KB
 * without it; for S = 16 it cost as much, so those blocks leave the output
 * to the hardware. */
#define PREFETCH_AHEAD 2048 /* floats */
ALWAYS_INLINE void blk_prefetch(const float* p, const i64 n) {
    for (i64 l = 0; l < n; l += 16) __builtin_prefetch(p + PREFETCH_AHEAD + l, 0, 3);
}
ALWAYS_INLINE void blk_prefetch_out(float* p, const i64 n) {
    for (i64 l = 0; l < n; l += 16) __builtin_prefetch(p + PREFETCH_AHEAD + l, 1, 3);
}

/* nb blocks of 8 cones, one after the other (the AVX-512 blocks' avz_fwd_chunk, for avx_fwd8) */
ALWAYS_INLINE void avx_fwd_chunk(const float* x, float* y, const int nb, const i64 S, const int kind, const int sc,
                                 const float eps) {
    for (int j = 0; j < nb; ++j) {
        blk_prefetch(x + j * 8 * S, 8 * S);
        avx_fwd8(x + j * 8 * S, y + j * 8 * S, S, kind, sc, eps);
    }
}

ALWAYS_INLINE void avx_bwd8(const float* x, const float* gr, float* gi, const i64 S, const int kind, const int sc,
                            const float eps) {
    __m256 acc_s[8], acc_q[8];
    float ss[8], q[8], a[8], w[8], coef[8], kk[8];
    const __m256 zero = _mm256_setzero_ps();
    if (kind == COLU_KIND_COLU) {
        for (int i = 0; i < 8; ++i) {
            const float *xc = x + i * S, *gc = gr + i * S;
            const __m256 v = _mm256_loadu_ps(xc), g = _mm256_loadu_ps(gc);
            __m256 s = _mm256_blend_ps(_mm256_mul_ps(v, v), zero, 1);
            __m256 t = _mm256_blend_ps(_mm256_mul_ps(g, v), zero, 1);
            for (i64 k = 8; k < S; k += 8) {
                const __m256 u = _mm256_loadu_ps(xc + k);
                s = _mm256_fmadd_ps(u, u, s);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(gc + k), u, t);
            }
            acc_s[i] = s;
            acc_q[i] = t;
            a[i] = xc[0];
        }
        _mm256_storeu_ps(ss, avx_hsum8(acc_s));
        _mm256_storeu_ps(q, avx_hsum8(acc_q));
        _Pragma("omp simd") for (int j = 0; j < 8; ++j) bwd_scalars_f32(ss[j], q[j], a[j], eps, sc, w + j, kk + j, coef + j);
        for (int i = 0; i < 8; ++i) {
            const float *xc = x + i * S, *gc = gr + i * S;
            float* oc = gi + i * S;
            const __m256 bw = _mm256_broadcast_ss(w + i), bc = _mm256_broadcast_ss(coef + i);
            const __m256 g = _mm256_loadu_ps(gc);
            const __m256 sec = _mm256_fnmadd_ps(bc, _mm256_loadu_ps(xc), _mm256_mul_ps(bw, g));
            /* the axis lane is g_a + kk, with no x term (as cone_bwd) */
            _mm256_storeu_ps(oc, _mm256_blend_ps(sec, _mm256_add_ps(g, _mm256_broadcast_ss(kk + i)), 1));
            for (i64 k = 8; k < S; k += 8)
                _mm256_storeu_ps(oc + k, _mm256_fnmadd_ps(bc, _mm256_loadu_ps(xc + k),
                                                          _mm256_mul_ps(bw, _mm256_loadu_ps(gc + k))));
        }
        return;
    }
    const float rs = sqrtf((float)S), inv_rs = 1.0f / rs, inv_s = 1.0f / (float)S;
    float mu[8], gm[8], add[8];
    for (int i = 0; i < 8; ++i) {
        const float *xc = x + i * S, *gc = gr + i * S;
        __m256 s = _mm256_loadu_ps(xc), t = _mm256_loadu_ps(gc);
        for (i64 k = 8; k < S; k += 8) {
            s = _mm256_add_ps(s, _mm256_loadu_ps(xc + k));
            t = _mm256_add_ps(t, _mm256_loadu_ps(gc + k));
        }
        acc_s[i] = s;
        acc_q[i] = t;
    }
    const __m256 vinv_s = _mm256_set1_ps(inv_s);
    _mm256_storeu_ps(mu, _mm256_mul_ps(avx_hsum8(acc_s), vinv_s));
    _mm256_storeu_ps(gm, _mm256_mul_ps(avx_hsum8(acc_q), vinv_s));
    for (int i = 0; i < 8; ++i) {
        const float *xc = x + i * S, *gc = gr + i * S;
        const __m256 bm = _mm256_broadcast_ss(mu + i);
        __m256 s = zero, t = zero;
        for (i64 k = 0; k < S; k += 8) {
            const __m256 p = _mm256_sub_ps(_mm256_loadu_ps(xc + k), bm);
            s = _mm256_fmadd_ps(p, p, s);
            t = _mm256_fmadd_ps(_mm256_loadu_ps(gc + k), p, t);
        }
        acc_s[i] = s;
        acc_q[i] = t;
    }
    _mm256_storeu_ps(ss, avx_hsum8(acc_s));
    _mm256_storeu_ps(q, avx_hsum8(acc_q));
    _Pragma("omp simd") for (int j = 0; j < 8; ++j) {
        float k;
        bwd_scalars_f32(ss[j], q[j], mu[j] * rs, eps, sc, w + j, &k, coef + j);
        add[j] = gm[j] + k * inv_rs - w[j] * gm[j] + coef[j] * mu[j];
    }
    for (int i = 0; i < 8; ++i) {
        const float *xc = x + i * S, *gc = gr + i * S;
        float* oc = gi + i * S;
        const __m256 bw = _mm256_broadcast_ss(w + i), bc = _mm256_broadcast_ss(coef + i);
        const __m256 ba = _mm256_broadcast_ss(add + i);
        for (i64 k = 0; k < S; k += 8)
            _mm256_storeu_ps(oc + k, _mm256_fnmadd_ps(bc, _mm256_loadu_ps(xc + k),
                                                      _mm256_fmadd_ps(bw, _mm256_loadu_ps(gc + k), ba)));
    }
}

/* nb blocks of 8 cones, one after the other */
ALWAYS_INLINE void avx_bwd_chunk(const float* x, const float* gr, float* gi, const int nb, const i64 S, const int kind,
                                 const int sc, const float eps) {
    for (int j = 0; j < nb; ++j) {
        blk_prefetch(x + j * 8 * S, 8 * S);
        blk_prefetch(gr + j * 8 * S, 8 * S);
        avx_bwd8(x + j * 8 * S, gr + j * 8 * S, gi + j * 8 * S, S, kind, sc, eps);
    }
}
