/* The interface between the kernel library and Python: what colu.ops.cpu
 * writes (the argument block, the configuration) and the functions it calls.
 * colu/ops/abi.py states the same version, values and names for Python, and
 * tests/test_abi.py reads this file and checks that the two agree.
 *
 * Any change to a value, a slot or a field changes COLU_ABI_VERSION too: the
 * loader compares it with abi.py's before the first call, so a library built
 * from other sources is refused instead of misreading its arguments. */
#ifndef COLU_ABI_H
#define COLU_ABI_H

#include <stdint.h>

#define COLU_ABI_VERSION 5

/* colu_cfg.kind */
enum colu_kind { COLU_KIND_COLU = 0, COLU_KIND_RCOLU = 1 };

/* colu_cfg.scaling: the weight w(r) of the section (sqrt and log: sqrt(r) and log1p(r) where r > 0, else 0) */
enum colu_scaling {
    COLU_SCALING_HARD = 0,
    COLU_SCALING_SOFT = 1,
    COLU_SCALING_FIRM = 2,
    COLU_SCALING_SQRT = 3,
    COLU_SCALING_LOG = 4
};

/* colu_cfg.act: the activation phi applied to the axis */
enum colu_act { COLU_ACT_IDENTITY = 0, COLU_ACT_RELU = 1, COLU_ACT_SILU = 2 };

/* The slots of the int64 argument block that colu_run and colu_run_half take
 * (one pointer crosses ctypes instead of ten converted arguments). Pointers
 * and the configuration's address are stored as integers. */
enum colu_arg {
    COLU_ARG_BACKWARD = 0, /* 0 forward, 1 backward */
    COLU_ARG_DTYPE = 1,    /* colu_run: 1 float64, 0 float32; colu_run_half: 1 bfloat16, 0 float16 */
    COLU_ARG_X = 2,        /* the input */
    COLU_ARG_GRAD = 3,     /* the upstream gradient (backward only) */
    COLU_ARG_OUT = 4,      /* the output: the result, or the gradient w.r.t. the input */
    COLU_ARG_OUTER = 5,    /* the tensors are contiguous (outer, C, inner) */
    COLU_ARG_C = 6,
    COLU_ARG_INNER = 7,
    COLU_ARG_CFG = 8,      /* a colu_cfg */
    COLU_ARG_THREADS = 9,  /* the most threads to use */
    COLU_ARG_COUNT = 10
};

/* One cone configuration, filled once per configuration and passed by its
 * address. Cone g's axis is channel axis_base + g * axis_step and its section
 * channels sec_base + g * sec_step + k, k < S - 1 (see colu/spec.py); RCoLU
 * cones are channels g*S ... g*S+S-1 whatever the map says. */
typedef struct {
    int64_t G, S;
    int64_t axis_base, axis_step, sec_base, sec_step;
    int64_t kind;    /* enum colu_kind */
    int64_t shared;  /* 1: one axis shared by every cone (CoLU only) */
    int64_t scaling; /* enum colu_scaling */
    int64_t act;     /* enum colu_act */
    double eps;
} colu_cfg;

int colu_abi_version(void);
int colu_run(const int64_t* a); /* 1; 0: no memory to redo an overflowed float32 call in float64 */
int colu_run_half(const int64_t* a);
int colu_half_ok(const colu_cfg* c, int bf16);

#endif
