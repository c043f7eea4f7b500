/* AVX2 blocks of 8 cones for S = 4, 8, 16, 24, 32... (float32, included by
 * kernel_vector.h where the machine has AVX2 and FMA). */
/* For S a multiple of 8 (float32, identity axis) each cone is whole
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

/* The per-cone sums of 8 cones of S floats at x (t, the axis value; ss, the squared section norm; for
 * RCoLU mu, the mean) and the output, the section scaled by w; the loops over k unroll where S is a
 * constant */
ALWAYS_INLINE void avx_stats8(const float* x, const i64 S, const int kind, float* t, float* ss, float* mu) {
    __m256 acc[8];
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
            t[i] = xc[0];
        }
        _mm256_storeu_ps(ss, avx_hsum8(acc));
        return;
    }
    /* RCoLU: the mean first, then the centred sum of squares (as cone_fwd) */
    for (int i = 0; i < 8; ++i) {
        const float* xc = x + i * S;
        __m256 s = _mm256_loadu_ps(xc);
        for (i64 k = 8; k < S; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(xc + k));
        acc[i] = s;
    }
    const __m256 m = _mm256_mul_ps(avx_hsum8(acc), _mm256_set1_ps(1.0f / (float)S));
    _mm256_storeu_ps(mu, m);
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
    _mm256_storeu_ps(t, _mm256_mul_ps(m, _mm256_set1_ps(sqrtf((float)S))));
}

/* base as avx_fwd_scalars */
ALWAYS_INLINE void avx_apply8(const float* x, float* y, const i64 S, const int kind, const int act, const float* w,
                              const float* mu, const float* base) {
    if (kind == COLU_KIND_COLU) {
        const __m256 one = _mm256_set1_ps(1.0f);
        for (int i = 0; i < 8; ++i) {
            const float* xc = x + i * S;
            float* yc = y + i * S;
            const __m256 bw = _mm256_broadcast_ss(w + i), v = _mm256_loadu_ps(xc);
            if (act == COLU_ACT_IDENTITY) _mm256_storeu_ps(yc, _mm256_mul_ps(v, _mm256_blend_ps(bw, one, 1)));
            else _mm256_storeu_ps(yc, _mm256_blend_ps(_mm256_mul_ps(v, bw), _mm256_broadcast_ss(base + i), 1));
            for (i64 k = 8; k < S; k += 8) _mm256_storeu_ps(yc + k, _mm256_mul_ps(_mm256_loadu_ps(xc + k), bw));
        }
        return;
    }
    for (int i = 0; i < 8; ++i) {
        const float* xc = x + i * S;
        float* yc = y + i * S;
        const __m256 bm = _mm256_broadcast_ss(mu + i), bw = _mm256_broadcast_ss(w + i);
        const __m256 bb = _mm256_broadcast_ss(base + i);
        for (i64 k = 0; k < S; k += 8)
            _mm256_storeu_ps(yc + k, _mm256_fmadd_ps(bw, _mm256_sub_ps(_mm256_loadu_ps(xc + k), bm), bb));
    }
}

/* The per-cone scalars of n cones from their sums, as cone_fwd and cone_bwd (kernel_body.h), in one
 * loop the compiler vectorises across cones. t is the pre-activation axis value (a; for RCoLU
 * t = mu sqrt(S)), so a relu or silu axis costs one activation per cone here and nothing per channel.
 * Forward: the weight w and base, for CoLU the axis output phi(a) (used only with an axis activation),
 * for RCoLU the value added to every channel (phi(t)/sqrt(S); mu itself for the identity, as cone_fwd). */
#define AVX_CHUNK 8 /* blocks per chunk at most (avx_fwd_chunk) */

/* phi(t) of n cones into tp and phi'(t) into d (either may be 0: not wanted), as act_f32 and act_grad_f32
 * compute them, in
 * loops of their own: fused with the scalars' loop, or silu's phi and phi' in one loop, the compiler kept
 * a branch of the exponential's clamp and ran the loop scalar (CoLU S = 8 with a silu axis at 5.9x
 * ReLU). The sigmoid alone in a loop vectorises, as the soft weight's does. */
ALWAYS_INLINE void avx_act(const int n, const float* t, float* tp, float* d, const int act) {
    if (act == COLU_ACT_RELU) {
        if (tp) _Pragma("omp simd") for (int j = 0; j < n; ++j) tp[j] = act_f32(t[j], COLU_ACT_RELU);
        if (d) _Pragma("omp simd") for (int j = 0; j < n; ++j) d[j] = act_grad_f32(t[j], COLU_ACT_RELU);
        return;
    }
    float sg[8 * AVX_CHUNK];
    _Pragma("omp simd") for (int j = 0; j < n; ++j) sg[j] = sigm_f32(t[j]);
    if (tp) _Pragma("omp simd") for (int j = 0; j < n; ++j) tp[j] = t[j] * sg[j];
    if (d) _Pragma("omp simd") for (int j = 0; j < n; ++j) d[j] = sg[j] * (1.0f + t[j] * (1.0f - sg[j]));
}
ALWAYS_INLINE void avx_fwd_scalars(const int n, const float* t, const float* ss, const float* mu, float* w,
                                   float* base, const i64 S, const int kind, const int sc, const int act,
                                   const float eps) {
    const float inv_rs = 1.0f / sqrtf((float)S);
    float tps[8 * AVX_CHUNK];
    const float* tp = t;
    if (act != COLU_ACT_IDENTITY) {
        avx_act(n, t, tps, 0, act);
        tp = tps;
    }
    int over = 0;
    _Pragma("omp simd reduction(|:over)") for (int j = 0; j < n; ++j) {
        w[j] = weight_f32(tp[j] / (sqrtf(ss[j]) + eps), sc);
        if (kind == COLU_KIND_RCOLU) base[j] = act != COLU_ACT_IDENTITY ? tp[j] * inv_rs : mu[j];
        else if (act != COLU_ACT_IDENTITY) base[j] = tp[j];
        over |= too_big_f32(ss[j]);
    }
    if (over) note_overflow();
}

/* Backward: w, coef, and b, for CoLU the axis' added term kk (its gradient is (g_a + kk) d, d = phi'(a),
 * d set only with an axis activation), for RCoLU the per-cone constant add that folds phi'(t) in */
ALWAYS_INLINE void avx_bwd_scalars(const int n, const float* t, const float* ss, const float* q, const float* mu,
                                   const float* gm, float* w, float* b, float* coef, float* d, const i64 S,
                                   const int kind, const int sc, const int act, const float eps) {
    float tps[8 * AVX_CHUNK];
    const float* tp = t;
    if (act != COLU_ACT_IDENTITY) {
        avx_act(n, t, tps, d, act);
        tp = tps;
    }
    int over = 0;
    if (kind == COLU_KIND_COLU) {
        _Pragma("omp simd reduction(|:over)") for (int j = 0; j < n; ++j)
            over |= bwd_scalars_f32(ss[j], q[j], tp[j], eps, sc, w + j, b + j, coef + j);
        if (over) note_overflow();
        return;
    }
    const float inv_rs = 1.0f / sqrtf((float)S);
    _Pragma("omp simd reduction(|:over)") for (int j = 0; j < n; ++j) {
        float k;
        over |= bwd_scalars_f32(ss[j], q[j], tp[j], eps, sc, w + j, &k, coef + j);
        float gt = gm[j] + k * inv_rs;
        if (act != COLU_ACT_IDENTITY) gt *= d[j];
        b[j] = gt - w[j] * gm[j] + coef[j] * mu[j];
    }
    if (over) note_overflow();
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

/* nb <= AVX_CHUNK blocks of 8 cones: the per-cone sums of every block, then all their weights, then
 * all their outputs, so that the chains of neighbouring blocks (reduction -> square root -> division
 * -> sigmoid -> broadcast back) overlap, as in avz_fwd_chunk. S = 16 and up run one block per call
 * (BLK_CHUNK): their sums are long enough to hide the chain. */
ALWAYS_INLINE void avx_fwd_chunk(const float* x, float* y, const int nb, const i64 S, const int kind, const int sc,
                                 const int act, const float eps) {
    enum { N = 8 * AVX_CHUNK };
    float t[N], ss[N], mu[N], w[N], base[N];
    for (int j = 0; j < nb; ++j) {
        blk_prefetch(x + j * 8 * S, 8 * S);
        if (S <= 8) blk_prefetch_out(y + j * 8 * S, 8 * S);
        avx_stats8(x + j * 8 * S, S, kind, t + 8 * j, ss + 8 * j, mu + 8 * j);
    }
    avx_fwd_scalars(8 * nb, t, ss, mu, w, base, S, kind, sc, act, eps);
    for (int j = 0; j < nb; ++j)
        avx_apply8(x + j * 8 * S, y + j * 8 * S, S, kind, act, w + 8 * j, mu + 8 * j, base + 8 * j);
}

/* The backward's per-cone sums (ss, q = <g, section>, t, and for RCoLU the means of x and g) and outputs
 * (as cone_bwd; b is the axis' added term kk for CoLU, the per-cone constant add for RCoLU) */
ALWAYS_INLINE void avx_bstats8(const float* x, const float* gr, const i64 S, const int kind, float* t, float* ss,
                               float* q, float* mu, float* gm) {
    __m256 acc_s[8], acc_q[8];
    const __m256 zero = _mm256_setzero_ps();
    if (kind == COLU_KIND_COLU) {
        for (int i = 0; i < 8; ++i) {
            const float *xc = x + i * S, *gc = gr + i * S;
            const __m256 v = _mm256_loadu_ps(xc), g = _mm256_loadu_ps(gc);
            __m256 s = _mm256_blend_ps(_mm256_mul_ps(v, v), zero, 1);
            __m256 u = _mm256_blend_ps(_mm256_mul_ps(g, v), zero, 1);
            for (i64 k = 8; k < S; k += 8) {
                const __m256 e = _mm256_loadu_ps(xc + k);
                s = _mm256_fmadd_ps(e, e, s);
                u = _mm256_fmadd_ps(_mm256_loadu_ps(gc + k), e, u);
            }
            acc_s[i] = s;
            acc_q[i] = u;
            t[i] = xc[0];
        }
        _mm256_storeu_ps(ss, avx_hsum8(acc_s));
        _mm256_storeu_ps(q, avx_hsum8(acc_q));
        return;
    }
    for (int i = 0; i < 8; ++i) {
        const float *xc = x + i * S, *gc = gr + i * S;
        __m256 s = _mm256_loadu_ps(xc), u = _mm256_loadu_ps(gc);
        for (i64 k = 8; k < S; k += 8) {
            s = _mm256_add_ps(s, _mm256_loadu_ps(xc + k));
            u = _mm256_add_ps(u, _mm256_loadu_ps(gc + k));
        }
        acc_s[i] = s;
        acc_q[i] = u;
    }
    const __m256 vinv_s = _mm256_set1_ps(1.0f / (float)S);
    const __m256 m = _mm256_mul_ps(avx_hsum8(acc_s), vinv_s);
    _mm256_storeu_ps(mu, m);
    _mm256_storeu_ps(gm, _mm256_mul_ps(avx_hsum8(acc_q), vinv_s));
    for (int i = 0; i < 8; ++i) {
        const float *xc = x + i * S, *gc = gr + i * S;
        const __m256 bm = _mm256_broadcast_ss(mu + i);
        __m256 s = zero, u = zero;
        for (i64 k = 0; k < S; k += 8) {
            const __m256 p = _mm256_sub_ps(_mm256_loadu_ps(xc + k), bm);
            s = _mm256_fmadd_ps(p, p, s);
            u = _mm256_fmadd_ps(_mm256_loadu_ps(gc + k), p, u);
        }
        acc_s[i] = s;
        acc_q[i] = u;
    }
    _mm256_storeu_ps(ss, avx_hsum8(acc_s));
    _mm256_storeu_ps(q, avx_hsum8(acc_q));
    _mm256_storeu_ps(t, _mm256_mul_ps(m, _mm256_set1_ps(sqrtf((float)S))));
}

ALWAYS_INLINE void avx_bapply8(const float* x, const float* gr, float* gi, const i64 S, const int kind,
                               const int act, const float* w, const float* b, const float* coef, const float* d) {
    for (int i = 0; i < 8; ++i) {
        const float *xc = x + i * S, *gc = gr + i * S;
        float* oc = gi + i * S;
        const __m256 bw = _mm256_broadcast_ss(w + i), bc = _mm256_broadcast_ss(coef + i);
        const __m256 bb = _mm256_broadcast_ss(b + i);
        if (kind == COLU_KIND_COLU) {
            const __m256 g = _mm256_loadu_ps(gc);
            const __m256 sec = _mm256_fnmadd_ps(bc, _mm256_loadu_ps(xc), _mm256_mul_ps(bw, g));
            /* the axis lane is (g_a + kk) phi'(a), with no x term */
            __m256 ax = _mm256_add_ps(g, bb);
            if (act != COLU_ACT_IDENTITY) ax = _mm256_mul_ps(ax, _mm256_broadcast_ss(d + i));
            _mm256_storeu_ps(oc, _mm256_blend_ps(sec, ax, 1));
            for (i64 k = 8; k < S; k += 8)
                _mm256_storeu_ps(oc + k, _mm256_fnmadd_ps(bc, _mm256_loadu_ps(xc + k),
                                                          _mm256_mul_ps(bw, _mm256_loadu_ps(gc + k))));
        } else {
            for (i64 k = 0; k < S; k += 8)
                _mm256_storeu_ps(oc + k, _mm256_fnmadd_ps(bc, _mm256_loadu_ps(xc + k),
                                                          _mm256_fmadd_ps(bw, _mm256_loadu_ps(gc + k), bb)));
        }
    }
}

/* nb <= AVX_CHUNK blocks of 8 cones in the three phases of avx_fwd_chunk */
ALWAYS_INLINE void avx_bwd_phased(const float* x, const float* gr, float* gi, const int nb, const i64 S, const int kind,
                                 const int sc, const int act, const float eps) {
    enum { N = 8 * AVX_CHUNK };
    float t[N], ss[N], q[N], mu[N], gm[N], w[N], b[N], coef[N], d[N];
    for (int j = 0; j < nb; ++j) {
        const i64 o = j * 8 * S;
        blk_prefetch(x + o, 8 * S);
        blk_prefetch(gr + o, 8 * S);
        avx_bstats8(x + o, gr + o, S, kind, t + 8 * j, ss + 8 * j, q + 8 * j, mu + 8 * j, gm + 8 * j);
    }
    avx_bwd_scalars(8 * nb, t, ss, q, mu, gm, w, b, coef, d, S, kind, sc, act, eps);
    for (int j = 0; j < nb; ++j) {
        const i64 o = j * 8 * S;
        avx_bapply8(x + o, gr + o, gi + o, S, kind, act, w + 8 * j, b + 8 * j, coef + 8 * j, d + 8 * j);
    }
}

/* nb blocks of 8 cones, one after the other (the AVX-512 S = 16 backward runs these) */
ALWAYS_INLINE void avx_bwd_chunk(const float* x, const float* gr, float* gi, const int nb, const i64 S, const int kind,
                                 const int sc, const int act, const float eps) {
    for (int j = 0; j < nb; ++j) avx_bwd_phased(x + j * 8 * S, gr + j * 8 * S, gi + j * 8 * S, 1, S, kind, sc, act, eps);
}

/* ----------------------------------------------- AVX2 blocks for S = 4 */
/* 8 cones of 4 floats are 4 vectors of 2 cones each (one per 128-bit lane),
 * and a 4x4 transpose inside each lane (8 in-lane shuffles, no cross-lane
 * permute) turns them into 4 vectors that hold channel k of all 8 cones
 * (cones 0, 2, 4, 6, 1, 3, 5, 7: any order does, as the same transpose,
 * its own inverse, puts them back). The per-cone sums are then lane-wise
 * adds, and the square root, division and sigmoid run once per cone, 8 at a
 * time, where gcc's vectorisation of the flat loop de-interleaves with
 * cross-lane permutes and redoes them for the writes. As for AVX-512
 * (avz_fwd_chunk), a chunk of blocks runs in three phases so that the long
 * per-cone chains of neighbouring blocks overlap. No lane ever mixes two
 * cones, so a NaN stays in its own cone. */
ALWAYS_INLINE void avx_transpose4(__m256* v) {
    const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    v[0] = _mm256_shuffle_ps(t0, t2, 0x44);
    v[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    v[2] = _mm256_shuffle_ps(t1, t3, 0x44);
    v[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}

ALWAYS_INLINE void avx_load4(__m256* v, const float* p) {
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(p + 8 * i);
    avx_transpose4(v);
}

ALWAYS_INLINE void avx_store4(float* p, __m256* v) {
    avx_transpose4(v);
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(p + 8 * i, v[i]);
}

ALWAYS_INLINE __m256 avx_sum4(const __m256* v) {
    return _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
}

/* per-cone sums of a block (t, the axis value; ss, the squared section norm; for RCoLU mu, the mean),
 * keeping the transposed (for RCoLU, centred) channels in v for avx_apply4 */
ALWAYS_INLINE void avx_stats4(const float* x, const int kind, __m256* v, float* t, float* ss, float* mu) {
    avx_load4(v, x);
    if (kind == COLU_KIND_COLU) {
        _mm256_storeu_ps(ss, _mm256_fmadd_ps(v[3], v[3], _mm256_fmadd_ps(v[2], v[2], _mm256_mul_ps(v[1], v[1]))));
        _mm256_storeu_ps(t, v[0]);
        return;
    }
    /* RCoLU as cone_fwd: t = 2 mu (sqrt(4) = 2) */
    const __m256 m = _mm256_mul_ps(avx_sum4(v), _mm256_set1_ps(0.25f));
    __m256 acc = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
        v[k] = _mm256_sub_ps(v[k], m);
        acc = _mm256_fmadd_ps(v[k], v[k], acc);
    }
    _mm256_storeu_ps(ss, acc);
    _mm256_storeu_ps(t, _mm256_add_ps(m, m));
    _mm256_storeu_ps(mu, m);
}

/* base as avx_fwd_scalars; for RCoLU, v holds the centred channels */
ALWAYS_INLINE void avx_apply4(float* y, const int kind, const int act, __m256* v, const float* w, const float* base) {
    const __m256 bw = _mm256_loadu_ps(w);
    if (kind == COLU_KIND_COLU) {
        if (act != COLU_ACT_IDENTITY) v[0] = _mm256_loadu_ps(base);
        for (int k = 1; k < 4; ++k) v[k] = _mm256_mul_ps(v[k], bw);
    } else {
        const __m256 m = _mm256_loadu_ps(base);
        for (int k = 0; k < 4; ++k) v[k] = _mm256_fmadd_ps(bw, v[k], m);
    }
    avx_store4(y, v);
}

/* nb <= AVX_CHUNK blocks of 8 cones of 4 floats */
ALWAYS_INLINE void avx_fwd4_chunk(const float* x, float* y, const int nb, const i64 S, const int kind, const int sc,
                                  const int act, const float eps) {
    enum { N = 8 * AVX_CHUNK };
    float t[N], ss[N], mu[N], w[N], base[N];
    __m256 keep[AVX_CHUNK][4];
    (void)S;
    for (int j = 0; j < nb; ++j) {
        blk_prefetch(x + j * 32, 32);
        blk_prefetch_out(y + j * 32, 32);
        avx_stats4(x + j * 32, kind, keep[j], t + 8 * j, ss + 8 * j, mu + 8 * j);
    }
    avx_fwd_scalars(8 * nb, t, ss, mu, w, base, 4, kind, sc, act, eps);
    for (int j = 0; j < nb; ++j)
        avx_apply4(y + j * 32, kind, act, keep[j], w + 8 * j, base + 8 * j);
}

/* The backward in the same three phases: per-cone sums (ss, q = <g, section>, t, and for RCoLU the means
 * of x and g), the per-cone scalars, then the outputs, which read x and g again (from L1) */
ALWAYS_INLINE void avx_bstats4(const float* x, const float* gr, const int kind, float* t, float* ss, float* q,
                               float* mu, float* gm) {
    __m256 v[4], g[4];
    avx_load4(v, x);
    avx_load4(g, gr);
    if (kind == COLU_KIND_COLU) {
        __m256 as = _mm256_mul_ps(v[1], v[1]), aq = _mm256_mul_ps(g[1], v[1]);
        for (int k = 2; k < 4; ++k) {
            as = _mm256_fmadd_ps(v[k], v[k], as);
            aq = _mm256_fmadd_ps(g[k], v[k], aq);
        }
        _mm256_storeu_ps(ss, as);
        _mm256_storeu_ps(q, aq);
        _mm256_storeu_ps(t, v[0]);
        return;
    }
    const __m256 quarter = _mm256_set1_ps(0.25f);
    const __m256 m = _mm256_mul_ps(avx_sum4(v), quarter);
    __m256 as = _mm256_setzero_ps(), aq = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
        const __m256 p = _mm256_sub_ps(v[k], m);
        as = _mm256_fmadd_ps(p, p, as);
        aq = _mm256_fmadd_ps(g[k], p, aq);
    }
    _mm256_storeu_ps(ss, as);
    _mm256_storeu_ps(q, aq);
    _mm256_storeu_ps(t, _mm256_add_ps(m, m));
    _mm256_storeu_ps(mu, m);
    _mm256_storeu_ps(gm, _mm256_mul_ps(avx_sum4(g), quarter));
}

/* b: the axis' added term kk for CoLU, the per-cone constant add for RCoLU (as cone_bwd) */
ALWAYS_INLINE void avx_bapply4(const float* x, const float* gr, float* gi, const int kind, const int act,
                               const float* w, const float* b, const float* coef, const float* d) {
    __m256 v[4], g[4];
    avx_load4(v, x);
    avx_load4(g, gr);
    const __m256 bw = _mm256_loadu_ps(w), bc = _mm256_loadu_ps(coef), bb = _mm256_loadu_ps(b);
    if (kind == COLU_KIND_COLU) {
        g[0] = _mm256_add_ps(g[0], bb);
        if (act != COLU_ACT_IDENTITY) g[0] = _mm256_mul_ps(g[0], _mm256_loadu_ps(d));
        for (int k = 1; k < 4; ++k) g[k] = _mm256_fnmadd_ps(bc, v[k], _mm256_mul_ps(bw, g[k]));
    } else {
        for (int k = 0; k < 4; ++k) g[k] = _mm256_fnmadd_ps(bc, v[k], _mm256_fmadd_ps(bw, g[k], bb));
    }
    avx_store4(gi, g);
}

ALWAYS_INLINE void avx_bwd4_chunk(const float* x, const float* gr, float* gi, const int nb, const i64 S,
                                  const int kind, const int sc, const int act, const float eps) {
    enum { N = 8 * AVX_CHUNK };
    float t[N], ss[N], q[N], mu[N], gm[N], w[N], b[N], coef[N], d[N];
    (void)S;
    for (int j = 0; j < nb; ++j) {
        blk_prefetch(x + j * 32, 32);
        blk_prefetch(gr + j * 32, 32);
        avx_bstats4(x + j * 32, gr + j * 32, kind, t + 8 * j, ss + 8 * j, q + 8 * j, mu + 8 * j, gm + 8 * j);
    }
    avx_bwd_scalars(8 * nb, t, ss, q, mu, gm, w, b, coef, d, 4, kind, sc, act, eps);
    for (int j = 0; j < nb; ++j)
        avx_bapply4(x + j * 32, gr + j * 32, gi + j * 32, kind, act, w + 8 * j, b + 8 * j, coef + 8 * j, d + 8 * j);
}
