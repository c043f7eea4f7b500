/* The hand-written vector blocks for the flat path (float32; kernel_body.h's
 * float32 instance includes this file where
 * the machine has AVX2 and FMA): the blocks themselves in kernel_avx2.h and
 * kernel_avx512.h, and here the parallel loops over them and the table of
 * which S each block takes. avx_fwd_range and avx_bwd_range return 0 for a
 * configuration no block takes, and the flat path goes on to the loops of
 * kernel_portable.h or the run-time loop. */
#include <immintrin.h>

#include "kernel_avx2.h"
#ifdef COLU_AVX512
#include "kernel_avx512.h"
#endif
#include "kernel_axes_first.h"

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
 * where for S = 16 chunks cost 7-11%. The AVX2 blocks of 8 cones of S = 4, 8
 * run AVX_CHUNK blocks per call under the same rules (their chains are as
 * long, for half as many cones); those of S >= 16 one, their sums being long
 * enough to cover the chain. */
#define CHUNKED_MAX (128 * 1024)
#define BLK_CHUNK(BN, SS, SC) ((BN) != 16 ? ((SS) <= 8 ? AVX_CHUNK : 1) : ((SS) == 4 || (SC) != COLU_SCALING_HARD) ? 4 : 2)
#define BLK_CHUNK_BWD(BN, SS) ((BN) == 16 && (SS) <= 8 ? 4 : (BN) == 8 && (SS) <= 8 ? AVX_CHUNK : 1)
#define AVX_LOOPS(FWD, BWD, SS, KIND, SC, ACT, BLK_FWD, BLK_BWD, BN)                                                   \
    static __attribute__((noinline)) void FWD(const float* restrict x, float* restrict y, const i64 n,             \
                                              const colu_cfg* c, const int nt) {                                   \
        const float eps = (float)c->eps;                                                                           \
        const i64 nblk = n / (BN), step = (BN) * (SS);                                                             \
        PAR_SPANS(nblk, {                                                                                          \
            i64 b = lo;                                                                                            \
            if (((SC) != COLU_SCALING_HARD && (SS) <= 8) || n * (SS) <= CHUNKED_MAX)                               \
                for (; b + BLK_CHUNK(BN, SS, SC) <= hi; b += BLK_CHUNK(BN, SS, SC))                                \
                    BLK_FWD(x + b * step, y + b * step, BLK_CHUNK(BN, SS, SC), SS, KIND, SC, ACT, eps);            \
            for (; b < hi; ++b) BLK_FWD(x + b * step, y + b * step, 1, SS, KIND, SC, ACT, eps);                    \
        });                                                                                                        \
        int over = 0;                                                                                              \
        for (i64 i = nblk * (BN); i < n; ++i) over |= cone_fwd_f32(x + i * (SS), y + i * (SS), SS, KIND, SC, ACT, eps); \
        if (over) note_overflow();                                                                                 \
    }                                                                                                              \
    static __attribute__((noinline)) void BWD(const float* restrict x, const float* restrict gr,                   \
                                              float* restrict gi, const i64 n, const colu_cfg* c, const int nt) {  \
        const float eps = (float)c->eps;                                                                           \
        const i64 nblk = n / (BN), step = (BN) * (SS);                                                             \
        PAR_SPANS(nblk, {                                                                                          \
            i64 b = lo;                                                                                            \
            if (n * (SS) <= CHUNKED_MAX)                                                                           \
                for (; b + BLK_CHUNK_BWD(BN, SS) <= hi; b += BLK_CHUNK_BWD(BN, SS))                                \
                    BLK_BWD(x + b * step, gr + b * step, gi + b * step, BLK_CHUNK_BWD(BN, SS), SS, KIND, SC, ACT,  \
                            eps);                                                                                  \
            for (; b < hi; ++b) BLK_BWD(x + b * step, gr + b * step, gi + b * step, 1, SS, KIND, SC, ACT, eps);    \
        });                                                                                                        \
        int over = 0;                                                                                              \
        for (i64 i = nblk * (BN); i < n; ++i)                                                                      \
            over |= cone_bwd_f32(x + i * (SS), gr + i * (SS), gi + i * (SS), SS, KIND, SC, ACT, eps);              \
        if (over) note_overflow();                                                                                 \
    }

/* The rows are COLU_AVX*_INSTANCES in kernel_instances.h: S = 4, 8, 16 in AVX-512 blocks of 16 cones (in AVX2
 * blocks of 8 without AVX-512); larger multiples of 8 in AVX2 blocks with S read at run time. A relu or silu axis
 * (S = 4, 8, 16) runs the AVX2 blocks on every machine: it changes only their per-cone scalar pass
 * (avx_fwd_scalars, avx_bwd_scalars) and a lane or two of the writes. */
#ifdef COLU_AVX512
#define AVX_ALL(M) COLU_AVX512_IDENTITY_INSTANCES(M) COLU_AVX2_WIDE_INSTANCES(M) COLU_AVX2_ACT_INSTANCES(M)
#else
#define AVX_ALL(M) COLU_AVX2_IDENTITY_INSTANCES(M) COLU_AVX2_WIDE_INSTANCES(M) COLU_AVX2_ACT_INSTANCES(M)
#endif
/* a row's SHAPE is several arguments: the second macro of each pair sees them apart */
#define DEF_AVX(FWD, BWD, SHAPE, KIND, SC, ACT) DEF_AVX_(FWD, BWD, SHAPE, KIND, SC, ACT)
#define DEF_AVX_(FWD, BWD, SS, HIT, F, B, BN, KIND, SC, ACT) \
    AVX_LOOPS(FWD, BWD, SS, COLU_KIND_##KIND, COLU_SCALING_##SC, COLU_ACT_##ACT, F, B, BN)
AVX_ALL(DEF_AVX)
#undef DEF_AVX
#undef DEF_AVX_

/* 1 where the vector blocks took the call */
static int avx_fwd_range(const float* x, float* y, const i64 n, const colu_cfg* c, const int nt) {
#define CASE(FWD, BWD, SHAPE, KIND, SC, ACT) CASE_(FWD, BWD, SHAPE, KIND, SC, ACT)
#define CASE_(FWD, BWD, SS, HIT, F, B, BN, KIND, SC, ACT)                              \
    if ((HIT) && c->kind == COLU_KIND_##KIND && c->scaling == COLU_SCALING_##SC &&     \
        c->act == COLU_ACT_##ACT) {                                                    \
        FWD(x, y, n, c, nt);                                                           \
        return 1;                                                                      \
    }
    AVX_ALL(CASE)
#undef CASE_
#undef CASE
    return 0;
}

static int avx_bwd_range(const float* x, const float* gr, float* gi, const i64 n, const colu_cfg* c, const int nt) {
#define CASE(FWD, BWD, SHAPE, KIND, SC, ACT) CASE_(FWD, BWD, SHAPE, KIND, SC, ACT)
#define CASE_(FWD, BWD, SS, HIT, F, B, BN, KIND, SC, ACT)                              \
    if ((HIT) && c->kind == COLU_KIND_##KIND && c->scaling == COLU_SCALING_##SC &&     \
        c->act == COLU_ACT_##ACT) {                                                    \
        BWD(x, gr, gi, n, c, nt);                                                      \
        return 1;                                                                      \
    }
    AVX_ALL(CASE)
#undef CASE_
#undef CASE
    return 0;
}
