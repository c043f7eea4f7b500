/* Fused CPU kernels for CoLU and RCoLU, forward and backward.
 *
 * Plain C with no torch headers, so that it needs only a C compiler; it is
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
 *    S = 4, 8, 16 without AVX-512), run a few blocks at a time (avz_fwd_chunk,
 *    avz_bwd_chunk, avx_fwd_chunk); see the comments above avz_transpose4,
 *    avz_reduce8, avz_fold16, avz_stats4 (kernel_avx512.h) and avx_stats8,
 *    avx_transpose4 (kernel_avx2.h).
 *    A relu/silu axis: with AVX2, S = 4, 8, 16 run the vector blocks, whose
 *    per-cone scalar pass applies phi and phi' (kernel_avx2.h). Otherwise
 *    CoLU runs the identity loops on a copy of a chunk of cones whose axes
 *    are activated first (exact: only the axis changes); RCoLU S = 4, 8 has
 *    loops with the scaling and axis activation read at run time
 *    (kernel_portable.h), other S the run-time loop.
 *  - rows (inner == 1, shared axis or axes_first layout): a row of C
 *    channels at a time, in blocks of NB cones: per-cone sums into small
 *    arrays, the per-cone scalars over those arrays, then the writes. For
 *    float32 with S in {3, 4, 8, 16} the sums and writes have S fixed and
 *    the scalars run in one of nine small loops, one per scaling and axis
 *    activation (split_fwd, split_bwd in kernel_body.h). With AVX2, the
 *    axes_first layout with S = 4 or a multiple of 8 runs blocks of 8 cones
 *    that read the sections as whole vectors (kernel_axes_first.h).
 *  - planes (inner > 1: NCHW with dim=1, or any dim with an inner size):
 *    each cone's plane a tile of pixels at a time, one pixel per vector lane
 *    and S unit-stride streams (kernel_planes.h).
 *
 * Only the hard, soft and firm scalings have loops of their own (OWN_LOOPS):
 * sqrt and log run on every path in the loops that read the scaling at run
 * time (on the float32 planes path, loops compiled apart from the three's:
 * SC_OWN).
 *
 * Channel maps (see colu/spec.py): cone g's axis is channel
 * axis_base + g * axis_step and its section channels sec_base + g * sec_step
 * + k, k < S - 1. grouped: (0, S, 1, S); axes_first: (0, 1, G, S - 1);
 * shared axis: (0, 0, 1, S - 1). RCoLU cones are channels g*S ... g*S+S-1.
 *
 * Files: this one holds what every path shares (threads, the exponential,
 * the entry points, float16/bfloat16 conversion) and instantiates
 * kernel_body.h, the paths above written once over a type T, for float32 and
 * float64. The float32 instance adds the per-ISA pieces: kernel_portable.h
 * (loops specialised per S for the compiler to vectorise, every machine),
 * kernel_vector.h (the hand-written blocks' loops and which S each takes)
 * with kernel_avx2.h and kernel_avx512.h (the blocks) and kernel_axes_first.h
 * (the axes_first rows). colu_abi.h is the
 * interface with Python: the argument block, the configuration and the
 * enum values, which colu/ops/abi.py mirrors.
 *
 * NaN handling: the clamps are written as comparisons that return r itself
 * when r is NaN (as torch.clamp does), never fmin/fmax, and the file must not
 * be built with -ffast-math / -ffinite-math-only.
 */

#include "colu_abi.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

typedef int64_t i64;

/* cones that are S contiguous channels: every RCoLU, and grouped CoLU without a shared axis */
#define FLAT(c) ((c)->kind == COLU_KIND_RCOLU || (!(c)->shared && (c)->axis_step == (c)->S))

/* the scalings that have loops of their own (specialised per S, the vector blocks, the rows' per-cone
 * loops); sqrt and log run only where the scaling is read at run time, which keeps the build short */
#define OWN_LOOPS(sc) ((sc) == COLU_SCALING_HARD || (sc) == COLU_SCALING_SOFT || (sc) == COLU_SCALING_FIRM)

/* The scaling as given to the loops that read it at run time and vectorise by computing every weighting
 * and selecting one (the planes' per-pixel scalars, RCoLU's relu/silu loops): one of the three above, a
 * range the compiler sees, so that sqrt's and log's branches are not in them (log1p is a call, which keeps
 * the vectoriser out of any loop it is in). sqrt and log take the float32 planes loops compiled with
 * SC_SQRT_LOG and, on the flat path, the run-time loop, which vectorises within a cone rather than across
 * cones. */
#define SC_OWN(c)                                                                                   \
    ((int)(c)->scaling == COLU_SCALING_SOFT   ? COLU_SCALING_SOFT                                   \
     : (int)(c)->scaling == COLU_SCALING_FIRM ? COLU_SCALING_FIRM                                   \
                                              : COLU_SCALING_HARD)
#define SC_SQRT_LOG(c) ((int)(c)->scaling == COLU_SCALING_SQRT ? COLU_SCALING_SQRT : COLU_SCALING_LOG)

/* the scalar helpers must inline into every specialised loop, or the loops
 * stop vectorising once the compiler's inlining budget for the file runs out */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Work is split into chunks of at least GRAIN elements, one per thread, as
 * ATen splits element-wise ops (threads = min(nthreads, ceil(numel/GRAIN))):
 * a second thread only pays off once each has that much to do. ATen's grain
 * is 32768 elements, sized for ops as cheap as ReLU; a cone costs a square
 * root, a division and (soft, firm) an exponential, several times ReLU's
 * work per element, so a quarter of that already pays: at (64, 512) two
 * threads took a third off the kernel's time (measured 6.4 -> 4.9 us hard,
 * 9.5 -> 6.3 us soft, forward, against ReLU's 3.2 us). */
#define GRAIN 8192

int colu_abi_version(void) { return COLU_ABI_VERSION; }

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
 * sigmoid; 2^n is written into the exponent bits.
 *
 * It saturates as expf does, so that sigmoid and silu give torch's results
 * on huge and infinite arguments (silu(-1e38) = -0, silu(-inf) = NaN,
 * sigmoid(+-1e38) exactly 1 or 0 and its slope 0), at no cost: the argument
 * is clamped to [-88, 89], where the ends round to n = -127 and n = 128, and
 * those two exponents assemble to the bits of 0 and of +inf, so p * 2^n is
 * 0 or +inf there. In between the results are expf's within ~2 ulp, except
 * where expf is subnormal or near FLT_MAX: 0 for x in [-88.38, -87.68]
 * (expf < 1.2e-38) and +inf for x in [88.38, 88.72] (expf > 2.4e38), where a
 * sigmoid differs from 0 or 1 by less than 1e-38 either way. (A clamp to
 * the finite range, as this once had, made exp(1e38) = exp(88) and
 * silu(-1e38) = -0.61.) NaN passes through the comparisons and the
 * polynomial. */
static inline float colu_expf(float x) {
    /* two selects, each comparison made whatever the other gives: a comparison inside the other's branch
     * may trap (on NaN) when made unconditionally, so the compiler would keep the branch, and a loop with a
     * branch does not vectorise */
    x = x < -88.0f ? -88.0f : x;
    x = x > 89.0f ? 89.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    const float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f + r * 0.0013888889f)))));
    union { int32_t i; float f; } u;
    u.i = (int32_t)((uint32_t)((int32_t)n + 127) << 23);
    return p * u.f;
}

#define NB 64

/* Sections whose squared norm overflows float32 (see too_big in kernel_body.h). The loops that find one
 * bump this count once each; colu_run and colu_run_half compare it before and after their float32 call
 * and, where it moved, compute the whole call again in float64 (rerun_f64). A count rather than a flag:
 * calls on other threads run meanwhile, and another call's overflow can only make this one compute again
 * (exactly), never hide its own. A relaxed atomic suffices: the end of a parallel region is a barrier. */
static unsigned long overflows;
static void note_overflow(void) { __atomic_fetch_add(&overflows, 1, __ATOMIC_RELAXED); }
static unsigned long overflow_count(void) { return __atomic_load_n(&overflows, __ATOMIC_RELAXED); }

/* The hand-written vector blocks this build can run (float32 only: only
 * kernel_body.h's float32 instance includes them). COLU_NO_AVX512 builds an
 * AVX-512 machine's library with the AVX2 blocks, for A/B runs
 * (benchmarks/kernel_ab.py cpu_kernel.c@-DCOLU_NO_AVX512). */
#if defined(__AVX2__) && defined(__FMA__)
#define COLU_AVX2 1
#if defined(__AVX512F__) && !defined(COLU_NO_AVX512)
#define COLU_AVX512 1
#endif
#endif

#include "kernel_instances.h"

#define T float
#define SFX(name) name##_f32
#define SQRT sqrtf
#define EXP colu_expf
#define LOG1P log1pf
#define SPECIALISE_S 1
#define NORM_CHECKED 1
#define NORM_MAX FLT_MAX
#include "kernel_body.h"
#undef T
#undef SFX
#undef SQRT
#undef EXP
#undef LOG1P
#undef SPECIALISE_S
#undef NORM_CHECKED
#undef NORM_MAX

#define T double
#define SFX(name) name##_f64
#define SQRT sqrt
#define EXP exp
#define LOG1P log1p
#define SPECIALISE_S 0
#define NORM_CHECKED 0
#define NORM_MAX DBL_MAX
#include "kernel_body.h"
#undef T
#undef SFX
#undef SQRT
#undef EXP
#undef LOG1P
#undef SPECIALISE_S
#undef NORM_CHECKED
#undef NORM_MAX

static int rerun_f64(const i64* a, int src);
enum { SRC_F32, SRC_F16, SRC_BF16 }; /* the dtype rerun_f64 reads and writes */

/* One entry point that takes its arguments packed in an int64 array (the
 * slots are enum colu_arg in colu_abi.h). ctypes converts each argument of a
 * call separately, which for the per-argument entry points above costs a
 * microsecond or two per call; a single pointer to a reused buffer costs a
 * fraction of that. Returns 1, or 0 where a float32 call whose norms
 * overflowed found no memory to be computed again in float64. */
int colu_run(const i64* a) {
    const colu_cfg* c = (const colu_cfg*)(intptr_t)a[COLU_ARG_CFG];
    const int nt = (int)a[COLU_ARG_THREADS];
    const i64 outer = a[COLU_ARG_OUTER], C = a[COLU_ARG_C], inner = a[COLU_ARG_INNER];
    const void *x = (const void*)(intptr_t)a[COLU_ARG_X], *g = (const void*)(intptr_t)a[COLU_ARG_GRAD];
    void* out = (void*)(intptr_t)a[COLU_ARG_OUT];
    if (a[COLU_ARG_DTYPE]) {
        if (a[COLU_ARG_BACKWARD]) colu_backward_f64(x, g, out, outer, C, inner, c, nt);
        else colu_forward_f64(x, out, outer, C, inner, c, nt);
        return 1;
    }
    const unsigned long seen = overflow_count();
    if (a[COLU_ARG_BACKWARD]) colu_backward_f32(x, g, out, outer, C, inner, c, nt);
    else colu_forward_f32(x, out, outer, C, inner, c, nt);
    return overflow_count() == seen || rerun_f64(a, SRC_F32);
}

/* ------------------------------------------------- float16 / bfloat16 */
/* Half tensors with inner == 1 are converted a chunk at a time (of cones on
 * the flat path, of whole rows for the axes_first layout and a shared axis)
 * into float32 buffers on the stack, run through the float32 loops above
 * (vector blocks included) and rounded back to nearest even, as torch
 * rounds: one read and one write of the half tensor, where upcasting around
 * the kernel costs two more passes over memory and two allocations. Planes
 * (inner > 1) return 0 and Python upcasts instead. */
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

/* 1 where colu_run_half takes tensors of this configuration with inner == 1: cones of S contiguous
 * channels a chunk of cones at a time (S up to HCHUNK), other CoLU layouts (axes_first, a shared axis) a
 * chunk of whole rows at a time (a row is needed whole: its axes and sections are apart, and a shared
 * axis gathers every cone's gradient) */
int colu_half_ok(const colu_cfg* c, const int bf16) {
#ifndef COLU_HAVE_F16
    if (!bf16) return 0;
#else
    (void)bf16;
#endif
    return FLAT(c) ? c->S <= HCHUNK : c->kind == COLU_KIND_COLU;
}

/* rows of C channels, HCHUNK / C at a time (one at a time in heap buffers where a row is longer), through
 * the float32 rows loops on one thread each */
static int run_half_rows(const uint16_t* x, const uint16_t* g, uint16_t* out, const i64 outer, const i64 C,
                         const colu_cfg* c, const int backward, const int bf16, const int nthreads) {
    const i64 per = C <= HCHUNK ? HCHUNK / C : 1, nchunks = (outer + per - 1) / per;
    const int nt = pick_threads(outer * C, nthreads);
    int failed = 0;
    PAR_SPANS(nchunks, {
        float sx[HCHUNK], sg[HCHUNK], so[HCHUNK];
        float *xf = sx, *gf = sg, *of = so;
        if (C > HCHUNK) {
            xf = malloc(3 * (size_t)C * sizeof(float));
            if (xf == NULL) {
                __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
            } else {
                gf = xf + C;
                of = gf + C;
            }
        }
        for (i64 k = lo; k < hi && xf != NULL; ++k) {
            const i64 r0 = k * per, rows = outer - r0 < per ? outer - r0 : per, len = rows * C;
            half_to_f32(x + r0 * C, xf, len, bf16);
            if (backward) {
                half_to_f32(g + r0 * C, gf, len, bf16);
                colu_backward_f32(xf, gf, of, rows, C, 1, c, 1);
            } else {
                colu_forward_f32(xf, of, rows, C, 1, c, 1);
            }
            f32_to_half(of, out + r0 * C, len, bf16);
        }
        if (C > HCHUNK) free(xf);
    });
    return !failed;
}

/* The argument block of colu_run, for float16 (slot COLU_ARG_DTYPE = 0) or bfloat16 (1) tensors;
 * returns 1 where it ran, 0 where Python must upcast instead (inner > 1, contiguous cones over HCHUNK
 * channels, float16 without F16C, or no memory for a row's buffers) */
static int run_half(const i64* a) {
    const colu_cfg* c = (const colu_cfg*)(intptr_t)a[COLU_ARG_CFG];
    const int backward = (int)a[COLU_ARG_BACKWARD], bf16 = (int)a[COLU_ARG_DTYPE];
    const i64 outer = a[COLU_ARG_OUTER], C = a[COLU_ARG_C], inner = a[COLU_ARG_INNER];
    if (inner != 1 || !colu_half_ok(c, bf16)) return 0;
    const uint16_t *x = (const uint16_t*)(intptr_t)a[COLU_ARG_X], *g = (const uint16_t*)(intptr_t)a[COLU_ARG_GRAD];
    uint16_t* out = (uint16_t*)(intptr_t)a[COLU_ARG_OUT];
    if (!FLAT(c)) return run_half_rows(x, g, out, outer, C, c, backward, bf16, (int)a[COLU_ARG_THREADS]);
    const i64 S = c->S, per = HCHUNK / S, n = outer * c->G, nchunks = (n + per - 1) / per;
    const int nt = pick_threads(outer * C, (int)a[COLU_ARG_THREADS]);
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

/* The argument block of colu_run, for float16 (slot COLU_ARG_DTYPE = 0) or bfloat16 (1) tensors;
 * returns 1 where it ran, 0 where Python must upcast instead (inner > 1, contiguous cones over HCHUNK
 * channels, float16 without F16C, or no memory for a row's buffers or for computing a call whose norms
 * overflowed float32 again in float64) */
int colu_run_half(const i64* a) {
    const unsigned long seen = overflow_count();
    if (!run_half(a)) return 0;
    return overflow_count() == seen || rerun_f64(a, a[COLU_ARG_DTYPE] ? SRC_BF16 : SRC_F16);
}

/* ------------------------------------------------ float32 norm overflow */
/* A call whose float32 squared norms overflowed, computed again whole in float64 (whose squares of float32
 * values never overflow) and rounded back: RCHUNK values of outer rows at a time (at least one row)
 * through heap buffers, so a call of any size needs a bounded, small amount of memory. Rare (section
 * values above about 1e19, or infinite inputs), so the conversions are plain loops. Returns 0 where the
 * buffers could not be allocated. */
#define RCHUNK 32768

static void load_f64(const void* p, double* d, const i64 n, const int src) {
    if (src == SRC_F32)
        for (i64 i = 0; i < n; ++i) d[i] = ((const float*)p)[i];
    else if (src == SRC_BF16)
        for (i64 i = 0; i < n; ++i) d[i] = bf16_to_f32(((const uint16_t*)p)[i]);
#ifdef COLU_HAVE_F16
    else
        for (i64 i = 0; i < n; ++i) d[i] = _cvtsh_ss(((const uint16_t*)p)[i]);
#endif
}

static void store_f64(const double* d, void* p, const i64 n, const int src) {
    if (src == SRC_F32)
        for (i64 i = 0; i < n; ++i) ((float*)p)[i] = (float)d[i];
    else if (src == SRC_BF16)
        for (i64 i = 0; i < n; ++i) ((uint16_t*)p)[i] = f32_to_bf16((float)d[i]);
#ifdef COLU_HAVE_F16
    else
        for (i64 i = 0; i < n; ++i) ((uint16_t*)p)[i] = _cvtss_sh((float)d[i], _MM_FROUND_TO_NEAREST_INT);
#endif
}

static int rerun_f64(const i64* a, const int src) {
    const colu_cfg* c = (const colu_cfg*)(intptr_t)a[COLU_ARG_CFG];
    const int backward = (int)a[COLU_ARG_BACKWARD], nt = (int)a[COLU_ARG_THREADS];
    const i64 outer = a[COLU_ARG_OUTER], C = a[COLU_ARG_C], inner = a[COLU_ARG_INNER];
    const char *x = (const char*)(intptr_t)a[COLU_ARG_X], *g = (const char*)(intptr_t)a[COLU_ARG_GRAD];
    char* out = (char*)(intptr_t)a[COLU_ARG_OUT];
    const i64 row = C * inner, per = row < RCHUNK ? RCHUNK / row : 1, len = per * row;
    const i64 size = src == SRC_F32 ? 4 : 2;
    double* xd = malloc(3 * (size_t)len * sizeof(double));
    if (xd == NULL) return 0;
    double *gd = xd + len, *od = gd + len;
    for (i64 r0 = 0; r0 < outer; r0 += per) {
        const i64 rows = outer - r0 < per ? outer - r0 : per, n = rows * row, at = r0 * row * size;
        load_f64(x + at, xd, n, src);
        if (backward) {
            load_f64(g + at, gd, n, src);
            colu_backward_f64(xd, gd, od, rows, C, inner, c, nt);
        } else {
            colu_forward_f64(xd, od, rows, C, inner, c, nt);
        }
        store_f64(od, out + at, n, src);
    }
    free(xd);
    return 1;
}
