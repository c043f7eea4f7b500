/* AVX2 rows for the axes_first layout (the JAX package's convention: CoLU, no shared axis), float32,
 * included by kernel_vector.h. A row is the G cones' axes, then their G sections of m = S - 1 channels,
 * one after the other. The rows loops of kernel_body.h read such sections at the odd stride m, which the
 * compiler vectorises through permutes (1.5-1.9x ReLU forward+backward); here a block of 8 cones at a time:
 *  - S = 4 (m = 3): the 8 sections are 3 whole vectors, for the sums (axf3_sum) and the writes
 *    (axf_spread);
 *  - S = 8k (m = 8k - 1): for the sums each section is read with the k vectors at sec + m i, the last
 *    one's lane 7 being the next cone's first channel (zeroed); each cone's sums stay in one vector and
 *    avx_hsum8 adds them up, as avx_stats8 does. S = 8 writes its 7 whole vectors (axf_spread); S >= 16
 *    writes each cone's vectors in increasing cone order, so that a spare lane's value lands on the next
 *    cone's first channel before that cone's own write replaces it.
 * The row's last cone has no next cone in the row: its last vector is read and written with a mask (the
 * next row may be another thread's).
 * Cones after the last whole block go through the rows path (axf_tail).
 * The per-cone scalars run in the rows path's small loops (pick_mids: one per scaling and axis
 * activation), over a chunk of up to AVX_CHUNK blocks at a time, so that the chains of neighbouring
 * blocks overlap. Every value is read once from memory and written once (the backward's second read of
 * a block hits L1). */

/* S = 4: the sections of 8 cones are 24 floats, 3 whole vectors; lane l of vector v is channel (8v + l) % 3
 * of cone (8v + l) / 3. Two blends per channel gather that channel of all 8 cones into one vector, in an
 * order of the cones that one permute makes natural; the writes spread each cone's scalar over its lanes
 * with one permute per vector. */
ALWAYS_INLINE __m256 axf3_sum(const __m256* p) {
    /* channel 0 of cones (0, 3, 6, 1, 4, 7, 2, 5); channel 1 of (5, 0, 3, 6, 1, 4, 7, 2); channel 2 of
     * (2, 5, 0, 3, 6, 1, 4, 7) */
    const __m256 c0 = _mm256_blend_ps(_mm256_blend_ps(p[0], p[1], 0x92), p[2], 0x24);
    const __m256 c1 = _mm256_blend_ps(_mm256_blend_ps(p[0], p[1], 0x24), p[2], 0x49);
    const __m256 c2 = _mm256_blend_ps(_mm256_blend_ps(p[0], p[1], 0x49), p[2], 0x92);
    return _mm256_add_ps(_mm256_add_ps(_mm256_permutevar8x32_ps(c0, _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5)),
                                       _mm256_permutevar8x32_ps(c1, _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6))),
                         _mm256_permutevar8x32_ps(c2, _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7)));
}

/* each cone's value of r (8 cones, natural order) over its m lanes of the 8 sections' m vectors (m = 3, 7: a
 * constant, so that the indices are) */
ALWAYS_INLINE void axf_spread(const __m256 r, __m256* out, const int m) {
    for (int v = 0; v < m; ++v)
        out[v] = _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(8 * v / m, (8 * v + 1) / m, (8 * v + 2) / m,
                                                                (8 * v + 3) / m, (8 * v + 4) / m, (8 * v + 5) / m,
                                                                (8 * v + 6) / m, (8 * v + 7) / m));
}

/* vector j of the m = 8k - 1 channels at xc; the last one's lane 7 is zeroed (safe: read through a mask for
 * the row's last cone) */
ALWAYS_INLINE __m256 axf_load_wide(const float* xc, const i64 j, const i64 m, const int safe) {
    if (8 * j + 8 <= m) return _mm256_loadu_ps(xc + 8 * j);
    const __m256i m7 = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, -1, 0);
    const __m256 v = safe ? _mm256_maskload_ps(xc + 8 * j, m7) : _mm256_loadu_ps(xc + 8 * j);
    return _mm256_blend_ps(v, _mm256_setzero_ps(), 0x80);
}

ALWAYS_INLINE void axf_store_wide(float* yc, const i64 j, const i64 m, const int safe, const __m256 v) {
    if (safe && 8 * j + 8 > m) _mm256_maskstore_ps(yc + 8 * j, _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, -1, 0), v);
    else _mm256_storeu_ps(yc + 8 * j, v);
}

/* the cones after the row's last whole block, through the rows path */
static __attribute__((noinline)) void axf_tail(const float* x, const float* gr, float* out, const i64 G,
                                                const i64 m, const i64 nblk, const colu_cfg* c, const int backward) {
    colu_cfg rest = *c;
    rest.G = G - 8 * nblk;
    rest.axis_base = 8 * nblk;
    rest.sec_base = G + 8 * nblk * m;
    if (backward) bwd_row_f32(x, gr, out, &rest);
    else fwd_row_f32(x, out, &rest);
}

/* One row: G axes at x, the sections at x + G. SS is S (4, 8) or 0, for S = 16, 24, ... read at run time. */
ALWAYS_INLINE void axf_fwd_row(const float* x, float* y, const i64 G, const i64 S, const int SS,
                               const fwd_mid_fn_f32 mid, const colu_cfg* c) {
    const i64 m = S - 1, nblk = G / 8, step = 8 * m;
    const float eps = (float)c->eps;
    const float* xs = x + G;
    float* ys = y + G;
    for (i64 b0 = 0; b0 < nblk; b0 += AVX_CHUNK) {
        enum { N = 8 * AVX_CHUNK };
        float t[N], ss[N], w[N];
        const int nb = nblk - b0 < AVX_CHUNK ? (int)(nblk - b0) : AVX_CHUNK;
        for (int j = 0; j < nb; ++j) {
            const i64 b = b0 + j;
            const int last = b == nblk - 1 && G % 8 == 0;
            /* the row's memory 8 KB ahead, axes included, in equal parts per block; the output too for S <= 8,
             * as the grouped blocks (kernel_avx2.h) */
            blk_prefetch(x + b * 8 * S, 8 * S);
            if (S <= 8) blk_prefetch_out(y + b * 8 * S, 8 * S);
            _mm256_storeu_ps(t + 8 * j, _mm256_loadu_ps(x + 8 * b));
            if (SS == 4) {
                __m256 sq[3];
                for (int k = 0; k < 3; ++k) {
                    const __m256 v = _mm256_loadu_ps(xs + b * step + 8 * k);
                    sq[k] = _mm256_mul_ps(v, v);
                }
                _mm256_storeu_ps(ss + 8 * j, axf3_sum(sq));
            } else {
                __m256 acc[8];
                for (int i = 0; i < 8; ++i) {
                    const float* xc = xs + b * step + i * m;
                    __m256 s = _mm256_setzero_ps();
                    for (i64 k = 0; 8 * k < m; ++k) {
                        const __m256 u = axf_load_wide(xc, k, m, last && i == 7);
                        s = _mm256_fmadd_ps(u, u, s);
                    }
                    acc[i] = s;
                }
                _mm256_storeu_ps(ss + 8 * j, avx_hsum8(acc));
            }
        }
        mid(8 * nb, ss, t, w, eps); /* t becomes phi(a), the axes' outputs */
        for (int j = 0; j < nb; ++j) {
            const i64 b = b0 + j;
            const int last = b == nblk - 1 && G % 8 == 0;
            if (SS == 4 || SS == 8) { /* the m whole vectors of the 8 sections */
                __m256 sw[7];
                axf_spread(_mm256_loadu_ps(w + 8 * j), sw, (int)m);
                for (int k = 0; k < m; ++k)
                    _mm256_storeu_ps(ys + b * step + 8 * k, _mm256_mul_ps(_mm256_loadu_ps(xs + b * step + 8 * k), sw[k]));
            } else {
                for (int i = 0; i < 8; ++i) {
                    const float* xc = xs + b * step + i * m;
                    float* yc = ys + b * step + i * m;
                    const __m256 bw = _mm256_broadcast_ss(w + 8 * j + i);
                    for (i64 k = 0; 8 * k < m; ++k)
                        axf_store_wide(yc, k, m, last && i == 7, _mm256_mul_ps(axf_load_wide(xc, k, m, last && i == 7), bw));
                }
            }
            _mm256_storeu_ps(y + 8 * b, _mm256_loadu_ps(t + 8 * j));
        }
    }
    if (G % 8) axf_tail(x, 0, y, G, m, nblk, c, 0);
}

ALWAYS_INLINE void axf_bwd_row(const float* x, const float* gr, float* gi, const i64 G, const i64 S, const int SS,
                               const bwd_mid_fn_f32 mid, const colu_cfg* c) {
    const i64 m = S - 1, nblk = G / 8, step = 8 * m;
    const float eps = (float)c->eps;
    const int act = (int)c->act;
    const float *xs = x + G, *gs = gr + G;
    float* os = gi + G;
    for (i64 b0 = 0; b0 < nblk; b0 += AVX_CHUNK) {
        enum { N = 8 * AVX_CHUNK };
        float a[N], ss[N], q[N], w[N], coef[N], kk[N], d[N];
        const int nb = nblk - b0 < AVX_CHUNK ? (int)(nblk - b0) : AVX_CHUNK;
        for (int j = 0; j < nb; ++j) {
            const i64 b = b0 + j, o = b * step;
            const int last = b == nblk - 1 && G % 8 == 0;
            blk_prefetch(x + b * 8 * S, 8 * S);
            blk_prefetch(gr + b * 8 * S, 8 * S);
            if (S <= 8) blk_prefetch_out(gi + b * 8 * S, 8 * S); /* kernel_ab.py, S = 4: 14-18% off */
            _mm256_storeu_ps(a + 8 * j, _mm256_loadu_ps(x + 8 * b));
            if (SS == 4) {
                __m256 sq[3], gq[3];
                for (int k = 0; k < 3; ++k) {
                    const __m256 v = _mm256_loadu_ps(xs + o + 8 * k);
                    sq[k] = _mm256_mul_ps(v, v);
                    gq[k] = _mm256_mul_ps(_mm256_loadu_ps(gs + o + 8 * k), v);
                }
                _mm256_storeu_ps(ss + 8 * j, axf3_sum(sq));
                _mm256_storeu_ps(q + 8 * j, axf3_sum(gq));
            } else {
                __m256 acc_s[8], acc_q[8];
                for (int i = 0; i < 8; ++i) {
                    const float *xc = xs + o + i * m, *gc = gs + o + i * m;
                    __m256 s = _mm256_setzero_ps(), r = _mm256_setzero_ps();
                    for (i64 k = 0; 8 * k < m; ++k) {
                        const __m256 e = axf_load_wide(xc, k, m, last && i == 7);
                        s = _mm256_fmadd_ps(e, e, s);
                        r = _mm256_fmadd_ps(axf_load_wide(gc, k, m, last && i == 7), e, r);
                    }
                    acc_s[i] = s;
                    acc_q[i] = r;
                }
                _mm256_storeu_ps(ss + 8 * j, avx_hsum8(acc_s));
                _mm256_storeu_ps(q + 8 * j, avx_hsum8(acc_q));
            }
        }
        mid(8 * nb, ss, q, a, w, coef, kk, eps);
        if (act != COLU_ACT_IDENTITY) avx_act(8 * nb, a, 0, d, act); /* phi'(a), for the axes' gradients */
        for (int j = 0; j < nb; ++j) {
            const i64 b = b0 + j, o = b * step;
            const int last = b == nblk - 1 && G % 8 == 0;
            const __m256 bk = _mm256_loadu_ps(kk + 8 * j);
            /* each axis' gradient is (g_a + kk) phi'(a), with no x term */
            if (SS == 4 || SS == 8) {
                __m256 sw[7], sc[7];
                axf_spread(_mm256_loadu_ps(w + 8 * j), sw, (int)m);
                axf_spread(_mm256_loadu_ps(coef + 8 * j), sc, (int)m);
                for (int k = 0; k < m; ++k)
                    _mm256_storeu_ps(os + o + 8 * k, _mm256_fnmadd_ps(sc[k], _mm256_loadu_ps(xs + o + 8 * k),
                                                                      _mm256_mul_ps(sw[k], _mm256_loadu_ps(gs + o + 8 * k))));
            } else {
                for (int i = 0; i < 8; ++i) {
                    const float *xc = xs + o + i * m, *gc = gs + o + i * m;
                    float* oc = os + o + i * m;
                    const int safe = last && i == 7;
                    const __m256 bw = _mm256_broadcast_ss(w + 8 * j + i), bc = _mm256_broadcast_ss(coef + 8 * j + i);
                    for (i64 k = 0; 8 * k < m; ++k)
                        axf_store_wide(oc, k, m, safe,
                                       _mm256_fnmadd_ps(bc, axf_load_wide(xc, k, m, safe),
                                                        _mm256_mul_ps(bw, axf_load_wide(gc, k, m, safe))));
                }
            }
            __m256 ga = _mm256_add_ps(_mm256_loadu_ps(gr + 8 * b), bk);
            if (act != COLU_ACT_IDENTITY) ga = _mm256_mul_ps(ga, _mm256_loadu_ps(d + 8 * j));
            _mm256_storeu_ps(gi + 8 * b, ga);
        }
    }
    if (G % 8) axf_tail(x, gr, gi, G, m, nblk, c, 1);
}

#define AXF_LOOPS(FWD, BWD, SS, S_OF, HIT)                                                                      \
    static __attribute__((noinline)) void FWD(const float* restrict x, float* restrict y, const i64 outer,       \
                                              const i64 C, const colu_cfg* c, const int nt) {                    \
        fwd_mid_fn_f32 f;                                                                                        \
        bwd_mid_fn_f32 b;                                                                                        \
        pick_mids_f32(c, &f, &b);                                                                                \
        PAR_SPANS(outer, for (i64 o = lo; o < hi; ++o) axf_fwd_row(x + o * C, y + o * C, c->G, S_OF, SS, f, c)); \
    }                                                                                                            \
    static __attribute__((noinline)) void BWD(const float* restrict x, const float* restrict gr,                \
                                              float* restrict gi, const i64 outer, const i64 C, const colu_cfg* c, \
                                              const int nt) {                                                    \
        fwd_mid_fn_f32 f;                                                                                        \
        bwd_mid_fn_f32 b;                                                                                        \
        pick_mids_f32(c, &f, &b);                                                                                \
        PAR_SPANS(outer, for (i64 o = lo; o < hi; ++o)                                                           \
                             axf_bwd_row(x + o * C, gr + o * C, gi + o * C, c->G, S_OF, SS, b, c));              \
    }
COLU_AXF_INSTANCES(AXF_LOOPS)
#undef AXF_LOOPS

/* 1 where these rows took the call: CoLU in the axes_first layout, S = 4 or a multiple of 8, hard, soft or
 * firm, any axis activation */
static int axf_range(const float* x, const float* g, float* out, const i64 outer, const i64 C, const colu_cfg* c,
                     const int nt, const int backward) {
    const i64 S = c->S, G = c->G;
    if (c->kind != COLU_KIND_COLU || c->shared || !OWN_LOOPS(c->scaling) || C != G * S || c->axis_base != 0 ||
        c->axis_step != 1 || c->sec_base != G || c->sec_step != S - 1 || !(S == 4 || S % 8 == 0))
        return 0;
#define CASE(FWD, BWD, SS, S_OF, HIT)                      \
    if (HIT) {                                             \
        if (backward) BWD(x, g, out, outer, C, c, nt);     \
        else FWD(x, out, outer, C, c, nt);                 \
        return 1;                                          \
    }
    COLU_AXF_INSTANCES(CASE)
#undef CASE
    return 0; /* unreachable: the rows cover S = 4 and every multiple of 8 */
}
