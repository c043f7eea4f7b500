/* The planes path (part of kernel_body.h, once per dtype): every call with inner > 1, that is
 * NCHW activations with dim=1 or any dim with a large inner size. Channel ch
 * of pixel i is at [ch * inner + i]. A tile of PT neighbouring pixels is
 * processed one cone at a time, and each of the cone's S channels is a
 * unit-stride run of PT values. With S, the kind, the scaling and the axis
 * activation known at compile time the loop over the tile's pixels
 * vectorises with one pixel per lane: the section norm is S-1 multiply-adds
 * in registers and every value is read once and written once, as ReLU does.
 *
 * float32 gets one loop per S in {4, 8}, kind and scaling (COLU_PLANE_INSTANCES); other S and float64 run the
 * same loops with them read at run time (correct for every configuration, not vectorised). No include
 * guard: it is included twice. */
#define PT 64

/* The per-pixel loops below with the identity axis (the paper's, and what conv nets use) a compile-time
 * constant ACTC: read at run time, the axis activation is a branch in the loop body that GCC does not take
 * out of the loop ("control flow in loop"), and the loop that holds the square root and the division then
 * runs one pixel at a time (about half the planes path's speed). relu/silu axes keep the run-time value:
 * a constant for each as well would add about 10 s to the first-use build. */
#ifndef PLANE_WITH_ACT
#define PLANE_WITH_ACT(act, ...)                       \
    do {                                               \
        if ((act) == COLU_ACT_IDENTITY) {              \
            enum { ACTC = COLU_ACT_IDENTITY };         \
            __VA_ARGS__                                \
        } else {                                       \
            const int ACTC = (act);                    \
            __VA_ARGS__                                \
        }                                              \
    } while (0)
#endif

#if SPECIALISE_S && defined(COLU_AVX2)
/* The identity-axis CoLU tile in AVX2 registers, a chunk of PV_CH(m) vectors of 8 pixels at a time (fewer
 * for larger cones: every row of a chunk stays in L1 until its writes, and at inner sizes of 1024 the rows
 * are 4 KB apart, in one L1 set; two vectors for S = 8 measured faster than four): a cone's S channels
 * are S unit-stride loads, the squared section norm (and in the backward q = <grad section, section>)
 * accumulates in a register, the per-pixel scalars go through the shared helpers in one fixed-length loop
 * the compiler makes a vector pass of, and the writes re-read the inputs from L1. Against the loops below,
 * no per-pixel sums go through memory between rows. Returns how many of the nb pixels it did (a multiple
 * of 8 * PV_CH(m)); the loops below do the rest. */
#define PV_MAX 4
#define PV_CH(m) ((m) <= 3 ? PV_MAX : 2)
ALWAYS_INLINE i64 plane_fwd_avx(const float* restrict xa, const float* restrict s, float* restrict ya,
                                float* restrict ys, const i64 cs, const i64 nb, const i64 m, const int sc,
                                const float eps) {
    const int nv = PV_CH(m), n = 8 * nv;
    i64 i = 0;
    for (; i + n <= nb; i += n) {
        float nn[8 * PV_MAX], w[8 * PV_MAX];
        for (int j = 0; j < nv; ++j) {
            __m256 acc = _mm256_setzero_ps();
            for (i64 k = 0; k < m; ++k) {
                const __m256 v = _mm256_loadu_ps(s + k * cs + i + 8 * j);
                acc = _mm256_fmadd_ps(v, v, acc);
            }
            _mm256_storeu_ps(nn + 8 * j, acc);
        }
        int over = 0;
        _Pragma("omp simd reduction(|:over)") for (int j = 0; j < n; ++j) {
            w[j] = weight_f32(xa[i + j] / (sqrtf(nn[j]) + eps), sc);
            over |= too_big_f32(nn[j]);
        }
        if (over) note_overflow();
        for (int j = 0; j < nv; ++j) {
            const __m256 bw = _mm256_loadu_ps(w + 8 * j);
            for (i64 k = 0; k < m; ++k)
                _mm256_storeu_ps(ys + k * cs + i + 8 * j, _mm256_mul_ps(_mm256_loadu_ps(s + k * cs + i + 8 * j), bw));
            _mm256_storeu_ps(ya + i + 8 * j, _mm256_loadu_ps(xa + i + 8 * j));
        }
    }
    return i;
}

/* the backward's tile as plane_fwd_avx; a shared axis adds each pixel's k into ksum instead of writing */
ALWAYS_INLINE i64 plane_bwd_avx(const float* restrict xa, const float* restrict s, const float* restrict ga,
                                const float* restrict gs, float* restrict oa, float* restrict os, const i64 cs,
                                const i64 nb, const i64 m, const int sc, const float eps, const int shared,
                                float* restrict ksum) {
    const int nv = PV_CH(m), n = 8 * nv;
    i64 i = 0;
    for (; i + n <= nb; i += n) {
        float nn[8 * PV_MAX], q[8 * PV_MAX], w[8 * PV_MAX], kk[8 * PV_MAX], cf[8 * PV_MAX];
        for (int j = 0; j < nv; ++j) {
            __m256 an = _mm256_setzero_ps(), aq = _mm256_setzero_ps();
            for (i64 k = 0; k < m; ++k) {
                const __m256 v = _mm256_loadu_ps(s + k * cs + i + 8 * j);
                an = _mm256_fmadd_ps(v, v, an);
                aq = _mm256_fmadd_ps(_mm256_loadu_ps(gs + k * cs + i + 8 * j), v, aq);
            }
            _mm256_storeu_ps(nn + 8 * j, an);
            _mm256_storeu_ps(q + 8 * j, aq);
        }
        int over = 0;
        _Pragma("omp simd reduction(|:over)") for (int j = 0; j < n; ++j)
            over |= bwd_scalars_f32(nn[j], q[j], xa[i + j], eps, sc, w + j, kk + j, cf + j);
        if (over) note_overflow();
        for (int j = 0; j < nv; ++j) {
            const __m256 bw = _mm256_loadu_ps(w + 8 * j), bc = _mm256_loadu_ps(cf + 8 * j);
            for (i64 k = 0; k < m; ++k) {
                const i64 o = k * cs + i + 8 * j;
                _mm256_storeu_ps(os + o, _mm256_fnmadd_ps(bc, _mm256_loadu_ps(s + o),
                                                          _mm256_mul_ps(bw, _mm256_loadu_ps(gs + o))));
            }
            const __m256 bk = _mm256_loadu_ps(kk + 8 * j);
            if (shared)
                _mm256_storeu_ps(ksum + i + 8 * j, _mm256_add_ps(_mm256_loadu_ps(ksum + i + 8 * j), bk));
            else
                _mm256_storeu_ps(oa + i + 8 * j, _mm256_add_ps(_mm256_loadu_ps(ga + i + 8 * j), bk));
        }
    }
    return i;
}
#define PLANE_AVX(call) ((act) == COLU_ACT_IDENTITY ? (call) : 0)
#else
#define PLANE_AVX(call) 0
#endif

/* cones g0 <= g < g1 of a tile of nb pixels */
ALWAYS_INLINE void SFX(plane_fwd)(const T* restrict x, T* restrict y, const i64 cs, const i64 nb,
                                  const colu_cfg* c, const i64 g0, const i64 g1, const i64 S, const int kind,
                                  const int sc, const int act) {
    const T eps = (T)c->eps;
    int over = 0;
    if (kind == COLU_KIND_RCOLU) {
        const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
        T wv[PT], mv[PT], bv[PT], nv[PT];
        for (i64 g = g0; g < g1; ++g) {
            const T* xg = x + g * S * cs;
            T* yg = y + g * S * cs;
            /* sums, then the per-pixel scalars, then the writes, each a loop of its own over the tile (see
             * below) */
            for (i64 i = 0; i < nb; ++i) { mv[i] = 0; nv[i] = 0; }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) mv[i] += xg[k * cs + i];
            for (i64 i = 0; i < nb; ++i) mv[i] *= inv_s;
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) { const T p = xg[k * cs + i] - mv[i]; nv[i] += p * p; }
            PLANE_WITH_ACT(act, for (i64 i = 0; i < nb; ++i) {
                const T tp = SFX(act)(mv[i] * rs, ACTC);
                wv[i] = SFX(weight)(tp / (SQRT(nv[i]) + eps), sc);
                /* tp e in each channel; mu itself for the identity axis (as cone_fwd) */
                bv[i] = ACTC != COLU_ACT_IDENTITY ? tp * inv_rs : mv[i];
                over |= SFX(too_big)(nv[i]);
            });
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) yg[k * cs + i] = bv[i] + wv[i] * (xg[k * cs + i] - mv[i]);
        }
        if (over) note_overflow();
        return;
    }
    const i64 m = S - 1, ab = c->axis_base, as = c->axis_step, sb = c->sec_base, sst = c->sec_step;
    T wv[PT], av[PT], nv[PT];
    for (i64 g = g0; g < g1; ++g) {
        const T* xa = x + (ab + g * as) * cs;
        const T* s = x + (sb + g * sst) * cs;
        T* ya = y + (ab + g * as) * cs;
        T* ys = y + (sb + g * sst) * cs;
        /* the section's squared norms, the per-pixel scalars, then the writes, each a loop of its own over
         * the tile: fused into one loop, the compiler specialises the writes for the clamp's branches and
         * nothing vectorises; split, every loop runs one pixel per lane */
        const i64 i0 = PLANE_AVX(plane_fwd_avx(xa, s, ya, ys, cs, nb, m, sc, eps));
        for (i64 i = i0; i < nb; ++i) nv[i] = 0;
        for (i64 k = 0; k < m; ++k)
            for (i64 i = i0; i < nb; ++i) nv[i] += s[k * cs + i] * s[k * cs + i];
        PLANE_WITH_ACT(act, for (i64 i = i0; i < nb; ++i) {
            const T a = SFX(act)(xa[i], ACTC);
            av[i] = a;
            wv[i] = SFX(weight)(a / (SQRT(nv[i]) + eps), sc);
            over |= SFX(too_big)(nv[i]);
        });
        for (i64 k = 0; k < m; ++k)
            for (i64 i = i0; i < nb; ++i) ys[k * cs + i] = wv[i] * s[k * cs + i];
        /* a shared axis is the same channel for every cone and gets the same value each time */
        for (i64 i = i0; i < nb; ++i) ya[i] = av[i];
    }
    if (over) note_overflow();
}

ALWAYS_INLINE void SFX(plane_bwd)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 cs,
                                  const i64 nb, const colu_cfg* c, const i64 g0, const i64 g1, const i64 S,
                                  const int kind, const int sc,
                                  const int act) {
    const T eps = (T)c->eps;
    int over = 0;
    if (kind == COLU_KIND_RCOLU) {
        const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
        T wv[PT], cv[PT], dv[PT], mv[PT], gv[PT], nv[PT], qv[PT];
        for (i64 g = g0; g < g1; ++g) {
            const i64 off = g * S * cs;
            const T *xg = x + off, *gg = gr + off;
            T* og = gi + off;
            /* sums, scalars, writes: one loop each (see plane_fwd) */
            for (i64 i = 0; i < nb; ++i) { mv[i] = 0; gv[i] = 0; nv[i] = 0; qv[i] = 0; }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) { mv[i] += xg[k * cs + i]; gv[i] += gg[k * cs + i]; }
            for (i64 i = 0; i < nb; ++i) { mv[i] *= inv_s; gv[i] *= inv_s; }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) {
                    const T p = xg[k * cs + i] - mv[i];
                    nv[i] += p * p;
                    qv[i] += gg[k * cs + i] * p;
                }
            PLANE_WITH_ACT(act, for (i64 i = 0; i < nb; ++i) {
                const T mu = mv[i], gm = gv[i], t = mu * rs;
                T w, kk, coef;
                over |= SFX(bwd_scalars)(nv[i], qv[i], SFX(act)(t, ACTC), eps, sc, &w, &kk, &coef);
                T gt = gm + kk * inv_rs;
                if (ACTC != COLU_ACT_IDENTITY) gt *= SFX(act_grad)(t, ACTC);
                /* w (g - gm) - coef (x - mu) + gt, with the per-cone terms folded (as cone_bwd) */
                wv[i] = w;
                cv[i] = coef;
                dv[i] = gt - w * gm + coef * mu;
            });
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) og[k * cs + i] = wv[i] * gg[k * cs + i] - cv[i] * xg[k * cs + i] + dv[i];
        }
        if (over) note_overflow();
        return;
    }
    const i64 m = S - 1, ab = c->axis_base, as = c->axis_step, sb = c->sec_base, sst = c->sec_step;
    T wv[PT], cv[PT], kv[PT], nv[PT], qv[PT], ksum[PT]; /* ksum: a shared axis gathers every cone's k */
    for (i64 i = 0; i < nb; ++i) ksum[i] = 0;
    for (i64 g = g0; g < g1; ++g) {
        const i64 ao = (ab + g * as) * cs, so = (sb + g * sst) * cs;
        const T *s = x + so, *gs = gr + so;
        T* os = gi + so;
        /* sums, scalars, writes: one loop each (see plane_fwd) */
        const i64 i0 = PLANE_AVX(plane_bwd_avx(x + ao, s, gr + ao, gs, gi + ao, os, cs, nb, m, sc, eps, (int)c->shared,
                                               ksum));
        for (i64 i = i0; i < nb; ++i) { nv[i] = 0; qv[i] = 0; }
        for (i64 k = 0; k < m; ++k)
            for (i64 i = i0; i < nb; ++i) {
                nv[i] += s[k * cs + i] * s[k * cs + i];
                qv[i] += gs[k * cs + i] * s[k * cs + i];
            }
        PLANE_WITH_ACT(act, for (i64 i = i0; i < nb; ++i)
            over |= SFX(bwd_scalars)(nv[i], qv[i], SFX(act)(x[ao + i], ACTC), eps, sc, wv + i, kv + i, cv + i););
        for (i64 k = 0; k < m; ++k)
            for (i64 i = i0; i < nb; ++i) os[k * cs + i] = wv[i] * gs[k * cs + i] - cv[i] * s[k * cs + i];
        if (c->shared) {
            for (i64 i = i0; i < nb; ++i) ksum[i] += kv[i];
        } else {
            PLANE_WITH_ACT(act, for (i64 i = i0; i < nb; ++i) {
                const T v = gr[ao + i] + kv[i];
                gi[ao + i] = ACTC != COLU_ACT_IDENTITY ? v * SFX(act_grad)(x[ao + i], ACTC) : v;
            });
        }
    }
    if (c->shared) {
        const i64 ao = ab * cs;
        for (i64 i = 0; i < nb; ++i) {
            const T v = gr[ao + i] + ksum[i];
            gi[ao + i] = act != COLU_ACT_IDENTITY ? v * SFX(act_grad)(x[ao + i], act) : v;
        }
    }
    if (over) note_overflow();
}

/* Work items are (outer index, cone) pairs, each running through its plane a tile at a time: S streams per
 * item, read front to back, which the hardware prefetcher follows; tiles over all C channels at once were
 * C concurrent streams at stride inner and ran at a third of the speed on large planes. A shared axis needs
 * every cone of a tile together (the backward's axis gathers their k; in the forward no two threads then
 * write it) and keeps that order. CALL(off, nb, g0, g1, ...) runs cones g0..g1-1 of the nb pixels at off. */
#define PLANE_SPANS(CALL, ...)                                                                                    \
    do {                                                                                                          \
        const i64 G = c->G;                                                                                       \
        if (c->shared) {                                                                                          \
            const i64 ntile = (inner + PT - 1) / PT;                                                              \
            PAR_SPANS(outer * ntile, for (i64 b = lo; b < hi; ++b) {                                              \
                const i64 o = b / ntile, i0 = (b % ntile) * PT, nb = inner - i0 < PT ? inner - i0 : PT;           \
                CALL(o * C * inner + i0, nb, 0, G, __VA_ARGS__);                                                  \
            });                                                                                                   \
        } else {                                                                                                  \
            PAR_SPANS(outer * G, for (i64 b = lo; b < hi; ++b) {                                                  \
                const i64 o = b / G, g = b % G;                                                                   \
                for (i64 i0 = 0; i0 < inner; i0 += PT)                                                            \
                    CALL(o * C * inner + i0, inner - i0 < PT ? inner - i0 : PT, g, g + 1, __VA_ARGS__);           \
            });                                                                                                   \
        }                                                                                                         \
    } while (0)

#define PLANE_FWD_CALL(off, nb, g0, g1, ...) SFX(plane_fwd)(x + (off), y + (off), inner, nb, c, g0, g1, __VA_ARGS__)
#define PLANE_BWD_CALL(off, nb, g0, g1, ...) \
    SFX(plane_bwd)(x + (off), gr + (off), gi + (off), inner, nb, c, g0, g1, __VA_ARGS__)

/* one pair of functions per (S, kind, scaling, axis activation), so that OpenMP's outlined body sees them as
 * constants (as FLAT_LOOPS does) */
#define PLANE_LOOPS(FWD, BWD, SS, KIND, SC, ACT)                                                                  \
    static __attribute__((noinline)) void FWD(const T* restrict x, T* restrict y, const i64 outer, const i64 C,    \
                                              const i64 inner, const colu_cfg* c, const int nt) {                \
        PLANE_SPANS(PLANE_FWD_CALL, SS, KIND, SC, ACT);                                                           \
    }                                                                                                             \
    static __attribute__((noinline)) void BWD(const T* restrict x, const T* restrict gr, T* restrict gi,          \
                                              const i64 outer, const i64 C, const i64 inner, const colu_cfg* c,  \
                                              const int nt) {                                                    \
        PLANE_SPANS(PLANE_BWD_CALL, SS, KIND, SC, ACT);                                                           \
    }

/* run-time configuration: any S, kind, scaling, axis activation and dtype; for float32, sqrt and log in
 * loops of their own (SC_OWN in cpu_kernel.c; float64's exp is a call, which its loops carry already) */
#if SPECIALISE_S
PLANE_LOOPS(SFX(plane_any_fwd), SFX(plane_any_bwd), c->S, (int)c->kind, SC_OWN(c), (int)c->act)
PLANE_LOOPS(SFX(plane_sqrt_log_fwd), SFX(plane_sqrt_log_bwd), c->S, (int)c->kind, SC_SQRT_LOG(c), (int)c->act)
#else
PLANE_LOOPS(SFX(plane_any_fwd), SFX(plane_any_bwd), c->S, (int)c->kind, (int)c->scaling, (int)c->act)
#endif

#if SPECIALISE_S
/* S, kind and scaling are constants; the axis activation is read at run time (a branch outside the
 * arithmetic, which the compiler takes out of the loops). Each pair of loops adds about a second to the
 * first-use build, so only the cone sizes conv nets use most (S = 4, 8) get their own (COLU_PLANE_INSTANCES in
 * kernel_instances.h); other S run the run-time loops (correct, not vectorised). */
#define DEF_PLANE(FWD, BWD, SS, KIND, SC) \
    PLANE_LOOPS(FWD, BWD, SS, COLU_KIND_##KIND, COLU_SCALING_##SC, (int)c->act)
COLU_PLANE_INSTANCES(DEF_PLANE)
#undef DEF_PLANE

#define PLANE_HIT(SS, KIND, SC) (c->S == SS && c->kind == COLU_KIND_##KIND && c->scaling == COLU_SCALING_##SC)
#endif

static void SFX(plane_fwd_range)(const T* x, T* y, const i64 outer, const i64 C, const i64 inner, const colu_cfg* c,
                                 const int nt) {
#if SPECIALISE_S
    if (!OWN_LOOPS(c->scaling)) { /* the loops below are for the other three */
        SFX(plane_sqrt_log_fwd)(x, y, outer, C, inner, c, nt);
        return;
    }
#define CASE(FWD, BWD, SS, KIND, SC)                                                     \
    if (PLANE_HIT(SS, KIND, SC)) {                                                       \
        FWD(x, y, outer, C, inner, c, nt);                                               \
        return;                                                                          \
    }
    COLU_PLANE_INSTANCES(CASE)
#undef CASE
#endif
    SFX(plane_any_fwd)(x, y, outer, C, inner, c, nt);
}

static void SFX(plane_bwd_range)(const T* x, const T* gr, T* gi, const i64 outer, const i64 C, const i64 inner,
                                 const colu_cfg* c, const int nt) {
#if SPECIALISE_S
    if (!OWN_LOOPS(c->scaling)) { /* as in plane_fwd_range */
        SFX(plane_sqrt_log_bwd)(x, gr, gi, outer, C, inner, c, nt);
        return;
    }
#define CASE(FWD, BWD, SS, KIND, SC)                                                     \
    if (PLANE_HIT(SS, KIND, SC)) {                                                       \
        BWD(x, gr, gi, outer, C, inner, c, nt);                                          \
        return;                                                                          \
    }
    COLU_PLANE_INSTANCES(CASE)
#undef CASE
#undef PLANE_HIT
#endif
    SFX(plane_any_bwd)(x, gr, gi, outer, C, inner, c, nt);
}

#undef PLANE_LOOPS
#undef PLANE_FWD_CALL
#undef PLANE_BWD_CALL
#undef PLANE_SPANS
#undef PT
#undef PLANE_AVX
#undef PV_CH
#undef PV_MAX
