/* Fused CPU kernels for CoLU and RCoLU, forward and backward.
 *
 * Plain C with no torch headers so that it compiles in about a second; it is
 * built on first use by colu.ops.cpu (gcc -O3 -fopenmp) and called through
 * ctypes on the tensors' data pointers.
 *
 * Tensors are contiguous (outer, C, inner). Two loop shapes:
 *
 *  - rows (inner == 1, channels-last data): a row of C channels at a time,
 *    cone by cone; a cone's channels are a few contiguous values, so each is
 *    read once from memory and re-read from L1 for the second pass.
 *  - lanes (inner > 1, contiguous NCHW with dim=1): a block of LANES
 *    neighbouring spatial positions at a time; every loop runs over that
 *    block with unit stride, so the compiler vectorises it, and the block
 *    (S * LANES values) stays in L1 between the norm pass and the output pass.
 *
 * Channel maps (see colu/spec.py): cone g's axis is channel
 * axis_base + g * axis_step and its section channels sec_base + g * sec_step
 * + k, k < S - 1. grouped: (0, S, 1, S); axes_first: (0, 1, G, S - 1);
 * shared axis: (0, 0, 1, S - 1). RCoLU cones are channels g*S ... g*S+S-1.
 *
 * NaN handling: the clamps are written as comparisons that return r itself
 * when r is NaN (as torch.clamp does), never fmin/fmax, and the file must not
 * be built with -ffast-math / -ffinite-math-only.
 */
#ifndef COLU_BODY
#define COLU_BODY

#include <math.h>
#include <stdint.h>
#include <omp.h>

typedef int64_t i64;

/* Filled by Python once per configuration and passed by pointer so that a
 * call crosses ctypes with few arguments. */
typedef struct {
    i64 G, S;
    i64 axis_base, axis_step, sec_base, sec_step;
    i64 kind;     /* 0 colu, 1 rcolu */
    i64 shared;   /* shared axis (colu only) */
    i64 scaling;  /* 0 hard, 1 soft, 2 firm */
    i64 act;      /* 0 identity, 1 relu, 2 silu */
    double eps;
} colu_cfg;

#define LANES 128
/* Work is split into chunks of at least GRAIN elements, one per thread, as
 * ATen splits element-wise ops (threads = min(nthreads, ceil(numel/GRAIN))):
 * a second thread only pays off once each has that much to do, and waking it
 * costs tens of microseconds on a busy machine. */
#define GRAIN 32768

int colu_abi_version(void) { return 2; }

static int pick_threads(i64 numel, int nthreads) {
    const i64 chunks = (numel + GRAIN - 1) / GRAIN;
    if (nthreads < 1) nthreads = 1;
    return chunks < nthreads ? (chunks < 1 ? 1 : (int)chunks) : nthreads;
}

/* expf in a form the compiler vectorises (libm's expf is a call per element
 * unless -ffast-math, which the NaN rules forbid). Cody-Waite reduction to
 * |r| <= ln2/2 and a degree-6 Taylor polynomial: ~2 ulp, plenty for a
 * sigmoid. Inputs are clamped to the finite range (sigmoid saturates there
 * anyway); NaN passes through the comparisons and the polynomial. */
static inline float colu_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    const float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f + r * 0.0013888889f)))));
    union { int32_t i; float f; } u;
    u.i = (int32_t)((uint32_t)((int32_t)n + 127) << 23);
    return p * u.f;
}

#define NB 64

#define T float
#define SFX(name) name##_f32
#define SQRT sqrtf
#define EXP colu_expf
#define SPECIALISE_S 1
#include __FILE__
#undef T
#undef SFX
#undef SQRT
#undef EXP
#undef SPECIALISE_S

#define T double
#define SFX(name) name##_f64
#define SQRT sqrt
#define EXP exp
#define SPECIALISE_S 0
#include __FILE__


/* One entry point that takes its arguments packed in an int64 array:
 * {backward, float64, x, grad, out, outer, C, inner, cfg, nthreads}.
 * ctypes converts each argument of a call separately, which for the
 * per-argument entry points above costs a microsecond or two per call; a
 * single pointer to a reused buffer costs a fraction of that. */
void colu_run(const i64* a) {
    const colu_cfg* c = (const colu_cfg*)(intptr_t)a[8];
    const int nt = (int)a[9];
    if (a[1]) {
        if (a[0]) colu_backward_f64((const double*)(intptr_t)a[2], (const double*)(intptr_t)a[3], (double*)(intptr_t)a[4], a[5], a[6], a[7], c, nt);
        else colu_forward_f64((const double*)(intptr_t)a[2], (double*)(intptr_t)a[4], a[5], a[6], a[7], c, nt);
    } else {
        if (a[0]) colu_backward_f32((const float*)(intptr_t)a[2], (const float*)(intptr_t)a[3], (float*)(intptr_t)a[4], a[5], a[6], a[7], c, nt);
        else colu_forward_f32((const float*)(intptr_t)a[2], (float*)(intptr_t)a[4], a[5], a[6], a[7], c, nt);
    }
}

#else /* ------------------------------------------------ body, per dtype T */

static inline T SFX(sigm)(T z) { return (T)1 / ((T)1 + EXP(-z)); }

/* phi(a); relu keeps NaN (a < 0 is false for NaN) */
static inline T SFX(act)(T a, int act) {
    if (act == 0) return a;
    if (act == 1) return a < 0 ? (T)0 : a;
    return a * SFX(sigm)(a);
}

static inline T SFX(act_grad)(T a, int act) {
    if (act == 1) return a > 0 ? (T)1 : (T)0;
    T sg = SFX(sigm)(a);
    return sg * ((T)1 + a * ((T)1 - sg));
}

/* w(r); for NaN r every comparison is false and r comes back */
static inline T SFX(weight)(T r, int scaling) {
    if (scaling == 0) return r < 0 ? (T)0 : (r > 1 ? (T)1 : r);
    if (scaling == 1) return SFX(sigm)(r - (T)0.5);
    return SFX(sigm)((T)4 * r - (T)2);
}

/* w'(r) given w; inclusive at 0 and 1 as torch.clamp's gradient */
static inline T SFX(slope)(T r, T w, int scaling) {
    if (scaling == 0) return (r >= 0 && r <= 1) ? (T)1 : (T)0;
    if (scaling == 1) return w * ((T)1 - w);
    return (T)4 * w * ((T)1 - w);
}

/* ------------------------------------------------------------ rows path */
/* A row is processed NB cones at a time in three loops: gather per-cone sums
 * into small arrays, compute the per-cone scalars (norm, weight, slope) over
 * those arrays with unit stride, then write. The middle loop, where the
 * square roots, divisions and exponentials are, vectorises across cones;
 * the outer ones vectorise when S is a compile-time constant, which is why
 * the block functions are always inlined into callers with S = 3, 4, 8, 16. */

#ifndef INLINE
#define INLINE static inline __attribute__((always_inline))

/* the per-cone loop instantiated for each scaling with the identity axis
 * activation (the default), so that the clamp or the sigmoid is straight-line
 * code the vectoriser accepts (float32 only); relu/silu axes take the
 * generic loop */
#define DISPATCH9(F, ...)                                      \
    if (!SPECIALISE_S) F(__VA_ARGS__, sc, act);                \
    else if (act != 0) F(__VA_ARGS__, sc, act);                \
    else if (sc == 0) F(__VA_ARGS__, 0, 0);                    \
    else if (sc == 1) F(__VA_ARGS__, 1, 0);                    \
    else F(__VA_ARGS__, 2, 0);
#endif

INLINE void SFX(fwd_mid)(const i64 nb, const T* restrict nn, T* restrict ap, T* restrict w, const T eps,
                         const int sc, const int act) {
    for (i64 j = 0; j < nb; ++j) {
        const T a = SFX(act)(ap[j], act);
        ap[j] = a;
        w[j] = SFX(weight)(a / (SQRT(nn[j]) + eps), sc);
    }
}

INLINE void SFX(bwd_mid)(const i64 nb, const T* restrict nn, const T* restrict q, const T* restrict av,
                         T* restrict w, T* restrict coef, T* restrict kk, const T eps, const int sc, const int act) {
    for (i64 j = 0; j < nb; ++j) {
        const T n = SQRT(nn[j]), den = n + eps;
        const T r = SFX(act)(av[j], act) / den, wj = SFX(weight)(r, sc);
        const T k = q[j] * SFX(slope)(r, wj, sc) / den;
        w[j] = wj;
        coef[j] = k * r / (n > 0 ? n : (T)1);
        kk[j] = k;
    }
}

INLINE void SFX(rfwd_mid)(const i64 nb, const T* restrict nn, const T* restrict mean, T* restrict w,
                          T* restrict base, const T rs, const T inv_rs, const T eps, const int sc, const int act) {
    for (i64 j = 0; j < nb; ++j) {
        const T tp = SFX(act)(mean[j] * rs, act);
        w[j] = SFX(weight)(tp / (SQRT(nn[j]) + eps), sc);
        base[j] = tp * inv_rs;
    }
}

INLINE void SFX(rbwd_mid)(const i64 nb, const T* restrict nn, const T* restrict q, const T* restrict mean,
                          const T* restrict gmean, T* restrict w, T* restrict coef, T* restrict add, const T rs,
                          const T inv_rs, const T eps, const int sc, const int act) {
    for (i64 j = 0; j < nb; ++j) {
        const T n = SQRT(nn[j]), den = n + eps, t = mean[j] * rs;
        const T r = SFX(act)(t, act) / den, wj = SFX(weight)(r, sc);
        const T k = q[j] * SFX(slope)(r, wj, sc) / den;
        T gt = gmean[j] + k * inv_rs;
        if (act) gt *= SFX(act_grad)(t, act);
        w[j] = wj;
        coef[j] = k * r / (n > 0 ? n : (T)1);
        /* w (g - gmean) - coef (x - mean) + gt, with the per-cone terms folded */
        add[j] = gt - wj * gmean[j] + coef[j] * mean[j];
    }
}

INLINE void SFX(fwd_blk)(const T* restrict x, T* restrict y, const i64 G, const i64 S, const i64 ab, const i64 as,
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

INLINE void SFX(bwd_blk)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 G, const i64 S,
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
        if (shared) {
            for (i64 j = 0; j < nb; ++j) ksum += kk[j];
        } else {
            for (i64 j = 0; j < nb; ++j) {
                const i64 ai = ab + (g0 + j) * as;
                const T v = gr[ai] + kk[j];
                gi[ai] = act ? v * SFX(act_grad)(av[j], act) : v;
            }
        }
    }
    if (shared) {
        const T v = gr[ab] + ksum;
        gi[ab] = act ? v * SFX(act_grad)(x[ab], act) : v;
    }
}

INLINE void SFX(rfwd_blk)(const T* restrict x, T* restrict y, const i64 G, const i64 S, const int sc, const int act,
                          const T eps) {
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T nn[NB], mean[NB], w[NB], base[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        const T* xb = x + g0 * S;
        T* yb = y + g0 * S;
        for (i64 j = 0; j < nb; ++j) {
            T sum = 0;
            for (i64 k = 0; k < S; ++k) sum += xb[j * S + k];
            const T mu = sum * inv_s;
            T a2 = 0;
            for (i64 k = 0; k < S; ++k) { const T p = xb[j * S + k] - mu; a2 += p * p; }
            mean[j] = mu;
            nn[j] = a2;
        }
        DISPATCH9(SFX(rfwd_mid), nb, nn, mean, w, base, rs, inv_rs, eps);
        for (i64 j = 0; j < nb; ++j)
            for (i64 k = 0; k < S; ++k) yb[j * S + k] = base[j] + w[j] * (xb[j * S + k] - mean[j]);
    }
}

INLINE void SFX(rbwd_blk)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 G, const i64 S,
                          const int sc, const int act, const T eps) {
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T nn[NB], q[NB], mean[NB], gmean[NB], w[NB], coef[NB], add[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        const T* xb = x + g0 * S;
        const T* gb = gr + g0 * S;
        T* ob = gi + g0 * S;
        for (i64 j = 0; j < nb; ++j) {
            T sx = 0, sg = 0;
            for (i64 k = 0; k < S; ++k) { sx += xb[j * S + k]; sg += gb[j * S + k]; }
            const T mu = sx * inv_s;
            T a2 = 0, aq = 0;
            for (i64 k = 0; k < S; ++k) {
                const T p = xb[j * S + k] - mu;
                a2 += p * p;
                aq += gb[j * S + k] * p;
            }
            mean[j] = mu;
            gmean[j] = sg * inv_s;
            nn[j] = a2;
            q[j] = aq;
        }
        DISPATCH9(SFX(rbwd_mid), nb, nn, q, mean, gmean, w, coef, add, rs, inv_rs, eps);
        for (i64 j = 0; j < nb; ++j)
            for (i64 k = 0; k < S; ++k)
                ob[j * S + k] = w[j] * gb[j * S + k] - coef[j] * xb[j * S + k] + add[j];
    }
}

/* Grouped layouts (colu grouped and unshared, and rcolu: cone j is the S
 * contiguous values j*S ... j*S+S-1). With S a compile-time constant the
 * block of NB cones is first transposed into xt[k][j] (channel k of cone j):
 * then every per-cone sum is a loop over j with unit stride for each k, which
 * vectorises without horizontal adds, and the transposes themselves compile
 * to shuffles over whole vectors. The block (S * NB values per array) stays in
 * L1 between the passes. */

#define TRANSPOSE_IN(dst, src)                     \
    for (i64 j = 0; j < nb; ++j)                   \
        for (i64 k = 0; k < S; ++k) dst[k][j] = src[j * S + k];
#define TRANSPOSE_OUT(dst, src)                    \
    for (i64 j = 0; j < nb; ++j)                   \
        for (i64 k = 0; k < S; ++k) dst[j * S + k] = src[k][j];

INLINE void SFX(gfwd_blk)(const T* restrict x, T* restrict y, const i64 G, const i64 S, const int sc, const int act,
                          const T eps) {
    T xt[S][NB], nn[NB], ap[NB], w[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        TRANSPOSE_IN(xt, (x + g0 * S))
        for (i64 j = 0; j < nb; ++j) { nn[j] = 0; ap[j] = xt[0][j]; }
        for (i64 k = 1; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) nn[j] += xt[k][j] * xt[k][j];
        DISPATCH9(SFX(fwd_mid), nb, nn, ap, w, eps);
        for (i64 j = 0; j < nb; ++j) xt[0][j] = ap[j];
        for (i64 k = 1; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) xt[k][j] *= w[j];
        TRANSPOSE_OUT((y + g0 * S), xt)
    }
}

INLINE void SFX(gbwd_blk)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 G, const i64 S,
                          const int sc, const int act, const T eps) {
    T xt[S][NB], gt[S][NB], nn[NB], q[NB], av[NB], w[NB], coef[NB], kk[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        TRANSPOSE_IN(xt, (x + g0 * S))
        TRANSPOSE_IN(gt, (gr + g0 * S))
        for (i64 j = 0; j < nb; ++j) { nn[j] = 0; q[j] = 0; av[j] = xt[0][j]; }
        for (i64 k = 1; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) { nn[j] += xt[k][j] * xt[k][j]; q[j] += gt[k][j] * xt[k][j]; }
        DISPATCH9(SFX(bwd_mid), nb, nn, q, av, w, coef, kk, eps);
        for (i64 j = 0; j < nb; ++j) {
            const T v = gt[0][j] + kk[j];
            gt[0][j] = act ? v * SFX(act_grad)(av[j], act) : v;
        }
        for (i64 k = 1; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) gt[k][j] = w[j] * gt[k][j] - coef[j] * xt[k][j];
        TRANSPOSE_OUT((gi + g0 * S), gt)
    }
}

INLINE void SFX(rgfwd_blk)(const T* restrict x, T* restrict y, const i64 G, const i64 S, const int sc, const int act,
                           const T eps) {
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T xt[S][NB], nn[NB], mean[NB], w[NB], base[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        TRANSPOSE_IN(xt, (x + g0 * S))
        for (i64 j = 0; j < nb; ++j) { mean[j] = 0; nn[j] = 0; }
        for (i64 k = 0; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) mean[j] += xt[k][j];
        for (i64 j = 0; j < nb; ++j) mean[j] *= inv_s;
        /* centred values are kept: the output is base + w * (x - mean) */
        for (i64 k = 0; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) { const T p = xt[k][j] - mean[j]; xt[k][j] = p; nn[j] += p * p; }
        DISPATCH9(SFX(rfwd_mid), nb, nn, mean, w, base, rs, inv_rs, eps);
        for (i64 k = 0; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) xt[k][j] = base[j] + w[j] * xt[k][j];
        TRANSPOSE_OUT((y + g0 * S), xt)
    }
}

INLINE void SFX(rgbwd_blk)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 G, const i64 S,
                           const int sc, const int act, const T eps) {
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T xt[S][NB], gt[S][NB], nn[NB], q[NB], mean[NB], gmean[NB], w[NB], coef[NB], add[NB];
    for (i64 g0 = 0; g0 < G; g0 += NB) {
        const i64 nb = G - g0 < NB ? G - g0 : NB;
        TRANSPOSE_IN(xt, (x + g0 * S))
        TRANSPOSE_IN(gt, (gr + g0 * S))
        for (i64 j = 0; j < nb; ++j) { mean[j] = 0; gmean[j] = 0; nn[j] = 0; q[j] = 0; }
        for (i64 k = 0; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) { mean[j] += xt[k][j]; gmean[j] += gt[k][j]; }
        for (i64 j = 0; j < nb; ++j) { mean[j] *= inv_s; gmean[j] *= inv_s; }
        for (i64 k = 0; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) {
                const T p = xt[k][j] - mean[j];
                nn[j] += p * p;
                q[j] += gt[k][j] * p;
            }
        DISPATCH9(SFX(rbwd_mid), nb, nn, q, mean, gmean, w, coef, add, rs, inv_rs, eps);
        for (i64 k = 0; k < S; ++k)
            for (i64 j = 0; j < nb; ++j) gt[k][j] = w[j] * gt[k][j] - coef[j] * xt[k][j] + add[j];
        TRANSPOSE_OUT((gi + g0 * S), gt)
    }
}

/* grouped, unshared colu with a constant S, else the generic instance */
#ifndef GROUPED_CASES
/* float32 (the dtype the speed targets are about) gets constant-S copies of
 * the grouped loops, S = 4 as FIX4 and S = 8, 16 as FIX; other S and float64
 * the generic instance ANY, which keeps the build short. The transposed
 * blocks win where the per-cone work is spread thin (S = 4, and the colu
 * backward with its two sums); for wider rcolu cones and the colu forward at
 * S = 8, 16 the direct loops measured as fast or faster. */
#define GROUPED_CASES(FIX4, FIX, ANY)        \
    if (SPECIALISE_S) switch (S) {           \
            case 4: FIX4(4); return;         \
            case 8: FIX(8); return;          \
            case 16: FIX(16); return;        \
            default: break;                  \
        }                                    \
    ANY(S);                                  \
    return;
#endif

static void SFX(fwd_row)(const T* restrict x, T* restrict y, const colu_cfg* c) {
    const i64 G = c->G, S = c->S;
    const int sc = (int)c->scaling, act = (int)c->act;
    const T eps = (T)c->eps;
    if (c->kind == 1) {
#define RCALL(SS) SFX(rfwd_blk)(x, y, G, SS, sc, act, eps)
#define RGCALL(SS) SFX(rgfwd_blk)(x, y, G, SS, sc, act, eps)
        GROUPED_CASES(RGCALL, RCALL, RCALL)
#undef RGCALL
#undef RCALL
    }
    if (!c->shared && c->axis_step == S) {
#define GCALL(SS) SFX(fwd_blk)(x, y, G, SS, 0, SS, 1, SS, 0, sc, act, eps)
#define GGCALL(SS) SFX(gfwd_blk)(x, y, G, SS, sc, act, eps)
        GROUPED_CASES(GGCALL, GCALL, GCALL)
#undef GGCALL
#undef GCALL
    }
    SFX(fwd_blk)(x, y, G, S, c->axis_base, c->axis_step, c->sec_base, c->sec_step, (int)c->shared, sc, act, eps);
}

static void SFX(bwd_row)(const T* restrict x, const T* restrict gr, T* restrict gi, const colu_cfg* c) {
    const i64 G = c->G, S = c->S;
    const int sc = (int)c->scaling, act = (int)c->act;
    const T eps = (T)c->eps;
    if (c->kind == 1) {
#define RCALL(SS) SFX(rbwd_blk)(x, gr, gi, G, SS, sc, act, eps)
#define RGCALL(SS) SFX(rgbwd_blk)(x, gr, gi, G, SS, sc, act, eps)
        GROUPED_CASES(RGCALL, RCALL, RCALL)
#undef RGCALL
#undef RCALL
    }
    if (!c->shared && c->axis_step == S) {
#define GCALL(SS) SFX(bwd_blk)(x, gr, gi, G, SS, 0, SS, 1, SS, 0, sc, act, eps)
#define GGCALL(SS) SFX(gbwd_blk)(x, gr, gi, G, SS, sc, act, eps)
        GROUPED_CASES(GGCALL, GGCALL, GCALL)
#undef GGCALL
#undef GCALL
    }
    SFX(bwd_blk)(x, gr, gi, G, S, c->axis_base, c->axis_step, c->sec_base, c->sec_step, (int)c->shared, sc, act,
                 eps);
}

/* ----------------------------------------------------------- lanes path */
/* x, y point at lane 0 of a block of nb lanes; channel ch of lane i is at
 * [ch * cs + i]. */

static void SFX(fwd_lanes)(const T* restrict x, T* restrict y, i64 cs, i64 nb, const colu_cfg* c) {
    const i64 G = c->G, S = c->S, m = S - 1;
    const int sc = (int)c->scaling, act = (int)c->act;
    const T eps = (T)c->eps;
    T nn[LANES], w[LANES], ap[LANES], mean[LANES];
    if (c->kind == 1) {
        const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
        for (i64 g = 0; g < G; ++g) {
            const T* xg = x + g * S * cs;
            T* yg = y + g * S * cs;
            for (i64 i = 0; i < nb; ++i) { mean[i] = 0; nn[i] = 0; }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) mean[i] += xg[k * cs + i];
            for (i64 i = 0; i < nb; ++i) mean[i] *= inv_s;
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) { T p = xg[k * cs + i] - mean[i]; nn[i] += p * p; }
            for (i64 i = 0; i < nb; ++i) {
                T tp = SFX(act)(mean[i] * rs, act);
                w[i] = SFX(weight)(tp / (SQRT(nn[i]) + eps), sc);
                ap[i] = tp * inv_rs;
            }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) yg[k * cs + i] = ap[i] + w[i] * (xg[k * cs + i] - mean[i]);
        }
        return;
    }
    for (i64 g = 0; g < G; ++g) {
        const T* xa = x + (c->axis_base + g * c->axis_step) * cs;
        const T* s = x + (c->sec_base + g * c->sec_step) * cs;
        T* ys = y + (c->sec_base + g * c->sec_step) * cs;
        for (i64 i = 0; i < nb; ++i) nn[i] = 0;
        for (i64 k = 0; k < m; ++k)
            for (i64 i = 0; i < nb; ++i) nn[i] += s[k * cs + i] * s[k * cs + i];
        for (i64 i = 0; i < nb; ++i) {
            ap[i] = SFX(act)(xa[i], act);
            w[i] = SFX(weight)(ap[i] / (SQRT(nn[i]) + eps), sc);
        }
        for (i64 k = 0; k < m; ++k)
            for (i64 i = 0; i < nb; ++i) ys[k * cs + i] = w[i] * s[k * cs + i];
        if (!c->shared) {
            T* ya = y + (c->axis_base + g * c->axis_step) * cs;
            for (i64 i = 0; i < nb; ++i) ya[i] = ap[i];
        }
    }
    if (c->shared) {
        const T* xa = x + c->axis_base * cs;
        T* ya = y + c->axis_base * cs;
        for (i64 i = 0; i < nb; ++i) ya[i] = SFX(act)(xa[i], act);
    }
}

static void SFX(bwd_lanes)(const T* restrict x, const T* restrict gr, T* restrict gi, i64 cs, i64 nb,
                           const colu_cfg* c) {
    const i64 G = c->G, S = c->S, m = S - 1;
    const int sc = (int)c->scaling, act = (int)c->act;
    const T eps = (T)c->eps;
    T nn[LANES], q[LANES], w[LANES], coef[LANES], ga[LANES], mean[LANES], gmean[LANES], ksum[LANES];
    if (c->kind == 1) {
        const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
        for (i64 g = 0; g < G; ++g) {
            const i64 off = g * S * cs;
            const T *xg = x + off, *gg = gr + off;
            T* og = gi + off;
            for (i64 i = 0; i < nb; ++i) { mean[i] = 0; gmean[i] = 0; nn[i] = 0; q[i] = 0; }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) { mean[i] += xg[k * cs + i]; gmean[i] += gg[k * cs + i]; }
            for (i64 i = 0; i < nb; ++i) { mean[i] *= inv_s; gmean[i] *= inv_s; }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i) {
                    T p = xg[k * cs + i] - mean[i];
                    nn[i] += p * p;
                    q[i] += gg[k * cs + i] * p;
                }
            for (i64 i = 0; i < nb; ++i) {
                const T n = SQRT(nn[i]), den = n + eps, t = mean[i] * rs;
                const T r = SFX(act)(t, act) / den, wi = SFX(weight)(r, sc);
                const T kk = q[i] * SFX(slope)(r, wi, sc) / den;
                T gt = gmean[i] + kk * inv_rs;
                if (act) gt *= SFX(act_grad)(t, act);
                w[i] = wi;
                coef[i] = kk * r / (n > 0 ? n : (T)1);
                ga[i] = gt - wi * gmean[i];
            }
            for (i64 k = 0; k < S; ++k)
                for (i64 i = 0; i < nb; ++i)
                    og[k * cs + i] = w[i] * gg[k * cs + i] - coef[i] * (xg[k * cs + i] - mean[i]) + ga[i];
        }
        return;
    }
    if (c->shared)
        for (i64 i = 0; i < nb; ++i) ksum[i] = 0;
    for (i64 g = 0; g < G; ++g) {
        const i64 ao = (c->axis_base + g * c->axis_step) * cs;
        const i64 so = (c->sec_base + g * c->sec_step) * cs;
        const T *s = x + so, *gs = gr + so;
        T* os = gi + so;
        for (i64 i = 0; i < nb; ++i) { nn[i] = 0; q[i] = 0; }
        for (i64 k = 0; k < m; ++k)
            for (i64 i = 0; i < nb; ++i) {
                nn[i] += s[k * cs + i] * s[k * cs + i];
                q[i] += gs[k * cs + i] * s[k * cs + i];
            }
        for (i64 i = 0; i < nb; ++i) {
            const T n = SQRT(nn[i]), den = n + eps;
            const T r = SFX(act)(x[ao + i], act) / den, wi = SFX(weight)(r, sc);
            const T kk = q[i] * SFX(slope)(r, wi, sc) / den;
            w[i] = wi;
            coef[i] = kk * r / (n > 0 ? n : (T)1);
            ga[i] = kk;
        }
        for (i64 k = 0; k < m; ++k)
            for (i64 i = 0; i < nb; ++i) os[k * cs + i] = w[i] * gs[k * cs + i] - coef[i] * s[k * cs + i];
        if (c->shared) {
            for (i64 i = 0; i < nb; ++i) ksum[i] += ga[i];
        } else {
            for (i64 i = 0; i < nb; ++i) {
                T v = gr[ao + i] + ga[i];
                gi[ao + i] = act ? v * SFX(act_grad)(x[ao + i], act) : v;
            }
        }
    }
    if (c->shared) {
        const i64 ao = c->axis_base * cs;
        for (i64 i = 0; i < nb; ++i) {
            T v = gr[ao + i] + ksum[i];
            gi[ao + i] = act ? v * SFX(act_grad)(x[ao + i], act) : v;
        }
    }
}

/* ---------------------------------------------------------- entry points */

void SFX(colu_forward)(const T* x, T* y, i64 outer, i64 C, i64 inner, const colu_cfg* c, int nthreads) {
    const int nt = pick_threads(outer * C * inner, nthreads);
    if (inner == 1) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (i64 o = 0; o < outer; ++o) SFX(fwd_row)(x + o * C, y + o * C, c);
        return;
    }
    const i64 nblk = (inner + LANES - 1) / LANES;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (i64 b = 0; b < outer * nblk; ++b) {
        const i64 o = b / nblk, i0 = (b % nblk) * LANES;
        const i64 nb = inner - i0 < LANES ? inner - i0 : LANES;
        const i64 off = o * C * inner + i0;
        SFX(fwd_lanes)(x + off, y + off, inner, nb, c);
    }
}

void SFX(colu_backward)(const T* x, const T* g, T* gi, i64 outer, i64 C, i64 inner, const colu_cfg* c,
                        int nthreads) {
    const int nt = pick_threads(outer * C * inner, nthreads);
    if (inner == 1) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (i64 o = 0; o < outer; ++o) SFX(bwd_row)(x + o * C, g + o * C, gi + o * C, c);
        return;
    }
    const i64 nblk = (inner + LANES - 1) / LANES;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (i64 b = 0; b < outer * nblk; ++b) {
        const i64 o = b / nblk, i0 = (b % nblk) * LANES;
        const i64 nb = inner - i0 < LANES ? inner - i0 : LANES;
        const i64 off = o * C * inner + i0;
        SFX(bwd_lanes)(x + off, g + off, gi + off, inner, nb, c);
    }
}

#endif
