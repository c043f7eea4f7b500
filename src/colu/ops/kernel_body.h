/* The kernels' paths, written once over a floating type: cpu_kernel.c
 * includes this file once per dtype, with T the type, SFX(name) the name
 * with the dtype's suffix (_f32, _f64), SQRT, EXP and LOG1P its square root,
 * exponential and log(1 + x), and SPECIALISE_S 1 for float32, whose instance
 * adds the loops specialised per S and, where the machine has them, the
 * vector blocks. The scalar helpers at the top are shared by every path, so
 * that all of them compute a cone alike. No include guard: it is included
 * twice. */

ALWAYS_INLINE T SFX(sigm)(T z) { return (T)1 / ((T)1 + EXP(-z)); }

/* phi(a); relu keeps NaN (a < 0 is false for NaN) */
ALWAYS_INLINE T SFX(act)(T a, int act) {
    if (act == COLU_ACT_IDENTITY) return a;
    if (act == COLU_ACT_RELU) return a < 0 ? (T)0 : a;
    return a * SFX(sigm)(a);
}

ALWAYS_INLINE T SFX(act_grad)(T a, int act) {
    if (act == COLU_ACT_RELU) return a > 0 ? (T)1 : (T)0;
    T sg = SFX(sigm)(a);
    return sg * ((T)1 + a * ((T)1 - sg));
}

/* w(r); for NaN r every comparison is false and r comes back (NaN from sqrt and log1p). The clamp is two
 * selects whose comparisons are both always made (see colu_expf), so that loops over it vectorise. sqrt
 * and log are 0 for r <= 0: a relu axis gives r = 0 for every negative axis value. */
ALWAYS_INLINE T SFX(weight)(T r, int scaling) {
    if (scaling == COLU_SCALING_HARD) {
        const T lo = r < 0 ? (T)0 : r;
        return lo > 1 ? (T)1 : lo;
    }
    if (scaling == COLU_SCALING_SOFT) return SFX(sigm)(r - (T)0.5);
    if (scaling == COLU_SCALING_FIRM) return SFX(sigm)((T)4 * r - (T)2);
    if (scaling == COLU_SCALING_SQRT) return r <= 0 ? (T)0 : SQRT(r);
    return r <= 0 ? (T)0 : LOG1P(r);
}

/* w'(r) given w; inclusive at 0 and 1 as torch.clamp's gradient. sqrt and log have slope 0 for r <= 0, as
 * the closed form: sqrt's slope at 0+ is infinite, and the r = 0 of a relu axis must give finite gradients. */
ALWAYS_INLINE T SFX(slope)(T r, T w, int scaling) {
    if (scaling == COLU_SCALING_HARD) return (T)((r >= 0) & (r <= 1)); /* &, not &&: both always compared */
    if (scaling == COLU_SCALING_SOFT) return w * ((T)1 - w);
    if (scaling == COLU_SCALING_FIRM) return (T)4 * w * ((T)1 - w);
    if (scaling == COLU_SCALING_SQRT) return r <= 0 ? (T)0 : (T)0.5 / w; /* w = sqrt(r) */
    return r <= 0 ? (T)0 : (T)1 / ((T)1 + r);
}

/* 1 where a squared section norm nn is infinite while the float32 instance computes it: a section value
 * above about 1.8e19 / sqrt(S - 1) squares past FLT_MAX although the value itself is finite, and the norm,
 * the weight and the output that follow are wrong (or the input holds an infinity). Every loop that
 * computes norms ORs this over its cones (an OR reduction, which vectorises with the loop) and calls
 * note_overflow once at its end; colu_run then computes the call again in float64 (cpu_kernel.c). The
 * float64 instance has nothing to redo it in: its check is the constant 0 and compiles away. */
ALWAYS_INLINE int SFX(too_big)(const T nn) { return NORM_CHECKED && nn > NORM_MAX; }

/* The backward's per-cone scalars, shared by every loop below: from the
 * section's squared norm nn, q = <section of grad, section> and the activated
 * axis value ap (r = ap / den, den = |s| + eps): the weight w, the term
 * k = q w'(r) / den that the axis' gradient gains, and coef = k r / |s|, the
 * section's coefficient on x. Returns too_big(nn). */
ALWAYS_INLINE int SFX(bwd_scalars)(const T nn, const T q, const T ap, const T eps, const int sc, T* w, T* k,
                                   T* coef) {
    const T n = SQRT(nn), den = n + eps, r = ap / den;
    *w = SFX(weight)(r, sc);
    *k = q * SFX(slope)(r, *w, sc) / den;
    *coef = *k * r / (n > 0 ? n : (T)1);
    return SFX(too_big)(nn);
}

/* ------------------------------------------------------------ rows path */
/* A row is processed NB cones at a time in three loops: gather per-cone sums
 * into small arrays, compute the per-cone scalars (norm, weight, slope) over
 * those arrays with unit stride, then write. The middle loop, where the
 * square roots, divisions and exponentials are, vectorises across cones.
 * Only shared-axis and axes_first rows come here (see the flat path). */

/* the per-cone loop instantiated for each scaling with the identity axis
 * activation (the default), so that the clamp or the sigmoid is straight-line
 * code the vectoriser accepts (float32 only); relu/silu axes, sqrt and log
 * take the generic loop */
#define DISPATCH9(F, ...)                                                                     \
    if (!SPECIALISE_S || act != COLU_ACT_IDENTITY || !OWN_LOOPS(sc)) F(__VA_ARGS__, sc, act); \
    else if (sc == COLU_SCALING_HARD) F(__VA_ARGS__, COLU_SCALING_HARD, COLU_ACT_IDENTITY);   \
    else if (sc == COLU_SCALING_SOFT) F(__VA_ARGS__, COLU_SCALING_SOFT, COLU_ACT_IDENTITY);   \
    else F(__VA_ARGS__, COLU_SCALING_FIRM, COLU_ACT_IDENTITY);

ALWAYS_INLINE void SFX(fwd_mid)(const i64 nb, const T* restrict nn, T* restrict ap, T* restrict w, const T eps,
                                const int sc, const int act) {
    int over = 0;
    for (i64 j = 0; j < nb; ++j) {
        const T a = SFX(act)(ap[j], act);
        ap[j] = a;
        w[j] = SFX(weight)(a / (SQRT(nn[j]) + eps), sc);
        over |= SFX(too_big)(nn[j]);
    }
    if (over) note_overflow();
}

ALWAYS_INLINE void SFX(bwd_mid)(const i64 nb, const T* restrict nn, const T* restrict q, const T* restrict av,
                                T* restrict w, T* restrict coef, T* restrict kk, const T eps, const int sc, const int act) {
    int over = 0;
    for (i64 j = 0; j < nb; ++j)
        over |= SFX(bwd_scalars)(nn[j], q[j], SFX(act)(av[j], act), eps, sc, w + j, kk + j, coef + j);
    if (over) note_overflow();
}

/* The axis entries of a block's input gradient: each cone's own axis (g + k through phi'), or, for a shared
 * axis, the block's sum of k, returned for shared_axis_grad to add once all blocks are done */
ALWAYS_INLINE T SFX(axis_grads)(const T* restrict gr, T* restrict gi, const i64 ab, const i64 as, const i64 g0,
                                const i64 nb, const T* restrict kk, const T* restrict av, const int shared,
                                const int act) {
    T ksum = 0;
    if (shared) {
        for (i64 j = 0; j < nb; ++j) ksum += kk[j];
        return ksum;
    }
    for (i64 j = 0; j < nb; ++j) {
        const i64 ai = ab + (g0 + j) * as;
        const T v = gr[ai] + kk[j];
        gi[ai] = act != COLU_ACT_IDENTITY ? v * SFX(act_grad)(av[j], act) : v;
    }
    return ksum;
}

ALWAYS_INLINE void SFX(shared_axis_grad)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 ab,
                                         const T ksum, const int act) {
    const T v = gr[ab] + ksum;
    gi[ab] = act != COLU_ACT_IDENTITY ? v * SFX(act_grad)(x[ab], act) : v;
}

ALWAYS_INLINE void SFX(fwd_blk)(const T* restrict x, T* restrict y, const i64 G, const i64 S, const i64 ab, const i64 as,
                                const i64 sb, const i64 ss, const int shared, const int sc, const int act, const T eps) {
    const i64 m = S - 1;
    T nn[NB], ap[NB], w[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        for (i64 j = 0; j < nb; ++j) {
            const T* s = x + sb + (g0 + j) * ss;
            T acc = 0;
            for (i64 k = 0; k < m; ++k) acc += s[k] * s[k];
            nn[j] = acc;
            ap[j] = x[ab + (g0 + j) * as];
        }
        DISPATCH9(SFX(fwd_mid), nb, nn, ap, w, eps);
        for (i64 j = 0; j < nb; ++j) {
            const T* s = x + sb + (g0 + j) * ss;
            T* ys = y + sb + (g0 + j) * ss;
            for (i64 k = 0; k < m; ++k) ys[k] = w[j] * s[k];
            if (!shared) y[ab + (g0 + j) * as] = ap[j];
        }
    }
    if (shared) y[ab] = SFX(act)(x[ab], act);
}

ALWAYS_INLINE void SFX(bwd_blk)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 G, const i64 S,
                                const i64 ab, const i64 as, const i64 sb, const i64 ss, const int shared, const int sc,
                                const int act, const T eps) {
    const i64 m = S - 1;
    T nn[NB], q[NB], av[NB], w[NB], coef[NB], kk[NB];
    T ksum = 0;
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        for (i64 j = 0; j < nb; ++j) {
            const T* s = x + sb + (g0 + j) * ss;
            const T* gs = gr + sb + (g0 + j) * ss;
            T a2 = 0, aq = 0;
            for (i64 k = 0; k < m; ++k) { a2 += s[k] * s[k]; aq += gs[k] * s[k]; }
            nn[j] = a2;
            q[j] = aq;
            av[j] = x[ab + (g0 + j) * as];
        }
        DISPATCH9(SFX(bwd_mid), nb, nn, q, av, w, coef, kk, eps);
        for (i64 j = 0; j < nb; ++j) {
            const i64 so = sb + (g0 + j) * ss;
            for (i64 k = 0; k < m; ++k) gi[so + k] = w[j] * gr[so + k] - coef[j] * x[so + k];
        }
        ksum += SFX(axis_grads)(gr, gi, ab, as, g0, nb, kk, av, shared, act);
    }
    if (shared) SFX(shared_axis_grad)(x, gr, gi, ab, ksum, act);
}

/* Rows whose cones are not S contiguous values: a shared axis, or the
 * axes_first layout. (Grouped cones take the flat path below.) */
static void SFX(fwd_row)(const T* restrict x, T* restrict y, const colu_cfg* c) {
    SFX(fwd_blk)(x, y, c->G, c->S, c->axis_base, c->axis_step, c->sec_base, c->sec_step, (int)c->shared,
                 (int)c->scaling, (int)c->act, (T)c->eps);
}

static void SFX(bwd_row)(const T* restrict x, const T* restrict gr, T* restrict gi, const colu_cfg* c) {
    SFX(bwd_blk)(x, gr, gi, c->G, c->S, c->axis_base, c->axis_step, c->sec_base, c->sec_step, (int)c->shared,
                 (int)c->scaling, (int)c->act, (T)c->eps);
}

#if SPECIALISE_S
/* Rows specialised per S (float32): the section of every cone is S - 1 contiguous channels right after the
 * previous cone's (sec_step == S - 1: the axes_first layout and a shared axis), so with S a constant the
 * sums and writes loops over a block of cones have fixed trip counts, which the compiler vectorises (across
 * cones for S = 4, within a cone's section for S = 8, 16). The per-cone scalars run in one of nine small
 * functions, one per scaling and axis activation, each a straight-line loop over the block's arrays that
 * vectorises across cones; the rows loops take it as a pointer, so that the nine are not compiled again for
 * every S. */
typedef void (*SFX(fwd_mid_fn))(i64, const T* restrict, T* restrict, T* restrict, T);
typedef void (*SFX(bwd_mid_fn))(i64, const T* restrict, const T* restrict, const T* restrict, T* restrict,
                                T* restrict, T* restrict, T);
#define MID_DEF(FWD, BWD, SC, ACT)                                                                              \
    static __attribute__((noinline)) void FWD(const i64 nb, const T* restrict nn, T* restrict ap, T* restrict w, \
                                              const T eps) {                                                    \
        SFX(fwd_mid)(nb, nn, ap, w, eps, COLU_SCALING_##SC, COLU_ACT_##ACT);                                    \
    }                                                                                                           \
    static __attribute__((noinline)) void BWD(const i64 nb, const T* restrict nn, const T* restrict q,          \
                                              const T* restrict av, T* restrict w, T* restrict coef,             \
                                              T* restrict kk, const T eps) {                                    \
        SFX(bwd_mid)(nb, nn, q, av, w, coef, kk, eps, COLU_SCALING_##SC, COLU_ACT_##ACT);                       \
    }
COLU_MID_INSTANCES(MID_DEF)
#undef MID_DEF

static void SFX(pick_mids)(const colu_cfg* c, SFX(fwd_mid_fn) * f, SFX(bwd_mid_fn) * b) {
#define CASE(FWD, BWD, SC, ACT)                                                  \
    if (c->scaling == COLU_SCALING_##SC && c->act == COLU_ACT_##ACT) {           \
        *f = FWD;                                                                \
        *b = BWD;                                                                \
        return;                                                                  \
    }
    COLU_MID_INSTANCES(CASE)
#undef CASE
    *f = mid_hard_identity_fwd; /* unreachable: split_range passes on the other scalings */
    *b = mid_hard_identity_bwd;
}

/* one row of C channels: cones' sections are the m contiguous channels at sb + g * m */
ALWAYS_INLINE void SFX(split_fwd)(const T* restrict x, T* restrict y, const colu_cfg* c, const i64 m,
                                  const SFX(fwd_mid_fn) mid) {
    const i64 G = c->G, ab = c->axis_base, as = c->axis_step, sb = c->sec_base;
    const int shared = (int)c->shared;
    const T eps = (T)c->eps;
    T nn[NB], ap[NB], w[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        const T* s = x + sb + g0 * m;
        T* ys = y + sb + g0 * m;
        for (i64 j = 0; j < nb; ++j) {
            T acc = 0;
            for (i64 k = 0; k < m; ++k) acc += s[j * m + k] * s[j * m + k];
            nn[j] = acc;
        }
        for (i64 j = 0; j < nb; ++j) ap[j] = x[ab + (g0 + j) * as];
        mid(nb, nn, ap, w, eps);
        for (i64 j = 0; j < nb; ++j)
            for (i64 k = 0; k < m; ++k) ys[j * m + k] = w[j] * s[j * m + k];
        if (!shared)
            for (i64 j = 0; j < nb; ++j) y[ab + (g0 + j) * as] = ap[j];
    }
    if (shared) y[ab] = SFX(act)(x[ab], (int)c->act);
}

ALWAYS_INLINE void SFX(split_bwd)(const T* restrict x, const T* restrict gr, T* restrict gi, const colu_cfg* c,
                                  const i64 m, const SFX(bwd_mid_fn) mid) {
    const i64 G = c->G, ab = c->axis_base, as = c->axis_step, sb = c->sec_base;
    const int shared = (int)c->shared, act = (int)c->act;
    const T eps = (T)c->eps;
    T nn[NB], q[NB], av[NB], w[NB], coef[NB], kk[NB];
    T ksum = 0;
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        const T *s = x + sb + g0 * m, *gs = gr + sb + g0 * m;
        T* os = gi + sb + g0 * m;
        for (i64 j = 0; j < nb; ++j) {
            T a2 = 0, aq = 0;
            for (i64 k = 0; k < m; ++k) {
                a2 += s[j * m + k] * s[j * m + k];
                aq += gs[j * m + k] * s[j * m + k];
            }
            nn[j] = a2;
            q[j] = aq;
        }
        for (i64 j = 0; j < nb; ++j) av[j] = x[ab + (g0 + j) * as];
        mid(nb, nn, q, av, w, coef, kk, eps);
        for (i64 j = 0; j < nb; ++j)
            for (i64 k = 0; k < m; ++k) os[j * m + k] = w[j] * gs[j * m + k] - coef[j] * s[j * m + k];
        ksum += SFX(axis_grads)(gr, gi, ab, as, g0, nb, kk, av, shared, act);
    }
    if (shared) SFX(shared_axis_grad)(x, gr, gi, ab, ksum, act);
}

#define SPLIT_LOOPS(FWD, BWD, SS)                                                                                 \
    static __attribute__((noinline)) void FWD(const T* restrict x, T* restrict y, const i64 outer, const i64 C,    \
                                              const colu_cfg* c, const int nt) {                                   \
        SFX(fwd_mid_fn) f;                                                                                         \
        SFX(bwd_mid_fn) b;                                                                                         \
        SFX(pick_mids)(c, &f, &b);                                                                                 \
        PAR_SPANS(outer, for (i64 o = lo; o < hi; ++o) SFX(split_fwd)(x + o * C, y + o * C, c, (SS) - 1, f));     \
    }                                                                                                              \
    static __attribute__((noinline)) void BWD(const T* restrict x, const T* restrict gr, T* restrict gi,           \
                                              const i64 outer, const i64 C, const colu_cfg* c, const int nt) {     \
        SFX(fwd_mid_fn) f;                                                                                         \
        SFX(bwd_mid_fn) b;                                                                                         \
        SFX(pick_mids)(c, &f, &b);                                                                                 \
        PAR_SPANS(outer,                                                                                           \
                  for (i64 o = lo; o < hi; ++o) SFX(split_bwd)(x + o * C, gr + o * C, gi + o * C, c, (SS) - 1, b)); \
    }
COLU_SPLIT_INSTANCES(SPLIT_LOOPS)
#undef SPLIT_LOOPS
#endif

#if SPECIALISE_S && defined(COLU_AVX2)
/* the AVX2 rows for the axes_first layout (kernel_axes_first.h, through kernel_vector.h below) */
static int axf_range(const float* x, const float* g, float* out, const i64 outer, const i64 C, const colu_cfg* c,
                     const int nt, const int backward);
#endif

/* 1 where a rows loop specialised for the configuration's S took the call */
static int SFX(split_range)(const T* x, const T* g, T* out, const i64 outer, const i64 C, const colu_cfg* c,
                            const int nt, const int backward) {
#if SPECIALISE_S && defined(COLU_AVX2)
    if (axf_range(x, g, out, outer, C, c, nt, backward)) return 1;
#endif
#if SPECIALISE_S
    /* sqrt and log have no per-cone loops of their own (pick_mids): the generic rows loops take them */
    if (c->kind != COLU_KIND_COLU || c->sec_step != c->S - 1 || !OWN_LOOPS(c->scaling)) return 0;
#define CASE(FWD, BWD, SS)                                \
    if (c->S == SS) {                                     \
        if (backward) BWD(x, g, out, outer, C, c, nt);    \
        else FWD(x, out, outer, C, c, nt);                \
        return 1;                                         \
    }
    COLU_SPLIT_INSTANCES(CASE)
#undef CASE
#else
    (void)x; (void)g; (void)out; (void)outer; (void)C; (void)c; (void)nt; (void)backward;
#endif
    return 0;
}

/* ------------------------------------------------------ flat grouped path */
/* When each cone is S contiguous values (grouped CoLU without a shared axis,
 * and every RCoLU) and the channels are last, the tensor is one run of
 * outer*G cones. A single loop over cones, with S, the scaling and the
 * identity axis activation known at compile time, is vectorised across cones
 * by the compiler (the per-cone sums become lane-wise adds of interleaved
 * loads); reading each cone once and writing it once, it runs at the speed
 * of ReLU for S = 4 and 8. Blocking or transposing measured slower. */

/* one cone of S contiguous values (no restrict on these pointers: inlined
 * into the loops below, restrict-qualified per-cone pointers made the
 * compiler vectorise the RCoLU loops badly, about 2x slower); both return too_big of the cone's norm, for
 * their loop to OR */
ALWAYS_INLINE int SFX(cone_fwd)(const T* xc, T* yc, const i64 S, const int kind, const int sc,
                                 const int act, const T eps) {
    if (kind == COLU_KIND_COLU) {
        T ss = 0;
        for (i64 k = 1; k < S; ++k) ss += xc[k] * xc[k];
        const T a = SFX(act)(xc[0], act);
        const T w = SFX(weight)(a / (SQRT(ss) + eps), sc);
        yc[0] = a;
        for (i64 k = 1; k < S; ++k) yc[k] = w * xc[k];
        return SFX(too_big)(ss);
    }
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T sum = 0, ss = 0;
    for (i64 k = 0; k < S; ++k) sum += xc[k];
    const T mu = sum * inv_s;
    for (i64 k = 0; k < S; ++k) { const T p = xc[k] - mu; ss += p * p; }
    const T tp = SFX(act)(mu * rs, act);
    const T w = SFX(weight)(tp / (SQRT(ss) + eps), sc);
    /* tp e in each channel; mu itself for the identity axis (one multiply less) */
    const T base = act != COLU_ACT_IDENTITY ? tp * inv_rs : mu;
    for (i64 k = 0; k < S; ++k) yc[k] = base + w * (xc[k] - mu);
    return SFX(too_big)(ss);
}

ALWAYS_INLINE int SFX(cone_bwd)(const T* xc, const T* gc, T* oc, const i64 S, const int kind,
                                 const int sc, const int act, const T eps) {
    if (kind == COLU_KIND_COLU) {
        T ss = 0, q = 0;
        for (i64 k = 1; k < S; ++k) { ss += xc[k] * xc[k]; q += gc[k] * xc[k]; }
        T w, kk, coef;
        const int over = SFX(bwd_scalars)(ss, q, SFX(act)(xc[0], act), eps, sc, &w, &kk, &coef);
        const T ga = gc[0] + kk;
        oc[0] = act != COLU_ACT_IDENTITY ? ga * SFX(act_grad)(xc[0], act) : ga;
        for (i64 k = 1; k < S; ++k) oc[k] = w * gc[k] - coef * xc[k];
        return over;
    }
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T sx = 0, sg = 0, ss = 0, q = 0;
    for (i64 k = 0; k < S; ++k) { sx += xc[k]; sg += gc[k]; }
    const T mu = sx * inv_s, gm = sg * inv_s;
    for (i64 k = 0; k < S; ++k) { const T p = xc[k] - mu; ss += p * p; q += gc[k] * p; }
    const T t = mu * rs;
    T w, kk, coef;
    const int over = SFX(bwd_scalars)(ss, q, SFX(act)(t, act), eps, sc, &w, &kk, &coef);
    T gt = gm + kk * inv_rs;
    if (act != COLU_ACT_IDENTITY) gt *= SFX(act_grad)(t, act);
    /* w (g - gm) - coef (x - mu) + gt, with the per-cone terms folded */
    const T add = gt - w * gm + coef * mu;
    for (i64 k = 0; k < S; ++k) oc[k] = w * gc[k] - coef * xc[k] + add;
    return over;
}

/* The parallel loop over cones is written out in each function below, not
 * in a shared helper: OpenMP outlines a region's body where it stands (here
 * through PAR_SPANS), and only there do S, the kind and the scaling stay
 * compile-time constants. */
#define FLAT_LOOPS(FWD, BWD, SS, KIND, SC, ACT)                                                                \
    static __attribute__((noinline)) void FWD(const T* restrict x, T* restrict y, const i64 n, const colu_cfg* c, \
                                              const int nt) {                                                  \
        const T eps = (T)c->eps;                                                                               \
        PAR_SPANS(n, int over = 0; for (i64 i = lo; i < hi; ++i)                                               \
                 over |= SFX(cone_fwd)(x + i * (SS), y + i * (SS), SS, KIND, SC, ACT, eps);                    \
                 if (over) note_overflow());                                                                    \
    }                                                                                                          \
    static __attribute__((noinline)) void BWD(const T* restrict x, const T* restrict gr, T* restrict gi,       \
                                              const i64 n, const colu_cfg* c, const int nt) {                  \
        const T eps = (T)c->eps;                                                                               \
        PAR_SPANS(n, int over = 0; for (i64 i = lo; i < hi; ++i)                                               \
                 over |= SFX(cone_bwd)(x + i * (SS), gr + i * (SS), gi + i * (SS), SS, KIND, SC, ACT, eps);    \
                 if (over) note_overflow());                                                                    \
    }

/* run-time configuration: any S, axis activation, scaling and dtype */
FLAT_LOOPS(SFX(flat_any_fwd), SFX(flat_any_bwd), c->S, (int)c->kind, (int)c->scaling, (int)c->act)

#if SPECIALISE_S && defined(COLU_AVX2)
#include "kernel_vector.h"
#endif

#if SPECIALISE_S
#include "kernel_portable.h"
#endif

#if SPECIALISE_S
/* relu/silu axes on the flat path, through the identity loops above (vector blocks included) instead of
 * loops of their own for every S, kind and scaling: a cone with axis activation phi is the identity cone
 * of a modified input x', built a chunk of cones at a time in an L1-resident buffer. For CoLU, x' is x
 * with its axis a replaced by phi(a). For RCoLU, x' = x + (phi(t)/sqrt(S) - mu) e per cone (mu the mean,
 * t = mu sqrt(S)): its mean is phi(t)/sqrt(S), so the identity cone's axis is phi(t), and its centred
 * vector is x's. The backward chains the identity cone's gradient g' through x -> x': CoLU multiplies the
 * axis entry by phi'(a); RCoLU adds (phi'(t) - 1)/S sum(g') to every entry. Where the machine has AVX2,
 * the vector blocks take relu/silu axes themselves for S = 4, 8, 16 (kernel_vector.h) and this is for the
 * other S. */
#define ACHUNK 1024 /* floats per buffer: 4 KB */

static void SFX(flat_fwd_range)(const T* restrict x, T* restrict y, const i64 n, const colu_cfg* c, const int nt);
static void SFX(flat_bwd_range)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 n,
                                const colu_cfg* c, const int nt);

/* the identity loops are fast for these S: specialised, or the vector blocks */
#define ACT_VIA_IDENTITY(c)                                                 \
    ((c)->act != COLU_ACT_IDENTITY && (c)->kind == COLU_KIND_COLU &&         \
     ((c)->S == 3 || (c)->S == 4 || ((c)->S % 8 == 0 && (c)->S <= ACHUNK / 2)))

/* x' of m cones into xp; tv gets each cone's pre-activation axis value (a, or t for RCoLU) */
ALWAYS_INLINE void SFX(pre_act)(const T* restrict x, T* restrict xp, T* restrict tv, const i64 m, const i64 S,
                                const int kind, const int act) {
    if (kind == COLU_KIND_COLU) {
        for (i64 i = 0; i < m * S; ++i) xp[i] = x[i];
        for (i64 j = 0; j < m; ++j) {
            tv[j] = x[j * S];
            xp[j * S] = SFX(act)(x[j * S], act);
        }
        return;
    }
    const T rs = SQRT((T)S), inv_s = (T)1 / (T)S;
    for (i64 j = 0; j < m; ++j) {
        T sum = 0;
        for (i64 k = 0; k < S; ++k) sum += x[j * S + k];
        const T mu = sum * inv_s, t = mu * rs, d = SFX(act)(t, act) / rs - mu;
        tv[j] = t;
        for (i64 k = 0; k < S; ++k) xp[j * S + k] = x[j * S + k] + d;
    }
}

static void SFX(flat_act_fwd)(const T* restrict x, T* restrict y, const i64 n, const colu_cfg* c, const int nt) {
    colu_cfg id = *c;
    id.act = COLU_ACT_IDENTITY;
    const i64 S = c->S, per = ACHUNK / S, nchunks = (n + per - 1) / per;
    PAR_SPANS(nchunks, for (i64 k = lo; k < hi; ++k) {
        T xp[ACHUNK], tv[ACHUNK / 2];
        const i64 c0 = k * per, m = n - c0 < per ? n - c0 : per;
        SFX(pre_act)(x + c0 * S, xp, tv, m, S, (int)c->kind, (int)c->act);
        SFX(flat_fwd_range)(xp, y + c0 * S, m, &id, 1);
    });
}

static void SFX(flat_act_bwd)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 n,
                              const colu_cfg* c, const int nt) {
    colu_cfg id = *c;
    id.act = COLU_ACT_IDENTITY;
    const i64 S = c->S, per = ACHUNK / S, nchunks = (n + per - 1) / per;
    const int act = (int)c->act;
    const T inv_s = (T)1 / (T)S;
    PAR_SPANS(nchunks, for (i64 k = lo; k < hi; ++k) {
        T xp[ACHUNK], tv[ACHUNK / 2];
        const i64 c0 = k * per, m = n - c0 < per ? n - c0 : per;
        T* o = gi + c0 * S;
        SFX(pre_act)(x + c0 * S, xp, tv, m, S, (int)c->kind, act);
        SFX(flat_bwd_range)(xp, gr + c0 * S, o, m, &id, 1);
        if (c->kind == COLU_KIND_COLU) {
            for (i64 j = 0; j < m; ++j) o[j * S] *= SFX(act_grad)(tv[j], act);
        } else {
            for (i64 j = 0; j < m; ++j) {
                T sum = 0;
                for (i64 q = 0; q < S; ++q) sum += o[j * S + q];
                const T f = (SFX(act_grad)(tv[j], act) - (T)1) * inv_s * sum;
                for (i64 q = 0; q < S; ++q) o[j * S + q] += f;
            }
        }
    });
}
#endif

static void SFX(flat_fwd_range)(const T* restrict x, T* restrict y, const i64 n, const colu_cfg* c, const int nt) {
    if (!OWN_LOOPS(c->scaling)) { /* every loop below is for one of the three */
        SFX(flat_any_fwd)(x, y, n, c, nt);
        return;
    }
#if SPECIALISE_S && defined(COLU_AVX2)
    if (avx_fwd_range(x, y, n, c, nt)) return; /* identity, relu and silu axes */
#endif
#if SPECIALISE_S
    if (ACT_VIA_IDENTITY(c)) {
        SFX(flat_act_fwd)(x, y, n, c, nt);
        return;
    }
#endif
#if SPECIALISE_S
#define CASE(FWD, BWD, SS)                              \
    if (c->kind == COLU_KIND_RCOLU && c->S == SS) {     \
        FWD(x, y, n, c, nt);                            \
        return;                                         \
    }
    if (c->act != COLU_ACT_IDENTITY) {
        COLU_FLAT_RCOLU_ACT_INSTANCES(CASE)
    }
#undef CASE
#endif
#if SPECIALISE_S
#define CASE(FWD, BWD, SS, KIND, SC)                                                                                   \
    if (c->act == COLU_ACT_IDENTITY && c->S == SS && c->kind == COLU_KIND_##KIND && c->scaling == COLU_SCALING_##SC) { \
        FWD(x, y, n, c, nt);                                                                                           \
        return;                                                                                                        \
    }
    FLAT_ALL(CASE)
#undef CASE
#endif
    SFX(flat_any_fwd)(x, y, n, c, nt);
}

static void SFX(flat_bwd_range)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 n,
                                const colu_cfg* c, const int nt) {
    if (!OWN_LOOPS(c->scaling)) { /* as in flat_fwd_range */
        SFX(flat_any_bwd)(x, gr, gi, n, c, nt);
        return;
    }
#if SPECIALISE_S && defined(COLU_AVX2)
    if (avx_bwd_range(x, gr, gi, n, c, nt)) return; /* identity, relu and silu axes */
#endif
#if SPECIALISE_S
    if (ACT_VIA_IDENTITY(c)) {
        SFX(flat_act_bwd)(x, gr, gi, n, c, nt);
        return;
    }
#endif
#if SPECIALISE_S
#define CASE(FWD, BWD, SS)                              \
    if (c->kind == COLU_KIND_RCOLU && c->S == SS) {     \
        BWD(x, gr, gi, n, c, nt);                       \
        return;                                         \
    }
    if (c->act != COLU_ACT_IDENTITY) {
        COLU_FLAT_RCOLU_ACT_INSTANCES(CASE)
    }
#undef CASE
#endif
#if SPECIALISE_S
#define CASE(FWD, BWD, SS, KIND, SC)                                                                                   \
    if (c->act == COLU_ACT_IDENTITY && c->S == SS && c->kind == COLU_KIND_##KIND && c->scaling == COLU_SCALING_##SC) { \
        BWD(x, gr, gi, n, c, nt);                                                                                      \
        return;                                                                                                        \
    }
    FLAT_ALL(CASE)
#undef CASE
#endif
    SFX(flat_any_bwd)(x, gr, gi, n, c, nt);
}

#include "kernel_planes.h"

/* ---------------------------------------------------------- entry points */

void SFX(colu_forward)(const T* x, T* y, i64 outer, i64 C, i64 inner, const colu_cfg* c, int nthreads) {
    const int nt = pick_threads(outer * C * inner, nthreads);
    if (inner == 1 && FLAT(c)) {
        SFX(flat_fwd_range)(x, y, outer * c->G, c, nt);
        return;
    }
    if (inner == 1) {
        if (SFX(split_range)(x, 0, y, outer, C, c, nt, 0)) return;
        PAR_SPANS(outer, for (i64 o = lo; o < hi; ++o) SFX(fwd_row)(x + o * C, y + o * C, c));
        return;
    }
    SFX(plane_fwd_range)(x, y, outer, C, inner, c, nt);
}

void SFX(colu_backward)(const T* x, const T* g, T* gi, i64 outer, i64 C, i64 inner, const colu_cfg* c,
                        int nthreads) {
    const int nt = pick_threads(outer * C * inner, nthreads);
    if (inner == 1 && FLAT(c)) {
        SFX(flat_bwd_range)(x, g, gi, outer * c->G, c, nt);
        return;
    }
    if (inner == 1) {
        if (SFX(split_range)(x, g, gi, outer, C, c, nt, 1)) return;
        PAR_SPANS(outer, for (i64 o = lo; o < hi; ++o) SFX(bwd_row)(x + o * C, g + o * C, gi + o * C, c));
        return;
    }
    SFX(plane_bwd_range)(x, g, gi, outer, C, inner, c, nt);
}
