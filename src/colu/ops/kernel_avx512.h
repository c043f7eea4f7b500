/* AVX-512 blocks of 16 cones for S = 4, 8 and 16 (float32, included by
 * kernel_vector.h where the machine has AVX-512F, after kernel_avx2.h, whose
 * prefetch helpers and S = 16 backward they use). */

/* --------------------------------------------- AVX-512 blocks for S = 4 */
/* 16 cones of 4 floats are 4 vectors of 4 cones each (one per 128-bit
 * lane). A 4x4 transpose inside each lane (8 in-lane shuffles) gives 4
 * vectors that hold channel k of all 16 cones, so the per-cone sums are
 * lane-wise adds and the square root, division and exponential run once per
 * cone, 16 at a time; the same transpose (it is its own inverse) puts the
 * results back. About 35 instructions per 16 cones, against about 90 for
 * gcc's vectorisation of the flat loop, which de-interleaves with cross-lane
 * permutes and redoes them for the writes: measured 0.075 against 0.12 ns
 * per element for the hard forward in L2 on one core. (AVX2-only machines
 * run the same scheme in 256-bit vectors, avx_fwd4_chunk in kernel_avx2.h,
 * with the transpose kept inside each 128-bit lane.) No lane ever mixes two
 * cones, so a NaN stays in its own cone. */
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
 * same clamps, four fewer instructions. vscalefps overflows to +inf and underflows to 0 by itself, so
 * at the clamps' ends (n = 128, n = -127) it saturates as colu_expf does; between -88.38 and -87.68,
 * and between 88.38 and 88.72, it gives expf's subnormal or finite values where colu_expf gives 0 or
 * +inf (a sigmoid of them differs by less than 1e-38). The clamps are max/min with the operand order
 * that passes NaN through. */
ALWAYS_INLINE __m512 avz_exp(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-88.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
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

/* w = weight(t / (|s| + eps)) for 16 cones: soft and firm through avz_exp, any other scaling (hard) in
 * one vector pass of the shared helper, so that no scaling is ever computed as a sigmoid it is not */
ALWAYS_INLINE void avz_weights(float* w, const float* t, const float* ss, const float eps, const int sc) {
    if (_mm512_cmp_ps_mask(_mm512_loadu_ps(ss), _mm512_set1_ps(FLT_MAX), _CMP_GT_OQ)) note_overflow(); /* too_big */
    if (sc != COLU_SCALING_SOFT && sc != COLU_SCALING_FIRM) {
        _Pragma("omp simd") for (int j = 0; j < 16; ++j) w[j] = weight_f32(t[j] / (sqrtf(ss[j]) + eps), sc);
        return;
    }
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 r = _mm512_div_ps(_mm512_loadu_ps(t), _mm512_add_ps(_mm512_sqrt_ps(_mm512_loadu_ps(ss)), _mm512_set1_ps(eps)));
    /* sigmoid(z) with z = r - 1/2 (soft) or 4r - 2 (firm); exp(-z) = exp(1/2 - r) or exp(2 - 4r) */
    const __m512 mz = sc == COLU_SCALING_SOFT ? _mm512_sub_ps(_mm512_set1_ps(0.5f), r) : _mm512_fnmadd_ps(_mm512_set1_ps(4.0f), r, _mm512_set1_ps(2.0f));
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
    if (kind == COLU_KIND_COLU) {
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
    if (kind == COLU_KIND_COLU) {
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
 * lanes. 256-bit blocks of 8 cones (kernel_avx2.h's avx_stats8/avx_apply8) measured 0.10 ns per
 * element for the hard forward against 0.07 for these. */
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
    if (kind == COLU_KIND_COLU) {
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
    if (kind == COLU_KIND_COLU) {
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
                                 const int act, const float eps) {
    (void)act; /* always the identity: kernel_vector.h gives relu and silu axes to the AVX2 blocks */
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
    if (kind == COLU_KIND_COLU) {
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
    if (kind == COLU_KIND_COLU) {
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
    if (kind == COLU_KIND_COLU) {
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
        if (kind == COLU_KIND_COLU) {
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
                                 const int kind, const int sc, const int act, const float eps) {
    (void)act; /* as in avz_fwd_chunk */
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
    int over = 0;
    if (kind == COLU_KIND_COLU) {
        _Pragma("omp simd reduction(|:over)") for (int j = 0; j < 16 * nb; ++j)
            over |= bwd_scalars_f32(ss[j], q[j], t[j], eps, sc, w + j, b + j, coef + j);
    } else {
        const float inv_rs = S == 4 ? 0.5f : 1.0f / sqrtf(8.0f);
        /* as cone_bwd */
        _Pragma("omp simd reduction(|:over)") for (int j = 0; j < 16 * nb; ++j) {
            float k;
            over |= bwd_scalars_f32(ss[j], q[j], t[j], eps, sc, w + j, &k, coef + j);
            b[j] = gm[j] + k * inv_rs - w[j] * gm[j] + coef[j] * mu[j];
        }
    }
    if (over) note_overflow();
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
                                   const int kind, const int sc, const int act, const float eps) {
    avx_bwd_chunk(x, gr, gi, 2 * nb, S, kind, sc, act, eps);
}
