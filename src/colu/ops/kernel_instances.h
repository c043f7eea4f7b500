/* kernel_instances.h: every specialised loop of the CPU kernel, one row each, under the names it is built with.
 *
 * Each family below is an X-macro: the file that builds the family defines one forward and one backward
 * function per row, named as the row names them (a grep for a symbol in a profile or a debugger lands on its
 * row), and the family's dispatch function tries the rows in the order listed. A configuration that no row
 * takes runs the family's run-time loop (`flat_any_*`, `plane_any_*`, the generic rows loops), which is
 * correct for every S, kind, scaling, axis activation and dtype. Every row is float32 (only kernel_body.h's
 * float32 instance specialises); the run-time loops are built for float64 too, with `_f64` appended.
 *
 * The order in which the paths are chosen, and how to add a row, are in docs/kernels.md. */

/* Rows path, the per-cone scalars of a block of cones (kernel_body.h, pick_mids): X(fwd, bwd, SCALING, AXIS_ACT) */
#define COLU_MID_INSTANCES(X)                                                                                         \
    X(mid_hard_identity_fwd, mid_hard_identity_bwd, HARD, IDENTITY)                                                   \
    X(mid_hard_relu_fwd, mid_hard_relu_bwd, HARD, RELU)                                                               \
    X(mid_hard_silu_fwd, mid_hard_silu_bwd, HARD, SILU)                                                               \
    X(mid_soft_identity_fwd, mid_soft_identity_bwd, SOFT, IDENTITY)                                                   \
    X(mid_soft_relu_fwd, mid_soft_relu_bwd, SOFT, RELU)                                                               \
    X(mid_soft_silu_fwd, mid_soft_silu_bwd, SOFT, SILU)                                                               \
    X(mid_firm_identity_fwd, mid_firm_identity_bwd, FIRM, IDENTITY)                                                   \
    X(mid_firm_relu_fwd, mid_firm_relu_bwd, FIRM, RELU)                                                               \
    X(mid_firm_silu_fwd, mid_firm_silu_bwd, FIRM, SILU)

/* Rows path, a row of cones whose sections follow each other, S fixed (kernel_body.h, split_range): X(fwd, bwd, S) */
#define COLU_SPLIT_INSTANCES(X)                                                                                       \
    X(split_3_fwd, split_3_bwd, 3)                                                                                    \
    X(split_4_fwd, split_4_bwd, 4)                                                                                    \
    X(split_8_fwd, split_8_bwd, 8)                                                                                    \
    X(split_16_fwd, split_16_bwd, 16)

/* Rows path, AVX2 blocks for the axes_first layout (kernel_axes_first.h, axf_range): X(fwd, bwd, S or 0, S at run
 * time, HIT: the condition on S) */
#define COLU_AXF_INSTANCES(X)                                                                                         \
    X(axf_4_fwd, axf_4_bwd, 4, 4, S == 4)                                                                             \
    X(axf_8_fwd, axf_8_bwd, 8, 8, S == 8)                                                                             \
    X(axf_wide_fwd, axf_wide_bwd, 0, c->S, S % 8 == 0)

/* Flat path, identity axis, loops for the compiler to vectorise (kernel_portable.h, flat_*_range): X(fwd, bwd, S,
 * KIND, SCALING). S = 3 on every machine: */
#define COLU_FLAT_S3_INSTANCES(X)                                                                                     \
    X(flat_3_colu_hard_fwd, flat_3_colu_hard_bwd, 3, COLU, HARD)                                                      \
    X(flat_3_colu_soft_fwd, flat_3_colu_soft_bwd, 3, COLU, SOFT)                                                      \
    X(flat_3_colu_firm_fwd, flat_3_colu_firm_bwd, 3, COLU, FIRM)                                                      \
    X(flat_3_rcolu_hard_fwd, flat_3_rcolu_hard_bwd, 3, RCOLU, HARD)                                                   \
    X(flat_3_rcolu_soft_fwd, flat_3_rcolu_soft_bwd, 3, RCOLU, SOFT)                                                   \
    X(flat_3_rcolu_firm_fwd, flat_3_rcolu_firm_bwd, 3, RCOLU, FIRM)

/* S = 4, 8, 16 only where the vector blocks below are not built (no AVX2): */
#define COLU_FLAT_PORTABLE_INSTANCES(X)                                                                               \
    X(flat_4_colu_hard_fwd, flat_4_colu_hard_bwd, 4, COLU, HARD)                                                      \
    X(flat_4_colu_soft_fwd, flat_4_colu_soft_bwd, 4, COLU, SOFT)                                                      \
    X(flat_4_colu_firm_fwd, flat_4_colu_firm_bwd, 4, COLU, FIRM)                                                      \
    X(flat_4_rcolu_hard_fwd, flat_4_rcolu_hard_bwd, 4, RCOLU, HARD)                                                   \
    X(flat_4_rcolu_soft_fwd, flat_4_rcolu_soft_bwd, 4, RCOLU, SOFT)                                                   \
    X(flat_4_rcolu_firm_fwd, flat_4_rcolu_firm_bwd, 4, RCOLU, FIRM)                                                   \
    X(flat_8_colu_hard_fwd, flat_8_colu_hard_bwd, 8, COLU, HARD)                                                      \
    X(flat_8_colu_soft_fwd, flat_8_colu_soft_bwd, 8, COLU, SOFT)                                                      \
    X(flat_8_colu_firm_fwd, flat_8_colu_firm_bwd, 8, COLU, FIRM)                                                      \
    X(flat_8_rcolu_hard_fwd, flat_8_rcolu_hard_bwd, 8, RCOLU, HARD)                                                   \
    X(flat_8_rcolu_soft_fwd, flat_8_rcolu_soft_bwd, 8, RCOLU, SOFT)                                                   \
    X(flat_8_rcolu_firm_fwd, flat_8_rcolu_firm_bwd, 8, RCOLU, FIRM)                                                   \
    X(flat_16_colu_hard_fwd, flat_16_colu_hard_bwd, 16, COLU, HARD)                                                   \
    X(flat_16_colu_soft_fwd, flat_16_colu_soft_bwd, 16, COLU, SOFT)                                                   \
    X(flat_16_colu_firm_fwd, flat_16_colu_firm_bwd, 16, COLU, FIRM)                                                   \
    X(flat_16_rcolu_hard_fwd, flat_16_rcolu_hard_bwd, 16, RCOLU, HARD)                                                \
    X(flat_16_rcolu_soft_fwd, flat_16_rcolu_soft_bwd, 16, RCOLU, SOFT)                                                \
    X(flat_16_rcolu_firm_fwd, flat_16_rcolu_firm_bwd, 16, RCOLU, FIRM)

/* Flat path, RCoLU with a relu or silu axis, the scaling and the axis activation read at run time
 * (kernel_portable.h): X(fwd, bwd, S) */
#define COLU_FLAT_RCOLU_ACT_INSTANCES(X)                                                                              \
    X(flat_4_rcolu_act_fwd, flat_4_rcolu_act_bwd, 4)                                                                  \
    X(flat_8_rcolu_act_fwd, flat_8_rcolu_act_bwd, 8)

/* Flat path, hand-written vector blocks, float32 with AVX2 and FMA (kernel_vector.h, avx_*_range), tried in the
 * order listed: X(fwd, bwd, SHAPE, KIND, SCALING, AXIS_ACT). A SHAPE is the block's S (c->S: read at run time), the
 * condition on S that selects it, its forward and backward chunk functions and its cones per block: */
#define AVX2_S4 4, c->S == 4, avx_fwd4_chunk, avx_bwd4_chunk, 8
#define AVX2_S8 8, c->S == 8, avx_fwd_chunk, avx_bwd_phased, 8
#define AVX2_S16 16, c->S == 16, avx_fwd_chunk, avx_bwd_chunk, 8
#define AVX2_WIDE c->S, c->S % 8 == 0 && c->S >= 16, avx_fwd_chunk, avx_bwd_chunk, 8
#define AVX512_S4 4, c->S == 4, avz_fwd_chunk, avz_bwd_chunk, 16
#define AVX512_S8 8, c->S == 8, avz_fwd_chunk, avz_bwd_chunk, 16
#define AVX512_S16 16, c->S == 16, avz_fwd_chunk, avz_bwd16_chunk, 16
/* The identity axis, S = 4, 8, 16, in AVX-512 blocks of 16 cones where the machine has them: */
#define COLU_AVX512_IDENTITY_INSTANCES(X)                                                                             \
    X(avz_4_colu_hard_identity_fwd, avz_4_colu_hard_identity_bwd, AVX512_S4, COLU, HARD, IDENTITY)                    \
    X(avz_4_colu_soft_identity_fwd, avz_4_colu_soft_identity_bwd, AVX512_S4, COLU, SOFT, IDENTITY)                    \
    X(avz_4_colu_firm_identity_fwd, avz_4_colu_firm_identity_bwd, AVX512_S4, COLU, FIRM, IDENTITY)                    \
    X(avz_4_rcolu_hard_identity_fwd, avz_4_rcolu_hard_identity_bwd, AVX512_S4, RCOLU, HARD, IDENTITY)                 \
    X(avz_4_rcolu_soft_identity_fwd, avz_4_rcolu_soft_identity_bwd, AVX512_S4, RCOLU, SOFT, IDENTITY)                 \
    X(avz_4_rcolu_firm_identity_fwd, avz_4_rcolu_firm_identity_bwd, AVX512_S4, RCOLU, FIRM, IDENTITY)                 \
    X(avz_8_colu_hard_identity_fwd, avz_8_colu_hard_identity_bwd, AVX512_S8, COLU, HARD, IDENTITY)                    \
    X(avz_8_colu_soft_identity_fwd, avz_8_colu_soft_identity_bwd, AVX512_S8, COLU, SOFT, IDENTITY)                    \
    X(avz_8_colu_firm_identity_fwd, avz_8_colu_firm_identity_bwd, AVX512_S8, COLU, FIRM, IDENTITY)                    \
    X(avz_8_rcolu_hard_identity_fwd, avz_8_rcolu_hard_identity_bwd, AVX512_S8, RCOLU, HARD, IDENTITY)                 \
    X(avz_8_rcolu_soft_identity_fwd, avz_8_rcolu_soft_identity_bwd, AVX512_S8, RCOLU, SOFT, IDENTITY)                 \
    X(avz_8_rcolu_firm_identity_fwd, avz_8_rcolu_firm_identity_bwd, AVX512_S8, RCOLU, FIRM, IDENTITY)                 \
    X(avz_16_colu_hard_identity_fwd, avz_16_colu_hard_identity_bwd, AVX512_S16, COLU, HARD, IDENTITY)                 \
    X(avz_16_colu_soft_identity_fwd, avz_16_colu_soft_identity_bwd, AVX512_S16, COLU, SOFT, IDENTITY)                 \
    X(avz_16_colu_firm_identity_fwd, avz_16_colu_firm_identity_bwd, AVX512_S16, COLU, FIRM, IDENTITY)                 \
    X(avz_16_rcolu_hard_identity_fwd, avz_16_rcolu_hard_identity_bwd, AVX512_S16, RCOLU, HARD, IDENTITY)              \
    X(avz_16_rcolu_soft_identity_fwd, avz_16_rcolu_soft_identity_bwd, AVX512_S16, RCOLU, SOFT, IDENTITY)              \
    X(avz_16_rcolu_firm_identity_fwd, avz_16_rcolu_firm_identity_bwd, AVX512_S16, RCOLU, FIRM, IDENTITY)

/* ... in AVX2 blocks of 8 cones otherwise: */
#define COLU_AVX2_IDENTITY_INSTANCES(X)                                                                               \
    X(avx_4_colu_hard_identity_fwd, avx_4_colu_hard_identity_bwd, AVX2_S4, COLU, HARD, IDENTITY)                      \
    X(avx_4_colu_soft_identity_fwd, avx_4_colu_soft_identity_bwd, AVX2_S4, COLU, SOFT, IDENTITY)                      \
    X(avx_4_colu_firm_identity_fwd, avx_4_colu_firm_identity_bwd, AVX2_S4, COLU, FIRM, IDENTITY)                      \
    X(avx_4_rcolu_hard_identity_fwd, avx_4_rcolu_hard_identity_bwd, AVX2_S4, RCOLU, HARD, IDENTITY)                   \
    X(avx_4_rcolu_soft_identity_fwd, avx_4_rcolu_soft_identity_bwd, AVX2_S4, RCOLU, SOFT, IDENTITY)                   \
    X(avx_4_rcolu_firm_identity_fwd, avx_4_rcolu_firm_identity_bwd, AVX2_S4, RCOLU, FIRM, IDENTITY)                   \
    X(avx_8_colu_hard_identity_fwd, avx_8_colu_hard_identity_bwd, AVX2_S8, COLU, HARD, IDENTITY)                      \
    X(avx_8_colu_soft_identity_fwd, avx_8_colu_soft_identity_bwd, AVX2_S8, COLU, SOFT, IDENTITY)                      \
    X(avx_8_colu_firm_identity_fwd, avx_8_colu_firm_identity_bwd, AVX2_S8, COLU, FIRM, IDENTITY)                      \
    X(avx_8_rcolu_hard_identity_fwd, avx_8_rcolu_hard_identity_bwd, AVX2_S8, RCOLU, HARD, IDENTITY)                   \
    X(avx_8_rcolu_soft_identity_fwd, avx_8_rcolu_soft_identity_bwd, AVX2_S8, RCOLU, SOFT, IDENTITY)                   \
    X(avx_8_rcolu_firm_identity_fwd, avx_8_rcolu_firm_identity_bwd, AVX2_S8, RCOLU, FIRM, IDENTITY)                   \
    X(avx_16_colu_hard_identity_fwd, avx_16_colu_hard_identity_bwd, AVX2_S16, COLU, HARD, IDENTITY)                   \
    X(avx_16_colu_soft_identity_fwd, avx_16_colu_soft_identity_bwd, AVX2_S16, COLU, SOFT, IDENTITY)                   \
    X(avx_16_colu_firm_identity_fwd, avx_16_colu_firm_identity_bwd, AVX2_S16, COLU, FIRM, IDENTITY)                   \
    X(avx_16_rcolu_hard_identity_fwd, avx_16_rcolu_hard_identity_bwd, AVX2_S16, RCOLU, HARD, IDENTITY)                \
    X(avx_16_rcolu_soft_identity_fwd, avx_16_rcolu_soft_identity_bwd, AVX2_S16, RCOLU, SOFT, IDENTITY)                \
    X(avx_16_rcolu_firm_identity_fwd, avx_16_rcolu_firm_identity_bwd, AVX2_S16, RCOLU, FIRM, IDENTITY)

/* larger multiples of 8, S read at run time: */
#define COLU_AVX2_WIDE_INSTANCES(X)                                                                                   \
    X(avx_wide_colu_hard_identity_fwd, avx_wide_colu_hard_identity_bwd, AVX2_WIDE, COLU, HARD, IDENTITY)              \
    X(avx_wide_colu_soft_identity_fwd, avx_wide_colu_soft_identity_bwd, AVX2_WIDE, COLU, SOFT, IDENTITY)              \
    X(avx_wide_colu_firm_identity_fwd, avx_wide_colu_firm_identity_bwd, AVX2_WIDE, COLU, FIRM, IDENTITY)              \
    X(avx_wide_rcolu_hard_identity_fwd, avx_wide_rcolu_hard_identity_bwd, AVX2_WIDE, RCOLU, HARD, IDENTITY)           \
    X(avx_wide_rcolu_soft_identity_fwd, avx_wide_rcolu_soft_identity_bwd, AVX2_WIDE, RCOLU, SOFT, IDENTITY)           \
    X(avx_wide_rcolu_firm_identity_fwd, avx_wide_rcolu_firm_identity_bwd, AVX2_WIDE, RCOLU, FIRM, IDENTITY)

/* a relu or silu axis, S = 4, 8, 16, on every AVX2 machine: */
#define COLU_AVX2_ACT_INSTANCES(X)                                                                                    \
    X(avx_4_colu_hard_relu_fwd, avx_4_colu_hard_relu_bwd, AVX2_S4, COLU, HARD, RELU)                                  \
    X(avx_4_colu_soft_relu_fwd, avx_4_colu_soft_relu_bwd, AVX2_S4, COLU, SOFT, RELU)                                  \
    X(avx_4_colu_firm_relu_fwd, avx_4_colu_firm_relu_bwd, AVX2_S4, COLU, FIRM, RELU)                                  \
    X(avx_4_rcolu_hard_relu_fwd, avx_4_rcolu_hard_relu_bwd, AVX2_S4, RCOLU, HARD, RELU)                               \
    X(avx_4_rcolu_soft_relu_fwd, avx_4_rcolu_soft_relu_bwd, AVX2_S4, RCOLU, SOFT, RELU)                               \
    X(avx_4_rcolu_firm_relu_fwd, avx_4_rcolu_firm_relu_bwd, AVX2_S4, RCOLU, FIRM, RELU)                               \
    X(avx_8_colu_hard_relu_fwd, avx_8_colu_hard_relu_bwd, AVX2_S8, COLU, HARD, RELU)                                  \
    X(avx_8_colu_soft_relu_fwd, avx_8_colu_soft_relu_bwd, AVX2_S8, COLU, SOFT, RELU)                                  \
    X(avx_8_colu_firm_relu_fwd, avx_8_colu_firm_relu_bwd, AVX2_S8, COLU, FIRM, RELU)                                  \
    X(avx_8_rcolu_hard_relu_fwd, avx_8_rcolu_hard_relu_bwd, AVX2_S8, RCOLU, HARD, RELU)                               \
    X(avx_8_rcolu_soft_relu_fwd, avx_8_rcolu_soft_relu_bwd, AVX2_S8, RCOLU, SOFT, RELU)                               \
    X(avx_8_rcolu_firm_relu_fwd, avx_8_rcolu_firm_relu_bwd, AVX2_S8, RCOLU, FIRM, RELU)                               \
    X(avx_16_colu_hard_relu_fwd, avx_16_colu_hard_relu_bwd, AVX2_S16, COLU, HARD, RELU)                               \
    X(avx_16_colu_soft_relu_fwd, avx_16_colu_soft_relu_bwd, AVX2_S16, COLU, SOFT, RELU)                               \
    X(avx_16_colu_firm_relu_fwd, avx_16_colu_firm_relu_bwd, AVX2_S16, COLU, FIRM, RELU)                               \
    X(avx_16_rcolu_hard_relu_fwd, avx_16_rcolu_hard_relu_bwd, AVX2_S16, RCOLU, HARD, RELU)                            \
    X(avx_16_rcolu_soft_relu_fwd, avx_16_rcolu_soft_relu_bwd, AVX2_S16, RCOLU, SOFT, RELU)                            \
    X(avx_16_rcolu_firm_relu_fwd, avx_16_rcolu_firm_relu_bwd, AVX2_S16, RCOLU, FIRM, RELU)                            \
    X(avx_4_colu_hard_silu_fwd, avx_4_colu_hard_silu_bwd, AVX2_S4, COLU, HARD, SILU)                                  \
    X(avx_4_colu_soft_silu_fwd, avx_4_colu_soft_silu_bwd, AVX2_S4, COLU, SOFT, SILU)                                  \
    X(avx_4_colu_firm_silu_fwd, avx_4_colu_firm_silu_bwd, AVX2_S4, COLU, FIRM, SILU)                                  \
    X(avx_4_rcolu_hard_silu_fwd, avx_4_rcolu_hard_silu_bwd, AVX2_S4, RCOLU, HARD, SILU)                               \
    X(avx_4_rcolu_soft_silu_fwd, avx_4_rcolu_soft_silu_bwd, AVX2_S4, RCOLU, SOFT, SILU)                               \
    X(avx_4_rcolu_firm_silu_fwd, avx_4_rcolu_firm_silu_bwd, AVX2_S4, RCOLU, FIRM, SILU)                               \
    X(avx_8_colu_hard_silu_fwd, avx_8_colu_hard_silu_bwd, AVX2_S8, COLU, HARD, SILU)                                  \
    X(avx_8_colu_soft_silu_fwd, avx_8_colu_soft_silu_bwd, AVX2_S8, COLU, SOFT, SILU)                                  \
    X(avx_8_colu_firm_silu_fwd, avx_8_colu_firm_silu_bwd, AVX2_S8, COLU, FIRM, SILU)                                  \
    X(avx_8_rcolu_hard_silu_fwd, avx_8_rcolu_hard_silu_bwd, AVX2_S8, RCOLU, HARD, SILU)                               \
    X(avx_8_rcolu_soft_silu_fwd, avx_8_rcolu_soft_silu_bwd, AVX2_S8, RCOLU, SOFT, SILU)                               \
    X(avx_8_rcolu_firm_silu_fwd, avx_8_rcolu_firm_silu_bwd, AVX2_S8, RCOLU, FIRM, SILU)                               \
    X(avx_16_colu_hard_silu_fwd, avx_16_colu_hard_silu_bwd, AVX2_S16, COLU, HARD, SILU)                               \
    X(avx_16_colu_soft_silu_fwd, avx_16_colu_soft_silu_bwd, AVX2_S16, COLU, SOFT, SILU)                               \
    X(avx_16_colu_firm_silu_fwd, avx_16_colu_firm_silu_bwd, AVX2_S16, COLU, FIRM, SILU)                               \
    X(avx_16_rcolu_hard_silu_fwd, avx_16_rcolu_hard_silu_bwd, AVX2_S16, RCOLU, HARD, SILU)                            \
    X(avx_16_rcolu_soft_silu_fwd, avx_16_rcolu_soft_silu_bwd, AVX2_S16, RCOLU, SOFT, SILU)                            \
    X(avx_16_rcolu_firm_silu_fwd, avx_16_rcolu_firm_silu_bwd, AVX2_S16, RCOLU, FIRM, SILU)

/* NCHW planes, float32, the axis activation read at run time (kernel_planes.h, plane_*_range): X(fwd, bwd, S, KIND,
 * SCALING) */
#define COLU_PLANE_INSTANCES(X)                                                                                       \
    X(plane_4_colu_hard_fwd, plane_4_colu_hard_bwd, 4, COLU, HARD)                                                    \
    X(plane_4_colu_soft_fwd, plane_4_colu_soft_bwd, 4, COLU, SOFT)                                                    \
    X(plane_4_colu_firm_fwd, plane_4_colu_firm_bwd, 4, COLU, FIRM)                                                    \
    X(plane_4_rcolu_hard_fwd, plane_4_rcolu_hard_bwd, 4, RCOLU, HARD)                                                 \
    X(plane_4_rcolu_soft_fwd, plane_4_rcolu_soft_bwd, 4, RCOLU, SOFT)                                                 \
    X(plane_4_rcolu_firm_fwd, plane_4_rcolu_firm_bwd, 4, RCOLU, FIRM)                                                 \
    X(plane_8_colu_hard_fwd, plane_8_colu_hard_bwd, 8, COLU, HARD)                                                    \
    X(plane_8_colu_soft_fwd, plane_8_colu_soft_bwd, 8, COLU, SOFT)                                                    \
    X(plane_8_colu_firm_fwd, plane_8_colu_firm_bwd, 8, COLU, FIRM)                                                    \
    X(plane_8_rcolu_hard_fwd, plane_8_rcolu_hard_bwd, 8, RCOLU, HARD)                                                 \
    X(plane_8_rcolu_soft_fwd, plane_8_rcolu_soft_bwd, 8, RCOLU, SOFT)                                                 \
    X(plane_8_rcolu_firm_fwd, plane_8_rcolu_firm_bwd, 8, RCOLU, FIRM)

