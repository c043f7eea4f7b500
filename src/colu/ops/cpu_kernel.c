/* Fused CPU kernels for CoLU and RCoLU, forward and backward.
 *
 * Plain C with no torch headers so that it compiles in about a second; it is
 * built on first use by colu.ops.cpu (gcc -O3 -fopenmp) and called on the
 * tensors' data pointers, through ctypes or, for planned calls, through the
 * CPython function in cpu_entry.c where that is built into the library.
 *
 * Tensors are contiguous (outer, C, inner). Three loop shapes:
 *
 *  - flat (inner == 1 and every cone is S contiguous values: grouped CoLU
 *    without a shared axis, and RCoLU): the tensor is one run of outer*G
 *    cones and a single parallel loop goes over them, one cone per
 *    iteration, with S and the scaling compile-time constants for float32,
 *    so the compiler vectorises across cones. Each value is read once and
 *    written once, which is what makes it as fast as ReLU. For float32 with
 *    the identity axis, hand-written vector blocks take over where the
 *    compiler's code was compute-bound: AVX-512 blocks of 16 cones for
 *    S = 4, 8, 16 and AVX2 blocks of 8 cones for larger multiples of 8 (and
 *    S = 16 without AVX-512), run a few blocks at a time (avz_fwd_chunk,
 *    avz_bwd_chunk); see the comments above avz_transpose4, avz_reduce8,
 *    avz_fold16, avz_stats4 and avx_fwd8.
 *  - rows (inner == 1, shared axis or axes_first layout): a row of C
 *    channels at a time, in blocks of NB cones: per-cone sums into small
 *    arrays, the per-cone scalars over those arrays, then the writes.
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

/* cones that are S contiguous channels: every RCoLU, and grouped CoLU without a shared axis */
#define FLAT(c) ((c)->kind == 1 || (!(c)->shared && (c)->axis_step == (c)->S))

/* the scalar helpers must inline into every specialised loop, or the loops
 * stop vectorising once the compiler's inlining budget for the file runs out */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

#define LANES 128
/* Work is split into chunks of at least GRAIN elements, one per thread, as
 * ATen splits element-wise ops (threads = min(nthreads, ceil(numel/GRAIN))):
 * a second thread only pays off once each has that much to do. ATen's grain
 * is 32768 elements, sized for ops as cheap as ReLU; a cone costs a square
 * root, a division and (soft, firm) an exponential, several times ReLU's
 * work per element, so a quarter of that already pays: at (64, 512) two
 * threads took a third off the kernel's time (measured 6.4 -> 4.9 us hard,
 * 9.5 -> 6.3 us soft, forward, against ReLU's 3.2 us). */
#define GRAIN 8192

int colu_abi_version(void) { return 3; }

static int pick_threads(i64 numel, int nthreads) {
    const i64 chunks = (numel + GRAIN - 1) / GRAIN;
    if (nthreads < 1) nthreads = 1;
    return chunks < nthreads ? (chunks < 1 ? 1 : (int)chunks) : nthreads;
}

/* Runs the statements given (which read the bounds lo, hi) over [0, N) cut
 * into one contiguous span per thread, as schedule(static) would. With one
 * thread OpenMP is not entered at all: libgomp sets up a region even when
 * its if() clause is false, about 0.4 us, a tenth of a (64, 512) call. The
 * caller names its thread count nt.
 * The statements are compiled once, as a nested function (GNU C, called
 * directly, so no trampoline and no executable stack) that both branches
 * call: pasted into each branch they were compiled twice, and on some
 * -march targets the two copies contracted different products into FMAs,
 * so one and two threads gave results 1 ulp apart. */
#if defined(__clang__) /* no nested functions: the statements are pasted into both branches */
#define PAR_SPANS(N, ...)                                                        \
    do {                                                                         \
        const i64 n_ = (N);                                                      \
        if (nt > 1) {                                                            \
            _Pragma("omp parallel num_threads(nt)")                              \
            {                                                                    \
                const i64 t_ = omp_get_thread_num(), k_ = omp_get_num_threads(); \
                const i64 lo = n_ * t_ / k_, hi = n_ * (t_ + 1) / k_;             \
                __VA_ARGS__;                                                     \
            }                                                                    \
        } else {                                                                 \
            const i64 lo = 0, hi = n_;                                           \
            __VA_ARGS__;                                                         \
        }                                                                        \
    } while (0)
#else
#define PAR_SPANS(N, ...)                                                        \
    do {                                                                         \
        const i64 n_ = (N);                                                      \
        __attribute__((noinline)) void span_(const i64 lo, const i64 hi) { __VA_ARGS__; } \
        if (nt > 1) {                                                            \
            _Pragma("omp parallel num_threads(nt)")                              \
            {                                                                    \
                const i64 t_ = omp_get_thread_num(), k_ = omp_get_num_threads(); \
                span_(n_ * t_ / k_, n_ * (t_ + 1) / k_);                         \
            }                                                                    \
        } else {                                                                 \
            span_(0, n_);                                                        \
        }                                                                        \
    } while (0)
#endif

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
#undef COLU_AVX2 /* the AVX2 and AVX-512 blocks are float32 only */
#undef COLU_AVX512

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

/* ------------------------------------------------- float16 / bfloat16 */
/* Half tensors on the flat path (cones of S contiguous channels, inner == 1)
 * are converted a chunk of cones at a time into float32 buffers on the
 * stack, run through the float32 loops above (vector blocks included) and
 * rounded back to nearest even, as torch rounds: one read and one write of
 * the half tensor, where upcasting around the kernel costs two more passes
 * over memory and two allocations. Other layouts return 0 and Python
 * upcasts instead. */
#define HCHUNK 2048 /* floats per buffer: 8 KB, L1-resident */

static inline float bf16_to_f32(const uint16_t h) {
    const union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

static inline uint16_t f32_to_bf16(const float f) {
    const union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN, as torch writes it */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

#ifdef __F16C__ /* float16 in hardware (x86 F16C): 8 values per instruction, rounding to nearest even */
#include <immintrin.h>
#define COLU_HAVE_F16 1
#endif

static void half_to_f32(const uint16_t* restrict h, float* restrict f, const i64 n, const int bf16) {
    if (bf16) {
        for (i64 i = 0; i < n; ++i) f[i] = bf16_to_f32(h[i]);
        return;
    }
#ifdef COLU_HAVE_F16
    i64 i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
    for (; i < n; ++i) f[i] = _cvtsh_ss(h[i]);
#endif
}

static void f32_to_half(const float* restrict f, uint16_t* restrict h, const i64 n, const int bf16) {
    if (bf16) {
        for (i64 i = 0; i < n; ++i) h[i] = f32_to_bf16(f[i]);
        return;
    }
#ifdef COLU_HAVE_F16
    i64 i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) h[i] = _cvtss_sh(f[i], _MM_FROUND_TO_NEAREST_INT);
#endif
}

/* 1 where colu_run_half takes tensors of this configuration with inner == 1 */
int colu_half_ok(const colu_cfg* c, const int bf16) {
#ifndef COLU_HAVE_F16
    if (!bf16) return 0;
#else
    (void)bf16;
#endif
    return FLAT(c) && c->S <= HCHUNK;
}

/* {backward, bf16, x, grad, out, outer, C, inner, cfg, nthreads} as colu_run, for float16 (bf16 = 0) or
 * bfloat16 (bf16 = 1) tensors; returns 1 where it ran, 0 where Python must upcast instead (other
 * layouts, cones over HCHUNK channels, float16 without F16C) */
int colu_run_half(const i64* a) {
    const colu_cfg* c = (const colu_cfg*)(intptr_t)a[8];
    const int backward = (int)a[0], bf16 = (int)a[1];
    const i64 outer = a[5], C = a[6], inner = a[7];
    if (inner != 1 || !colu_half_ok(c, bf16)) return 0;
    const uint16_t *x = (const uint16_t*)(intptr_t)a[2], *g = (const uint16_t*)(intptr_t)a[3];
    uint16_t* out = (uint16_t*)(intptr_t)a[4];
    const i64 S = c->S, per = HCHUNK / S, n = outer * c->G, nchunks = (n + per - 1) / per;
    const int nt = pick_threads(outer * C, (int)a[9]);
    PAR_SPANS(nchunks, for (i64 k = lo; k < hi; ++k) {
        float xf[HCHUNK], gf[HCHUNK], of[HCHUNK];
        const i64 c0 = k * per, m = n - c0 < per ? n - c0 : per, len = m * S;
        half_to_f32(x + c0 * S, xf, len, bf16);
        if (backward) {
            half_to_f32(g + c0 * S, gf, len, bf16);
            flat_bwd_range_f32(xf, gf, of, m, c, 1);
        } else {
            flat_fwd_range_f32(xf, of, m, c, 1);
        }
        f32_to_half(of, out + c0 * S, len, bf16);
    });
    return 1;
}

#else /* ------------------------------------------------ body, per dtype T */

ALWAYS_INLINE T SFX(sigm)(T z) { return (T)1 / ((T)1 + EXP(-z)); }

/* phi(a); relu keeps NaN (a < 0 is false for NaN) */
ALWAYS_INLINE T SFX(act)(T a, int act) {
    if (act == 0) return a;
    if (act == 1) return a < 0 ? (T)0 : a;
    return a * SFX(sigm)(a);
}

ALWAYS_INLINE T SFX(act_grad)(T a, int act) {
    if (act == 1) return a > 0 ? (T)1 : (T)0;
    T sg = SFX(sigm)(a);
    return sg * ((T)1 + a * ((T)1 - sg));
}

/* w(r); for NaN r every comparison is false and r comes back */
ALWAYS_INLINE T SFX(weight)(T r, int scaling) {
    if (scaling == 0) return r < 0 ? (T)0 : (r > 1 ? (T)1 : r);
    if (scaling == 1) return SFX(sigm)(r - (T)0.5);
    return SFX(sigm)((T)4 * r - (T)2);
}

/* w'(r) given w; inclusive at 0 and 1 as torch.clamp's gradient */
ALWAYS_INLINE T SFX(slope)(T r, T w, int scaling) {
    if (scaling == 0) return (r >= 0 && r <= 1) ? (T)1 : (T)0;
    if (scaling == 1) return w * ((T)1 - w);
    return (T)4 * w * ((T)1 - w);
}

/* The backward's per-cone scalars, shared by every loop below: from the
 * section's squared norm nn, q = <section of grad, section> and the activated
 * axis value ap (r = ap / den, den = |s| + eps): the weight w, the term
 * k = q w'(r) / den that the axis' gradient gains, and coef = k r / |s|, the
 * section's coefficient on x. */
ALWAYS_INLINE void SFX(bwd_scalars)(const T nn, const T q, const T ap, const T eps, const int sc, T* w, T* k,
                                    T* coef) {
    const T n = SQRT(nn), den = n + eps, r = ap / den;
    *w = SFX(weight)(r, sc);
    *k = q * SFX(slope)(r, *w, sc) / den;
    *coef = *k * r / (n > 0 ? n : (T)1);
}

/* ------------------------------------------------------------ rows path */
/* A row is processed NB cones at a time in three loops: gather per-cone sums
 * into small arrays, compute the per-cone scalars (norm, weight, slope) over
 * those arrays with unit stride, then write. The middle loop, where the
 * square roots, divisions and exponentials are, vectorises across cones.
 * Only shared-axis and axes_first rows come here (see the flat path). */

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
    for (i64 j = 0; j < nb; ++j) SFX(bwd_scalars)(nn[j], q[j], SFX(act)(av[j], act), eps, sc, w + j, kk + j, coef + j);
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
 * compiler vectorise the RCoLU loops badly, about 2x slower) */
INLINE void SFX(cone_fwd)(const T* xc, T* yc, const i64 S, const int kind, const int sc,
                          const int act, const T eps) {
    if (kind == 0) {
        T ss = 0;
        for (i64 k = 1; k < S; ++k) ss += xc[k] * xc[k];
        const T a = SFX(act)(xc[0], act);
        const T w = SFX(weight)(a / (SQRT(ss) + eps), sc);
        yc[0] = a;
        for (i64 k = 1; k < S; ++k) yc[k] = w * xc[k];
        return;
    }
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T sum = 0, ss = 0;
    for (i64 k = 0; k < S; ++k) sum += xc[k];
    const T mu = sum * inv_s;
    for (i64 k = 0; k < S; ++k) { const T p = xc[k] - mu; ss += p * p; }
    const T tp = SFX(act)(mu * rs, act);
    const T w = SFX(weight)(tp / (SQRT(ss) + eps), sc);
    /* tp e in each channel; mu itself for the identity axis (one multiply less) */
    const T base = act ? tp * inv_rs : mu;
    for (i64 k = 0; k < S; ++k) yc[k] = base + w * (xc[k] - mu);
}

INLINE void SFX(cone_bwd)(const T* xc, const T* gc, T* oc, const i64 S, const int kind,
                          const int sc, const int act, const T eps) {
    if (kind == 0) {
        T ss = 0, q = 0;
        for (i64 k = 1; k < S; ++k) { ss += xc[k] * xc[k]; q += gc[k] * xc[k]; }
        T w, kk, coef;
        SFX(bwd_scalars)(ss, q, SFX(act)(xc[0], act), eps, sc, &w, &kk, &coef);
        const T ga = gc[0] + kk;
        oc[0] = act ? ga * SFX(act_grad)(xc[0], act) : ga;
        for (i64 k = 1; k < S; ++k) oc[k] = w * gc[k] - coef * xc[k];
        return;
    }
    const T rs = SQRT((T)S), inv_rs = (T)1 / rs, inv_s = (T)1 / (T)S;
    T sx = 0, sg = 0, ss = 0, q = 0;
    for (i64 k = 0; k < S; ++k) { sx += xc[k]; sg += gc[k]; }
    const T mu = sx * inv_s, gm = sg * inv_s;
    for (i64 k = 0; k < S; ++k) { const T p = xc[k] - mu; ss += p * p; q += gc[k] * p; }
    const T t = mu * rs;
    T w, kk, coef;
    SFX(bwd_scalars)(ss, q, SFX(act)(t, act), eps, sc, &w, &kk, &coef);
    T gt = gm + kk * inv_rs;
    if (act) gt *= SFX(act_grad)(t, act);
    /* w (g - gm) - coef (x - mu) + gt, with the per-cone terms folded */
    const T add = gt - w * gm + coef * mu;
    for (i64 k = 0; k < S; ++k) oc[k] = w * gc[k] - coef * xc[k] + add;
}

/* The parallel loop over cones is written out in each function below, not
 * in a shared helper: OpenMP outlines a region's body where it stands (here
 * through PAR_SPANS), and only there do S, the kind and the scaling stay
 * compile-time constants. */
#define FLAT_LOOPS(NAME, SS, KIND, SC, ACT)                                                             \
    static __attribute__((noinline)) void SFX(flat_fwd_##NAME)(const T* restrict x, T* restrict y,      \
                                                               const i64 n, const colu_cfg* c, const int nt) { \
        const T eps = (T)c->eps;                                                                       \
        PAR_SPANS(n, for (i64 i = lo; i < hi; ++i)                                                     \
                         SFX(cone_fwd)(x + i * (SS), y + i * (SS), SS, KIND, SC, ACT, eps));           \
    }                                                                                                  \
    static __attribute__((noinline)) void SFX(flat_bwd_##NAME)(const T* restrict x, const T* restrict gr, \
                                                               T* restrict gi, const i64 n,            \
                                                               const colu_cfg* c, const int nt) {       \
        const T eps = (T)c->eps;                                                                       \
        PAR_SPANS(n, for (i64 i = lo; i < hi; ++i)                                                     \
                         SFX(cone_bwd)(x + i * (SS), gr + i * (SS), gi + i * (SS), SS, KIND, SC, ACT, eps)); \
    }

/* run-time configuration: any S, axis activation and dtype */
FLAT_LOOPS(any, c->S, (int)c->kind, (int)c->scaling, (int)c->act)

#if SPECIALISE_S && defined(__AVX2__) && defined(__FMA__)
#define COLU_AVX2 1
#ifdef __AVX512F__
#define COLU_AVX512 1
#endif
#endif

#ifndef FLAT_KEYS
/* float32 with the identity axis activation (the default) gets its own loop
 * for each S in {3, 4, 8, 16}, kind and scaling, except the S that the vector
 * blocks below take (4, 8, 16 with AVX-512; 16 with AVX2); everything else
 * runs the run-time loop, which keeps the build short. */
#define FLAT_KEYS(M, SS) M(SS, 0, 0) M(SS, 0, 1) M(SS, 0, 2) M(SS, 1, 0) M(SS, 1, 1) M(SS, 1, 2)
#ifdef COLU_AVX512
#define FLAT_ALL(M) FLAT_KEYS(M, 3)
#elif defined(COLU_AVX2)
#define FLAT_ALL(M) FLAT_KEYS(M, 3) FLAT_KEYS(M, 4) FLAT_KEYS(M, 8)
#else
#define FLAT_ALL(M) FLAT_KEYS(M, 3) FLAT_KEYS(M, 4) FLAT_KEYS(M, 8) FLAT_KEYS(M, 16)
#endif
#endif

#ifdef COLU_AVX2
#include <immintrin.h>
/* ---------------------------------------- AVX2 blocks for S = 16, 24, 32... */
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
    if (kind == 0) {
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
    if (kind == 0) {
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

#ifdef COLU_AVX512
/* --------------------------------------------- AVX-512 blocks for S = 4 */
/* 16 cones of 4 floats are 4 vectors of 4 cones each (one per 128-bit
 * lane). A 4x4 transpose inside each lane (8 in-lane shuffles) gives 4
 * vectors that hold channel k of all 16 cones, so the per-cone sums are
 * lane-wise adds and the square root, division and exponential run once per
 * cone, 16 at a time; the same transpose (it is its own inverse) puts the
 * results back. About 35 instructions per 16 cones, against about 90 for
 * gcc's vectorisation of the flat loop, which de-interleaves with cross-lane
 * permutes and redoes them for the writes: measured 0.075 against 0.12 ns
 * per element for the hard forward in L2 on one core. (The same scheme in
 * 256-bit vectors measured slower than gcc's loop, so AVX2-only machines
 * keep the flat loop for S = 4.) No lane ever mixes two cones, so a NaN
 * stays in its own cone. */
ALWAYS_INLINE void avz_transpose4(__m512* v) {
    const __m512 t0 = _mm512_unpacklo_ps(v[0], v[1]), t1 = _mm512_unpackhi_ps(v[0], v[1]);
    const __m512 t2 = _mm512_unpacklo_ps(v[2], v[3]), t3 = _mm512_unpackhi_ps(v[2], v[3]);
    v[0] = _mm512_shuffle_ps(t0, t2, 0x44);
    v[1] = _mm512_shuffle_ps(t0, t2, 0xEE);
    v[2] = _mm512_shuffle_ps(t1, t3, 0x44);
    v[3] = _mm512_shuffle_ps(t1, t3, 0xEE);
}

ALWAYS_INLINE void avz_load4(__m512* v, const float* p) {
    for (int i = 0; i < 4; ++i) v[i] = _mm512_loadu_ps(p + 16 * i);
    avz_transpose4(v);
}

ALWAYS_INLINE void avz_store4(float* p, __m512* v) {
    avz_transpose4(v);
    for (int i = 0; i < 4; ++i) _mm512_storeu_ps(p + 16 * i, v[i]);
}

/* colu_expf for 16 lanes with AVX-512's own rounding (vrndscaleps) and scaling by 2^n (vscalefps) in
 * place of the magic-number rounding and the exponent-bit assembly: same reduction, same polynomial,
 * four fewer instructions; the clamps are max/min with the operand order that passes NaN through */
ALWAYS_INLINE __m512 avz_exp(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(0.0013888889f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.008333334f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.041666668f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.16666667f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* w = weight(t / (|s| + eps)) for 16 cones: hard in one vector pass of the shared helper, soft and firm
 * through avz_exp */
ALWAYS_INLINE void avz_weights(float* w, const float* t, const float* ss, const float eps, const int sc) {
    if (sc == 0) {
        _Pragma("omp simd") for (int j = 0; j < 16; ++j) w[j] = weight_f32(t[j] / (sqrtf(ss[j]) + eps), sc);
        return;
    }
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 r = _mm512_div_ps(_mm512_loadu_ps(t), _mm512_add_ps(_mm512_sqrt_ps(_mm512_loadu_ps(ss)), _mm512_set1_ps(eps)));
    /* sigmoid(z) with z = r - 1/2 (soft) or 4r - 2 (firm); exp(-z) = exp(1/2 - r) or exp(2 - 4r) */
    const __m512 mz = sc == 1 ? _mm512_sub_ps(_mm512_set1_ps(0.5f), r) : _mm512_fnmadd_ps(_mm512_set1_ps(4.0f), r, _mm512_set1_ps(2.0f));
    _mm512_storeu_ps(w, _mm512_div_ps(one, _mm512_add_ps(one, avz_exp(mz))));
}

ALWAYS_INLINE __m512 avz_sum4(const __m512* v) {
    return _mm512_add_ps(_mm512_add_ps(v[0], v[1]), _mm512_add_ps(v[2], v[3]));
}

/* The forward of a block of 16 cones is split in two: the per-cone sums
 * (stats: t, the axis value, ss, the squared section norm, and for RCoLU mu,
 * the mean) and the output (apply: the section scaled by w). avz_fwd_chunk
 * runs stats for a few blocks, then all their weights, then all their
 * outputs, so that the chains of dependent instructions of neighbouring
 * blocks (reduction -> square root -> division -> exponential -> spread back,
 * 100-200 cycles, longer than the out-of-order window covers) run side by
 * side instead of one after the other. For S = 4 stats keeps the transposed
 * (for RCoLU, centred) vectors for apply. kernel_micro (one core, L2): forward
 * 0.77-0.99x the time of one block at a time (most for S = 4 and soft), and
 * the backward's chunks 0.68-0.95x for S = 4, 8. */
ALWAYS_INLINE void avz_stats4(const float* x, const int kind, __m512* v, float* t, float* ss, float* mu) {
    avz_load4(v, x);
    if (kind == 0) {
        _mm512_storeu_ps(ss, _mm512_fmadd_ps(v[3], v[3], _mm512_fmadd_ps(v[2], v[2], _mm512_mul_ps(v[1], v[1]))));
        _mm512_storeu_ps(t, v[0]);
        return;
    }
    /* RCoLU as cone_fwd: the mean, the centred channels, t = 2 mu (sqrt(4) = 2) */
    const __m512 m = _mm512_mul_ps(avz_sum4(v), _mm512_set1_ps(0.25f));
    __m512 acc = _mm512_setzero_ps();
    for (int k = 0; k < 4; ++k) {
        v[k] = _mm512_sub_ps(v[k], m);
        acc = _mm512_fmadd_ps(v[k], v[k], acc);
    }
    _mm512_storeu_ps(ss, acc);
    _mm512_storeu_ps(t, _mm512_add_ps(m, m));
    _mm512_storeu_ps(mu, m);
}

ALWAYS_INLINE void avz_apply4(float* y, const int kind, __m512* v, const float* w, const float* mu) {
    const __m512 bw = _mm512_loadu_ps(w);
    if (kind == 0) {
        for (int k = 1; k < 4; ++k) v[k] = _mm512_mul_ps(v[k], bw);
    } else {
        const __m512 m = _mm512_loadu_ps(mu);
        for (int k = 0; k < 4; ++k) v[k] = _mm512_fmadd_ps(bw, v[k], m);
    }
    avz_store4(y, v);
}

/* --------------------------------------------- AVX-512 blocks for S = 8 */
/* 16 cones of 8 floats are 8 vectors u[0..7], u[i] holding cone 2i in its
 * low half and cone 2i+1 in its high half. avz_reduce8 sums each cone's 8
 * lanes with a transpose-and-add tree (21 instructions for 16 cones) into one
 * vector whose lane 4L + p holds cone 2p + (L & 1) + 8 (L >> 1); the
 * per-cone scalars are computed on that vector, 16 cones at a time, and
 * avz_spread8 sends them back along each cone with one permute per vector.
 * Each sum only adds lanes of one cone, so a NaN stays in its cone. */
#define AVZ_AXES8 ((__mmask16)0x0101) /* the axis lanes of a vector of two cones */
#define AVZ_SECS8 ((__mmask16)0xFEFE)

ALWAYS_INLINE __m512 avz_reduce8(const __m512* u) {
    __m512 a[4], b[2];
    /* per 128-bit lane: a = {u_2i e0+e2, u_2i+1 e0+e2, u_2i e1+e3, u_2i+1 e1+e3} */
    for (int i = 0; i < 4; ++i)
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(u[2 * i], u[2 * i + 1]), _mm512_unpackhi_ps(u[2 * i], u[2 * i + 1]));
    /* per 128-bit lane L: b[h] = {sum of lane L of u_4h, u_4h+1, u_4h+2, u_4h+3} */
    for (int h = 0; h < 2; ++h)
        b[h] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * h], a[2 * h + 1], 0x44), _mm512_shuffle_ps(a[2 * h], a[2 * h + 1], 0xEE));
    /* a cone is two 128-bit lanes: add lanes 0+1 and 2+3 of b[0] and b[1] */
    return _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88), _mm512_shuffle_f32x4(b[0], b[1], 0xDD));
}

/* the vector for u[i]: lanes 0-7 the value of cone 2i, lanes 8-15 that of cone 2i+1 */
ALWAYS_INLINE __m512 avz_spread8(const __m512 r, const int i) {
    const int lo = i < 4 ? i : i + 4;
    return _mm512_permutexvar_ps(_mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(lo), _mm512_set1_epi32(lo + 4)), r);
}

/* the 16 axis values (lanes 0 and 8 of each u[i]) in avz_reduce8's order */
ALWAYS_INLINE __m512 avz_axes8(const __m512* u) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24);
    __m512 a = _mm512_permutex2var_ps(u[0], idx, u[4]);
    for (int p = 1; p < 4; ++p)
        a = _mm512_mask_blend_ps((__mmask16)(0x1111 << p), a, _mm512_permutex2var_ps(u[p], idx, u[4 + p]));
    return a;
}

/* -------------------------------------------- AVX-512 blocks for S = 16 */
/* 16 cones of 16 floats are 16 vectors, one per cone. avz_fold16 adds the
 * two halves of each cone and packs two cones per vector, which is the
 * S = 8 layout above (cone 2k in the low half of vector k, cone 2k+1 in the
 * high half), so the per-cone sums come from avz_reduce8 and sit in the same
 * lanes. 256-bit blocks of 8 cones (avx_fwd8) measured 0.10 ns per element for
 * the hard forward against 0.07 for these. */
ALWAYS_INLINE void avz_fold16(const __m512* u, __m512* z) {
    for (int k = 0; k < 8; ++k)
        z[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0xEE));
}

ALWAYS_INLINE __m512 avz_reduce16(const __m512* u) {
    __m512 z[8];
    avz_fold16(u, z);
    return avz_reduce8(z);
}

/* cone c's value broadcast to a whole vector */
ALWAYS_INLINE __m512 avz_spread16(const __m512 r, const int c) {
    return _mm512_permutexvar_ps(_mm512_set1_epi32(4 * ((c & 1) + 2 * (c >> 3)) + ((c & 7) >> 1)), r);
}

/* the 16 axis values (lane 0 of each cone) in avz_reduce8's order */
ALWAYS_INLINE __m512 avz_axes16(const __m512* u) {
    __m512 z[8];
    for (int k = 0; k < 8; ++k) z[k] = _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0x44); /* axes to lanes 0, 8 */
    return avz_axes8(z);
}

/* The S = 8 and S = 16 blocks are S vectors with their per-cone sums in avz_reduce8's order; these pick
 * the piece for the S at hand (a constant once inlined). */
#define AVZ_SECS(S) ((S) == 8 ? AVZ_SECS8 : (__mmask16)0xFFFE) /* the section lanes of a vector */
ALWAYS_INLINE __m512 avz_reduce_s(const __m512* u, const i64 S) { return S == 8 ? avz_reduce8(u) : avz_reduce16(u); }
ALWAYS_INLINE __m512 avz_axes_s(const __m512* u, const i64 S) { return S == 8 ? avz_axes8(u) : avz_axes16(u); }
ALWAYS_INLINE __m512 avz_spread_s(const __m512 r, const int i, const i64 S) {
    return S == 8 ? avz_spread8(r, i) : avz_spread16(r, i);
}

/* stats and apply (see avz_stats4) for 16 cones of S = 8 or 16 */
ALWAYS_INLINE void avz_stats_wide(const float* x, const i64 S, const int kind, float* t, float* ss, float* mu) {
    __m512 u[16], sq[16];
    for (int i = 0; i < S; ++i) u[i] = _mm512_loadu_ps(x + 16 * i);
    if (kind == 0) {
        for (int i = 0; i < S; ++i) sq[i] = _mm512_maskz_mul_ps(AVZ_SECS(S), u[i], u[i]);
        _mm512_storeu_ps(ss, avz_reduce_s(sq, S));
        _mm512_storeu_ps(t, avz_axes_s(u, S));
        return;
    }
    /* RCoLU as cone_fwd: the mean, the centred channels, t = sqrt(S) mu */
    const __m512 m = _mm512_mul_ps(avz_reduce_s(u, S), _mm512_set1_ps(1.0f / (float)S));
    for (int i = 0; i < S; ++i) {
        const __m512 c = _mm512_sub_ps(u[i], avz_spread_s(m, i, S));
        sq[i] = _mm512_mul_ps(c, c);
    }
    _mm512_storeu_ps(ss, avz_reduce_s(sq, S));
    _mm512_storeu_ps(t, _mm512_mul_ps(m, _mm512_set1_ps(sqrtf((float)S))));
    _mm512_storeu_ps(mu, m);
}

ALWAYS_INLINE void avz_apply_wide(const float* x, float* y, const i64 S, const int kind, const float* w,
                                  const float* mu) {
    const __m512 bw = _mm512_loadu_ps(w);
    if (kind == 0) {
        for (int i = 0; i < S; ++i) {
            const __m512 u = _mm512_loadu_ps(x + 16 * i);
            _mm512_storeu_ps(y + 16 * i, _mm512_mask_mul_ps(u, AVZ_SECS(S), u, avz_spread_s(bw, i, S)));
        }
        return;
    }
    const __m512 m = _mm512_loadu_ps(mu);
    for (int i = 0; i < S; ++i) {
        const __m512 bm = avz_spread_s(m, i, S);
        _mm512_storeu_ps(y + 16 * i, _mm512_fmadd_ps(avz_spread_s(bw, i, S), _mm512_sub_ps(_mm512_loadu_ps(x + 16 * i), bm), bm));
    }
}

/* nb <= AVZ_CHUNK blocks of 16 cones of S = 4, 8 or 16 floats (see avz_stats4) */
#define AVZ_CHUNK 4
ALWAYS_INLINE void avz_fwd_chunk(const float* x, float* y, const int nb, const i64 S, const int kind, const int sc,
                                 const float eps) {
    enum { N = 16 * AVZ_CHUNK };
    float t[N], ss[N], mu[N], w[N];
    __m512 keep[AVZ_CHUNK][4];
    for (int j = 0; j < nb; ++j) {
        const float* xb = x + j * 16 * S;
        blk_prefetch(xb, 16 * S);
        if (S <= 8) blk_prefetch_out(y + j * 16 * S, 16 * S);
        if (S == 4) avz_stats4(xb, kind, keep[j], t + 16 * j, ss + 16 * j, mu + 16 * j);
        else avz_stats_wide(xb, S, kind, t + 16 * j, ss + 16 * j, mu + 16 * j);
    }
    for (int j = 0; j < nb; ++j) avz_weights(w + 16 * j, t + 16 * j, ss + 16 * j, eps, sc);
    for (int j = 0; j < nb; ++j) {
        const float* xb = x + j * 16 * S;
        float* yb = y + j * 16 * S;
        if (S == 4) avz_apply4(yb, kind, keep[j], w + 16 * j, mu + 16 * j);
        else avz_apply_wide(xb, yb, S, kind, w + 16 * j, mu + 16 * j);
    }
}

/* The backward in the same three phases as avz_fwd_chunk: per-cone sums of each block (ss, q = <g, section>,
 * t, and for RCoLU the means of x and g), the per-cone scalars of all blocks of the chunk, then the
 * outputs. The outputs read x and g again (from L1): keeping the S = 4 transposes on the stack measured
 * slower. */
ALWAYS_INLINE void avz_bstats4(const float* x, const float* gr, const int kind, float* t, float* ss, float* q,
                               float* mu, float* gm) {
    __m512 v[4], g[4];
    avz_load4(v, x);
    avz_load4(g, gr);
    if (kind == 0) {
        __m512 as = _mm512_mul_ps(v[1], v[1]), aq = _mm512_mul_ps(g[1], v[1]);
        for (int k = 2; k < 4; ++k) {
            as = _mm512_fmadd_ps(v[k], v[k], as);
            aq = _mm512_fmadd_ps(g[k], v[k], aq);
        }
        _mm512_storeu_ps(ss, as);
        _mm512_storeu_ps(q, aq);
        _mm512_storeu_ps(t, v[0]);
        return;
    }
    const __m512 quarter = _mm512_set1_ps(0.25f);
    const __m512 m = _mm512_mul_ps(avz_sum4(v), quarter);
    __m512 as = _mm512_setzero_ps(), aq = _mm512_setzero_ps();
    for (int k = 0; k < 4; ++k) {
        const __m512 p = _mm512_sub_ps(v[k], m);
        as = _mm512_fmadd_ps(p, p, as);
        aq = _mm512_fmadd_ps(g[k], p, aq);
    }
    _mm512_storeu_ps(ss, as);
    _mm512_storeu_ps(q, aq);
    _mm512_storeu_ps(t, _mm512_add_ps(m, m));
    _mm512_storeu_ps(mu, m);
    _mm512_storeu_ps(gm, _mm512_mul_ps(avz_sum4(g), quarter));
}

/* b: the axis' added term kk for CoLU, the per-cone constant add for RCoLU (see avz_bwd_chunk) */
ALWAYS_INLINE void avz_bapply4(const float* x, const float* gr, float* gi, const int kind, const float* w,
                               const float* b, const float* coef) {
    __m512 v[4], g[4];
    avz_load4(v, x);
    avz_load4(g, gr);
    const __m512 bw = _mm512_loadu_ps(w), bc = _mm512_loadu_ps(coef), bb = _mm512_loadu_ps(b);
    if (kind == 0) {
        /* the axis gets g_a + k, the section w g - coef x (as cone_bwd) */
        g[0] = _mm512_add_ps(g[0], bb);
        for (int k = 1; k < 4; ++k) g[k] = _mm512_fnmadd_ps(bc, v[k], _mm512_mul_ps(bw, g[k]));
    } else {
        for (int k = 0; k < 4; ++k) g[k] = _mm512_fnmadd_ps(bc, v[k], _mm512_fmadd_ps(bw, g[k], bb));
    }
    avz_store4(gi, g);
}

ALWAYS_INLINE void avz_bstats8(const float* x, const float* gr, const int kind, float* t, float* ss, float* q,
                               float* mu, float* gm) {
    __m512 u[8], e[8], sq[8], gx[8];
    for (int i = 0; i < 8; ++i) {
        u[i] = _mm512_loadu_ps(x + 16 * i);
        e[i] = _mm512_loadu_ps(gr + 16 * i);
    }
    if (kind == 0) {
        for (int i = 0; i < 8; ++i) {
            sq[i] = _mm512_maskz_mul_ps(AVZ_SECS8, u[i], u[i]);
            gx[i] = _mm512_maskz_mul_ps(AVZ_SECS8, e[i], u[i]);
        }
        _mm512_storeu_ps(ss, avz_reduce8(sq));
        _mm512_storeu_ps(q, avz_reduce8(gx));
        _mm512_storeu_ps(t, avz_axes8(u));
        return;
    }
    const __m512 eighth = _mm512_set1_ps(0.125f);
    const __m512 m = _mm512_mul_ps(avz_reduce8(u), eighth);
    for (int i = 0; i < 8; ++i) {
        const __m512 p = _mm512_sub_ps(u[i], avz_spread8(m, i));
        sq[i] = _mm512_mul_ps(p, p);
        gx[i] = _mm512_mul_ps(e[i], p);
    }
    _mm512_storeu_ps(ss, avz_reduce8(sq));
    _mm512_storeu_ps(q, avz_reduce8(gx));
    _mm512_storeu_ps(t, _mm512_mul_ps(m, _mm512_set1_ps(sqrtf(8.0f))));
    _mm512_storeu_ps(mu, m);
    _mm512_storeu_ps(gm, _mm512_mul_ps(avz_reduce8(e), eighth));
}

ALWAYS_INLINE void avz_bapply8(const float* x, const float* gr, float* gi, const int kind, const float* w,
                               const float* b, const float* coef) {
    const __m512 bw = _mm512_loadu_ps(w), bc = _mm512_loadu_ps(coef), bb = _mm512_loadu_ps(b);
    for (int i = 0; i < 8; ++i) {
        const __m512 u = _mm512_loadu_ps(x + 16 * i), e = _mm512_loadu_ps(gr + 16 * i);
        if (kind == 0) {
            const __m512 sec = _mm512_fnmadd_ps(avz_spread8(bc, i), u, _mm512_mul_ps(avz_spread8(bw, i), e));
            _mm512_storeu_ps(gi + 16 * i, _mm512_mask_add_ps(sec, AVZ_AXES8, e, avz_spread8(bb, i)));
        } else {
            _mm512_storeu_ps(gi + 16 * i, _mm512_fnmadd_ps(avz_spread8(bc, i), u,
                                                           _mm512_fmadd_ps(avz_spread8(bw, i), e, avz_spread8(bb, i))));
        }
    }
}

/* nb <= AVZ_CHUNK blocks of 16 cones of S = 4 or 8 floats */
ALWAYS_INLINE void avz_bwd_chunk(const float* x, const float* gr, float* gi, const int nb, const i64 S,
                                 const int kind, const int sc, const float eps) {
    enum { N = 16 * AVZ_CHUNK };
    float t[N], ss[N], q[N], mu[N], gm[N], w[N], b[N], coef[N];
    for (int j = 0; j < nb; ++j) {
        const i64 o = j * 16 * S;
        const int c = 16 * j;
        blk_prefetch(x + o, 16 * S);
        blk_prefetch(gr + o, 16 * S);
        if (S == 4) avz_bstats4(x + o, gr + o, kind, t + c, ss + c, q + c, mu + c, gm + c);
        else avz_bstats8(x + o, gr + o, kind, t + c, ss + c, q + c, mu + c, gm + c);
    }
    if (kind == 0) {
        _Pragma("omp simd") for (int j = 0; j < 16 * nb; ++j) bwd_scalars_f32(ss[j], q[j], t[j], eps, sc, w + j, b + j, coef + j);
    } else {
        const float inv_rs = S == 4 ? 0.5f : 1.0f / sqrtf(8.0f);
        /* as cone_bwd */
        _Pragma("omp simd") for (int j = 0; j < 16 * nb; ++j) {
            float k;
            bwd_scalars_f32(ss[j], q[j], t[j], eps, sc, w + j, &k, coef + j);
            b[j] = gm[j] + k * inv_rs - w[j] * gm[j] + coef[j] * mu[j];
        }
    }
    for (int j = 0; j < nb; ++j) {
        const i64 o = j * 16 * S;
        const int c = 16 * j;
        if (S == 4) avz_bapply4(x + o, gr + o, gi + o, kind, w + c, b + c, coef + c);
        else avz_bapply8(x + o, gr + o, gi + o, kind, w + c, b + c, coef + c);
    }
}

/* The S = 16 backward keeps x, g and two sets of products, 64 vectors for 32
 * registers, and its 512-bit version spilled and measured slower on streamed
 * tensors than the AVX2 blocks; it runs those, two per block of 16 cones. */
ALWAYS_INLINE void avz_bwd16_chunk(const float* x, const float* gr, float* gi, const int nb, const i64 S,
                                   const int kind, const int sc, const float eps) {
    avx_bwd_chunk(x, gr, gi, 2 * nb, S, kind, sc, eps);
}
#endif /* COLU_AVX512 */

/* n cones: whole blocks of BN cones in parallel, the last n % BN cones
 * through cone_fwd/cone_bwd. Tensors of at most CHUNKED_MAX floats (which
 * stay in L2) run BLK_CHUNK (BLK_CHUNK_BWD) blocks per call of BLK_FWD
 * (BLK_BWD) where the blocks are split into phases (avz_fwd_chunk,
 * avz_bwd_chunk): 4 where the per-cone chain is long (S = 4, soft and firm),
 * 2 for the hard forward of S = 8, 16, whose blocks are limited by their
 * permutes rather than by latency. Larger tensors run one block per call:
 * kernel_ab.py A/B runs on (2048, 1024) and (4096, 1024) measured chunks
 * 5-110% slower there (most for the S = 4 backward) against 7-19% faster on
 * (64, 512) for soft S = 4, 16 and the S = 8 backward. The soft and firm
 * forward of S = 4, 8 is the exception, chunked at every size: 10-16% faster
 * on an L3-resident (2048, 1024) and no slower when streaming (4096, 1024),
 * where for S = 16 chunks cost 7-11%. */
#define CHUNKED_MAX (128 * 1024)
#define BLK_CHUNK(BN, SS, SC) ((BN) != 16 ? 1 : ((SS) == 4 || (SC) != 0) ? 4 : 2)
#define BLK_CHUNK_BWD(BN, SS) ((BN) == 16 && (SS) <= 8 ? 4 : 1)
#define AVX_LOOPS(NAME, SS, KIND, SC, BLK_FWD, BLK_BWD, BN)                                                                     \
    static __attribute__((noinline)) void avx_fwd_##NAME(const float* restrict x, float* restrict y,       \
                                                         const i64 n, const colu_cfg* c, const int nt) {   \
        const float eps = (float)c->eps;                                                                 \
        const i64 nblk = n / (BN), step = (BN) * (SS);                                                     \
        PAR_SPANS(nblk, {                                                                                  \
            i64 b = lo;                                                                                    \
            if (((SC) != 0 && (SS) <= 8) || n * (SS) <= CHUNKED_MAX)                                       \
                for (; b + BLK_CHUNK(BN, SS, SC) <= hi; b += BLK_CHUNK(BN, SS, SC))                        \
                    BLK_FWD(x + b * step, y + b * step, BLK_CHUNK(BN, SS, SC), SS, KIND, SC, eps);         \
            for (; b < hi; ++b) BLK_FWD(x + b * step, y + b * step, 1, SS, KIND, SC, eps);                 \
        });                                                                                              \
        for (i64 i = nblk * (BN); i < n; ++i) cone_fwd_f32(x + i * (SS), y + i * (SS), SS, KIND, SC, 0, eps); \
    }                                                                                                    \
    static __attribute__((noinline)) void avx_bwd_##NAME(const float* restrict x, const float* restrict gr, \
                                                         float* restrict gi, const i64 n, const colu_cfg* c, \
                                                         const int nt) {                                 \
        const float eps = (float)c->eps;                                                                 \
        const i64 nblk = n / (BN), step = (BN) * (SS);                                                     \
        PAR_SPANS(nblk, {                                                                                  \
            i64 b = lo;                                                                                    \
            if (n * (SS) <= CHUNKED_MAX)                                                                   \
                for (; b + BLK_CHUNK_BWD(BN, SS) <= hi; b += BLK_CHUNK_BWD(BN, SS))                        \
                    BLK_BWD(x + b * step, gr + b * step, gi + b * step, BLK_CHUNK_BWD(BN, SS), SS, KIND, SC, eps); \
            for (; b < hi; ++b) BLK_BWD(x + b * step, gr + b * step, gi + b * step, 1, SS, KIND, SC, eps);   \
        });                                                                                              \
        for (i64 i = nblk * (BN); i < n; ++i)                                                               \
            cone_bwd_f32(x + i * (SS), gr + i * (SS), gi + i * (SS), SS, KIND, SC, 0, eps);              \
    }

/* S = 4, 8, 16 in AVX-512 blocks of 16 cones (S = 16 in AVX2 blocks of 8 without AVX-512); larger
 * multiples of 8 in AVX2 blocks with S read at run time */
#define AVX_KEYS(M, SN, SS, HIT, F, B, BN)                                                                     \
    M(SN, SS, HIT, 0, 0, F, B, BN) M(SN, SS, HIT, 0, 1, F, B, BN) M(SN, SS, HIT, 0, 2, F, B, BN)                 \
    M(SN, SS, HIT, 1, 0, F, B, BN) M(SN, SS, HIT, 1, 1, F, B, BN) M(SN, SS, HIT, 1, 2, F, B, BN)
#ifdef COLU_AVX512
#define AVX_KEYS_512(M)                                                 \
    AVX_KEYS(M, 4, 4, c->S == 4, avz_fwd_chunk, avz_bwd_chunk, 16)                \
    AVX_KEYS(M, 8, 8, c->S == 8, avz_fwd_chunk, avz_bwd_chunk, 16)                \
    AVX_KEYS(M, 16, 16, c->S == 16, avz_fwd_chunk, avz_bwd16_chunk, 16)
#else
#define AVX_KEYS_512(M) AVX_KEYS(M, 16, 16, c->S == 16, avx_fwd_chunk, avx_bwd_chunk, 8)
#endif
#define AVX_ALL(M)                                                      \
    AVX_KEYS_512(M)                                                     \
    AVX_KEYS(M, any, c->S, c->S % 8 == 0 && c->S >= 16, avx_fwd_chunk, avx_bwd_chunk, 8)
#define DEF_AVX(SN, SS, HIT, KIND, SC, F, B, BN) AVX_LOOPS(SN##_##KIND##_##SC, SS, KIND, SC, F, B, BN)
AVX_ALL(DEF_AVX)
#undef DEF_AVX

/* 1 where the AVX2 blocks took the call */
static int avx_fwd_range(const float* x, float* y, const i64 n, const colu_cfg* c, const int nt) {
    if (c->act != 0) return 0;
#define CASE(SN, SS, HIT, KIND, SC, F, B, BN)                                                               \
    if ((HIT) && c->kind == KIND && c->scaling == SC) {                                               \
        avx_fwd_##SN##_##KIND##_##SC(x, y, n, c, nt);                                               \
        return 1;                                                                                   \
    }
    AVX_ALL(CASE)
#undef CASE
    return 0;
}

static int avx_bwd_range(const float* x, const float* gr, float* gi, const i64 n, const colu_cfg* c, const int nt) {
    if (c->act != 0) return 0;
#define CASE(SN, SS, HIT, KIND, SC, F, B, BN)                                                               \
    if ((HIT) && c->kind == KIND && c->scaling == SC) {                                               \
        avx_bwd_##SN##_##KIND##_##SC(x, gr, gi, n, c, nt);                                          \
        return 1;                                                                                   \
    }
    AVX_ALL(CASE)
#undef CASE
    return 0;
}
#endif /* COLU_AVX2 */

#if SPECIALISE_S
#define DEF_FLAT(SS, KIND, SC) FLAT_LOOPS(SS##_##KIND##_##SC, SS, KIND, SC, 0)
FLAT_ALL(DEF_FLAT)
#undef DEF_FLAT
#endif

static void SFX(flat_fwd_range)(const T* restrict x, T* restrict y, const i64 n, const colu_cfg* c, const int nt) {
#ifdef COLU_AVX2
    if (avx_fwd_range(x, y, n, c, nt)) return;
#endif
#if SPECIALISE_S
#define CASE(SS, KIND, SC)                                                                  \
    if (c->act == 0 && c->S == SS && c->kind == KIND && c->scaling == SC) {                  \
        SFX(flat_fwd_##SS##_##KIND##_##SC)(x, y, n, c, nt);                                  \
        return;                                                                              \
    }
    FLAT_ALL(CASE)
#undef CASE
#endif
    SFX(flat_fwd_any)(x, y, n, c, nt);
}

static void SFX(flat_bwd_range)(const T* restrict x, const T* restrict gr, T* restrict gi, const i64 n,
                                const colu_cfg* c, const int nt) {
#ifdef COLU_AVX2
    if (avx_bwd_range(x, gr, gi, n, c, nt)) return;
#endif
#if SPECIALISE_S
#define CASE(SS, KIND, SC)                                                                  \
    if (c->act == 0 && c->S == SS && c->kind == KIND && c->scaling == SC) {                  \
        SFX(flat_bwd_##SS##_##KIND##_##SC)(x, gr, gi, n, c, nt);                             \
        return;                                                                              \
    }
    FLAT_ALL(CASE)
#undef CASE
#endif
    SFX(flat_bwd_any)(x, gr, gi, n, c, nt);
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
                const T t = mean[i] * rs;
                T kk;
                SFX(bwd_scalars)(nn[i], q[i], SFX(act)(t, act), eps, sc, w + i, &kk, coef + i);
                T gt = gmean[i] + kk * inv_rs;
                if (act) gt *= SFX(act_grad)(t, act);
                ga[i] = gt - w[i] * gmean[i];
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
        for (i64 i = 0; i < nb; ++i)
            SFX(bwd_scalars)(nn[i], q[i], SFX(act)(x[ao + i], act), eps, sc, w + i, ga + i, coef + i);
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
    if (inner == 1 && FLAT(c)) {
        SFX(flat_fwd_range)(x, y, outer * c->G, c, nt);
        return;
    }
    if (inner == 1) {
        PAR_SPANS(outer, for (i64 o = lo; o < hi; ++o) SFX(fwd_row)(x + o * C, y + o * C, c));
        return;
    }
    const i64 nblk = (inner + LANES - 1) / LANES;
    PAR_SPANS(outer * nblk, for (i64 b = lo; b < hi; ++b) {
        const i64 o = b / nblk, i0 = (b % nblk) * LANES;
        const i64 nb = inner - i0 < LANES ? inner - i0 : LANES;
        const i64 off = o * C * inner + i0;
        SFX(fwd_lanes)(x + off, y + off, inner, nb, c);
    });
}

void SFX(colu_backward)(const T* x, const T* g, T* gi, i64 outer, i64 C, i64 inner, const colu_cfg* c,
                        int nthreads) {
    const int nt = pick_threads(outer * C * inner, nthreads);
    if (inner == 1 && FLAT(c)) {
        SFX(flat_bwd_range)(x, g, gi, outer * c->G, c, nt);
        return;
    }
    if (inner == 1) {
        PAR_SPANS(outer, for (i64 o = lo; o < hi; ++o) SFX(bwd_row)(x + o * C, g + o * C, gi + o * C, c));
        return;
    }
    const i64 nblk = (inner + LANES - 1) / LANES;
    PAR_SPANS(outer * nblk, for (i64 b = lo; b < hi; ++b) {
        const i64 o = b / nblk, i0 = (b % nblk) * LANES;
        const i64 nb = inner - i0 < LANES ? inner - i0 : LANES;
        const i64 off = o * C * inner + i0;
        SFX(bwd_lanes)(x + off, g + off, gi + off, inner, nb, c);
    });
}

#endif
