/* Flat loops specialised per S for the compiler to vectorise (float32, part
 * of kernel_body.h's float32 instance; plain C, so every machine has them).
 *
 * float32 with the identity axis activation (the default) gets its own loop
 * for each S in {3, 4, 8, 16}, kind and scaling, except the S that the vector
 * blocks of kernel_vector.h take (4, 8, 16 with AVX2 or AVX-512);
 * everything else runs the run-time loop, which keeps the build short. The
 * rows are COLU_FLAT_*_INSTANCES in kernel_instances.h; flat_fwd_range and
 * flat_bwd_range pick them through FLAT_ALL. */
#ifdef COLU_AVX2
#define FLAT_ALL(M) COLU_FLAT_S3_INSTANCES(M)
#else
#define FLAT_ALL(M) COLU_FLAT_S3_INSTANCES(M) COLU_FLAT_PORTABLE_INSTANCES(M)
#endif

#define DEF_FLAT(FWD, BWD, SS, KIND, SC) \
    FLAT_LOOPS(FWD, BWD, SS, COLU_KIND_##KIND, COLU_SCALING_##SC, COLU_ACT_IDENTITY)
FLAT_ALL(DEF_FLAT)
#undef DEF_FLAT

/* RCoLU with a relu/silu axis, per S, the scaling (of the three: SC_OWN) and the axis activation read at run
 * time (the compiler takes the branches out of the loops); CoLU's take the identity loops (flat_act_fwd in
 * kernel_body.h), which for RCoLU would recompute the cone's mean of a shifted input and lose exact zeros */
#define DEF_RACT(FWD, BWD, SS) FLAT_LOOPS(FWD, BWD, SS, COLU_KIND_RCOLU, SC_OWN(c), (int)c->act)
COLU_FLAT_RCOLU_ACT_INSTANCES(DEF_RACT)
#undef DEF_RACT
