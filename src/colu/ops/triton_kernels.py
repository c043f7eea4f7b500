"""Fused Triton kernels (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

Imported only when a CUDA tensor (or a forced ``backend="triton"``) needs it,
so ``import colu`` never imports triton.

Launch design. The input is a contiguous ``(outer, C, inner)`` tensor; a
*lane* is one ``(outer, inner)`` position, so element ``(lane, channel)``
lives at ``o*C*inner + channel*inner + i``. Each program owns a tile of
``BLOCK_L`` lanes x ``BLOCK_G`` cones x ``SP`` channels (``SP`` = S rounded
up to a power of two, masked), loads it once, reduces each cone's section
in registers (sum over the last tile axis), computes the per-cone scalars
and writes the tile once: one read and one write per element in forward,
two reads (x, grad) and one write in backward, which is the minimum for a
memory-bound op. The grid is ``(cdiv(lanes, BLOCK_L), cdiv(G, BLOCK_G))``.
With channels last (``inner == 1``) the ``(cone, channel)`` axes of a tile
are one contiguous run of memory, so loads coalesce along them; for NCHW
(``inner > 1``) neighbouring lanes are adjacent in memory, so tiles are made
tall in lanes instead. Tiles hold about 2048 elements: enough in flight per
program to saturate memory, few enough registers for good occupancy. S is a
compile-time constant, and where cone ``g`` is channels ``g*S ... g*S+S-1``
(the grouped layout, and RCoLU) the channel index is written as exactly
that, so the compiler proves runs of S aligned channels and moves a tile in
128-bit loads and stores (64-bit for S = 4 in half types: a vector stays
within one cone); the tests check the PTX for it (:func:`compile_ptx`, no
GPU needed). The axes-first and shared-axis layouts keep element-wide
accesses (their sections start at unaligned channels). float16/bfloat16
tensors are loaded and stored as they are and computed in float32 in
registers, so a half tensor costs half the traffic of a float32 one (no
upcast copy around the kernel).

A shared axis is read by every cone and its gradient sums over all of them,
so there the grid has one program column and each program walks all cone
blocks of its lanes, keeping the running sum in registers (no atomics, so
the result is deterministic), and writes the axis at the end.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from colu.ops.abi import AXIS_ACTIVATIONS as _ACT
from colu.ops.abi import SCALINGS as _SCALING


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


if os.environ.get("TRITON_INTERPRET") == "1":

    @triton.jit
    def _log1p(r):
        # the interpreter has no libdevice: log(u), u = 1 + r, corrected for the rounding of u (exact to
        # first order in it), so as accurate as log itself however small r is; r >= 1 leaves the correction
        # out (it is within about an ulp of the result there, and r = inf would make it inf - inf)
        u = 1.0 + r
        return tl.log(u) - tl.where(r < 1.0, ((u - 1.0) - r) / u, 0.0)

else:
    from triton.language.extra import libdevice

    @triton.jit
    def _log1p(r):
        return libdevice.log1p(r)


@triton.jit
def _act(a, ACT: tl.constexpr):
    if ACT == 1:
        # a < 0 is false for NaN, so NaN passes (as torch.relu)
        return tl.where(a < 0, 0.0, a)
    elif ACT == 2:
        return a * _sigmoid(a)
    else:
        return a


@triton.jit
def _act_grad(a, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(a > 0, 1.0, 0.0)
    else:
        sg = _sigmoid(a)
        return sg * (1.0 + a * (1.0 - sg))


@triton.jit
def _weight(r, SCALING: tl.constexpr):
    if SCALING == 0:
        # comparisons, not minimum/maximum: NaN r must give NaN
        return tl.where(r < 0, 0.0, tl.where(r > 1, 1.0, r))
    elif SCALING == 1:
        return _sigmoid(r - 0.5)
    elif SCALING == 2:
        return _sigmoid(4.0 * r - 2.0)
    else:
        # sqrt, log: 0 for r <= 0 (false for NaN, which stays NaN); the inner where keeps r <= 0 out of
        # sqrt and log1p, as the closed form does
        off = r <= 0
        r_on = tl.where(off, 1.0, r)
        if SCALING == 3:
            return tl.where(off, 0.0, tl.sqrt(r_on))
        else:
            return tl.where(off, 0.0, _log1p(r_on))


@triton.jit
def _slope(r, w, SCALING: tl.constexpr):
    if SCALING == 0:
        return tl.where((r >= 0) & (r <= 1), 1.0, 0.0)
    elif SCALING == 1:
        return w * (1.0 - w)
    elif SCALING == 2:
        return 4.0 * w * (1.0 - w)
    else:
        # 0 for r <= 0, where sqrt's slope is infinite at 0 and a relu axis puts every negative axis value
        off = r <= 0
        if SCALING == 3:
            return tl.where(off, 0.0, 0.5 / tl.where(off, 1.0, w))  # w = sqrt(r)
        else:
            return tl.where(off, 0.0, 1.0 / (1.0 + tl.where(off, 1.0, r)))


@triton.jit
def _norm(v):
    """Each cone's section norm over axis 2 of a tile. The squares of section values above about 1e19
    overflow float32 (1e154 float64) while the values do not: where any cone's sum is infinite, those
    cones take the norm of v / max|v| times max|v| (an infinite value keeps its infinite norm)."""
    ss = tl.sum(v * v, axis=2)
    n = tl.sqrt(ss)
    big = ss == float("inf")
    if tl.sum(big.to(tl.int32)) > 0:
        m = tl.max(tl.abs(v), axis=2)
        m = tl.where(big & (m < float("inf")), m, 1.0)
        u = v / m[:, :, None]
        n = tl.where(big, m * tl.sqrt(tl.sum(u * u, axis=2)), n)
    return n


@triton.jit
def _tile(lane0, g0, lanes, C, inner, G, axis_base, axis_step, sec_base, sec_step,
          BLOCK_L: tl.constexpr, BLOCK_G: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, RCOLU: tl.constexpr,
          LINEAR: tl.constexpr):
    """Offsets, mask and axis flag of a (BLOCK_L, BLOCK_G, SP) tile."""
    l = lane0 + tl.arange(0, BLOCK_L)[:, None, None]
    g = g0 + tl.arange(0, BLOCK_G)[None, :, None]
    k = tl.arange(0, SP)[None, None, :]
    if LINEAR:
        # cone g is channels g*S ... g*S+S-1; with S a compile-time power of two the compiler sees
        # aligned runs of S channels and loads and stores them as vectors
        ch = g * S + k
    else:
        ch = tl.where(k == 0, axis_base + g * axis_step, sec_base + g * sec_step + k - 1)
    if RCOLU:
        is_axis = k < 0
    else:
        is_axis = k == 0
    o = l // inner
    i = l - o * inner
    offs = o.to(tl.int64) * C * inner + ch.to(tl.int64) * inner + i
    mask = (l < lanes) & (g < G) & (k < S)
    return offs, mask, is_axis, g


@triton.jit
def _forward_kernel(x_ptr, y_ptr, lanes, C, inner, G, axis_base, axis_step, sec_base, sec_step, iters, eps,
                    inv_s, rs,
                    BLOCK_L: tl.constexpr, BLOCK_G: tl.constexpr, S: tl.constexpr, SP: tl.constexpr,
                    RCOLU: tl.constexpr, LINEAR: tl.constexpr, SHARED: tl.constexpr, SCALING: tl.constexpr,
                    ACT: tl.constexpr, COMPUTE: tl.constexpr):
    pid_l = tl.program_id(0)
    pid_g = tl.program_id(1)
    lane0 = pid_l * BLOCK_L
    for it in range(iters):
        g0 = (pid_g * iters + it) * BLOCK_G
        offs, mask, is_axis, g = _tile(lane0, g0, lanes, C, inner, G, axis_base, axis_step, sec_base,
                                       sec_step, BLOCK_L, BLOCK_G, S, SP, RCOLU, LINEAR)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        if RCOLU:
            mean = tl.sum(x, axis=2) * inv_s
            p = tl.where(mask, x - mean[:, :, None], 0.0)
            n = _norm(p)
            tp = _act(mean * rs, ACT)
            w = _weight(tp / (n + eps), SCALING)
            y = (tp / rs)[:, :, None] + w[:, :, None] * p
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            sec = tl.where(is_axis, 0.0, x)
            n = _norm(sec)
            ap = _act(tl.sum(tl.where(is_axis, x, 0.0), axis=2), ACT)
            w = _weight(ap / (n + eps), SCALING)
            y = tl.where(is_axis, ap[:, :, None], w[:, :, None] * x)
            if SHARED:
                # channel 0 is written once, by cone 0
                tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask & ((~is_axis) | (g == 0)))
            else:
                tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(x_ptr, g_ptr, out_ptr, lanes, C, inner, G, axis_base, axis_step, sec_base, sec_step, iters,
                     eps, inv_s, rs,
                     BLOCK_L: tl.constexpr, BLOCK_G: tl.constexpr, S: tl.constexpr, SP: tl.constexpr,
                     RCOLU: tl.constexpr, LINEAR: tl.constexpr, SHARED: tl.constexpr, SCALING: tl.constexpr,
                     ACT: tl.constexpr, COMPUTE: tl.constexpr):
    pid_l = tl.program_id(0)
    pid_g = tl.program_id(1)
    lane0 = pid_l * BLOCK_L
    ksum = tl.zeros((BLOCK_L, BLOCK_G), dtype=COMPUTE)
    for it in range(iters):
        g0 = (pid_g * iters + it) * BLOCK_G
        offs, mask, is_axis, g = _tile(lane0, g0, lanes, C, inner, G, axis_base, axis_step, sec_base,
                                       sec_step, BLOCK_L, BLOCK_G, S, SP, RCOLU, LINEAR)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        gr = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        if RCOLU:
            mean = tl.sum(x, axis=2) * inv_s
            gmean = tl.sum(gr, axis=2) * inv_s
            p = tl.where(mask, x - mean[:, :, None], 0.0)
            n = _norm(p)
            q = tl.sum(gr * p, axis=2)
            den = n + eps
            t = mean * rs
            r = _act(t, ACT) / den
            w = _weight(r, SCALING)
            kk = q * _slope(r, w, SCALING) / den
            coef = kk * r / tl.where(n > 0, n, 1.0)
            gt = gmean + kk / rs
            if ACT != 0:
                gt = gt * _act_grad(t, ACT)
            out = w[:, :, None] * (gr - gmean[:, :, None]) - coef[:, :, None] * p + gt[:, :, None]
            tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            sec = tl.where(is_axis, 0.0, x)
            n = _norm(sec)
            q = tl.sum(tl.where(is_axis, 0.0, gr * x), axis=2)
            a = tl.sum(tl.where(is_axis, x, 0.0), axis=2)
            den = n + eps
            r = _act(a, ACT) / den
            w = _weight(r, SCALING)
            kk = q * _slope(r, w, SCALING) / den
            coef = kk * r / tl.where(n > 0, n, 1.0)
            out_sec = w[:, :, None] * gr - coef[:, :, None] * x
            if SHARED:
                ksum += tl.where((g0 + tl.arange(0, BLOCK_G))[None, :] < G, kk, 0.0)
                tl.store(out_ptr + offs, out_sec.to(out_ptr.dtype.element_ty), mask=mask & (~is_axis))
            else:
                ga = tl.sum(tl.where(is_axis, gr, 0.0), axis=2) + kk
                if ACT != 0:
                    ga = ga * _act_grad(a, ACT)
                out = tl.where(is_axis, ga[:, :, None], out_sec)
                tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if SHARED:
        l = lane0 + tl.arange(0, BLOCK_L)
        o = l // inner
        i = l - o * inner
        a_offs = o.to(tl.int64) * C * inner + axis_base * inner + i
        lm = l < lanes
        a = tl.load(x_ptr + a_offs, mask=lm, other=0.0).to(COMPUTE)
        ga = tl.load(g_ptr + a_offs, mask=lm, other=0.0).to(COMPUTE) + tl.sum(ksum, axis=1)
        if ACT != 0:
            ga = ga * _act_grad(a, ACT)
        tl.store(out_ptr + a_offs, ga.to(out_ptr.dtype.element_ty), mask=lm)


def _maps(spec):
    # contiguous cones are indexed g*S + k in the kernels (LINEAR); the grouped map is that order, and its
    # axis_base (0) is where a shared axis is
    S = spec.cone_dim
    return (0, S, 1, S) if spec.contiguous else spec.channel_map()


_TILE = 2048


def _launch(spec, shape):
    """Block sizes, grid and cone-loop count for a tensor of ``shape`` (see the module docstring)."""
    outer, C, inner = shape
    lanes = outer * inner
    G, S = spec.num_cones, spec.cone_dim
    SP = triton.next_power_of_2(S)
    if inner == 1:
        BLOCK_G = max(1, min(triton.next_power_of_2(G), _TILE // SP))
        BLOCK_L = max(1, min(triton.next_power_of_2(lanes), _TILE // (SP * BLOCK_G)))
    else:
        BLOCK_L = max(1, min(triton.next_power_of_2(lanes), max(1, _TILE // SP), 256))
        BLOCK_G = max(1, min(triton.next_power_of_2(G), _TILE // (SP * BLOCK_L)))
    g_blocks = triton.cdiv(G, BLOCK_G)
    if spec.share_axis:
        grid, iters = (triton.cdiv(lanes, BLOCK_L), 1), g_blocks
    else:
        grid, iters = (triton.cdiv(lanes, BLOCK_L), g_blocks), 1
    return lanes, BLOCK_L, BLOCK_G, SP, grid, iters


def _common(spec, scaling, eps, axis_activation, shape, dtype):
    lanes, BLOCK_L, BLOCK_G, SP, grid, iters = _launch(spec, shape)
    _, C, inner = shape
    S = spec.cone_dim
    args = (lanes, C, inner, spec.num_cones, *_maps(spec), iters, float(eps), 1.0 / S, math.sqrt(S))
    meta = dict(
        BLOCK_L=BLOCK_L,
        BLOCK_G=BLOCK_G,
        S=S,
        SP=SP,
        RCOLU=spec.kind == "rcolu",
        LINEAR=spec.contiguous,
        SHARED=bool(spec.share_axis),
        SCALING=_SCALING[scaling],
        ACT=_ACT[axis_activation],
        # half types are loaded as they are and computed in float32 in registers
        COMPUTE=tl.float64 if dtype == torch.float64 else tl.float32,
    )
    return grid, args, meta


class Launcher:
    """Forward and backward launches for one configuration and one contiguous ``(outer, C, inner)`` shape and dtype.

    The block sizes, grid and scalar arguments are worked out once, so that a
    cached plan (:mod:`colu.ops.plans`) pays only for the launch itself.
    """

    __slots__ = ("grid", "args", "meta")

    def __init__(self, spec, scaling: str, eps: float, axis_activation: str, shape, dtype):
        self.grid, self.args, self.meta = _common(spec, scaling, eps, axis_activation, tuple(shape), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _elsewhere(x):
            with torch.cuda.device(x.device):
                return self.forward(x)
        y = torch.empty_like(x)
        _forward_kernel[self.grid](x, y, *self.args, **self.meta)
        return y

    def backward(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if _elsewhere(x):
            with torch.cuda.device(x.device):
                return self.backward(x, grad)
        out = torch.empty_like(x)
        _backward_kernel[self.grid](x, grad.contiguous(), out, *self.args, **self.meta)
        return out


def _elsewhere(x: torch.Tensor) -> bool:
    # triton launches on the current CUDA device, whatever device the tensors are on (a model split over
    # several GPUs in one process): such calls switch to the tensor's device first
    return x.is_cuda and x.get_device() != torch.cuda.current_device()


def forward(x: torch.Tensor, spec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    x = x.contiguous()
    return Launcher(spec, scaling, eps, axis_activation, x.shape, x.dtype).forward(x)


def backward(x: torch.Tensor, grad: torch.Tensor, spec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    x = x.contiguous()
    return Launcher(spec, scaling, eps, axis_activation, x.shape, x.dtype).backward(x, grad)


def compile_ptx(
    spec, scaling: str, axis_activation: str, shape, dtype=torch.float32, backward: bool = False, arch: int = 90
) -> str:
    """PTX of the kernel a ``shape`` tensor would launch, compiled for ``sm_<arch>`` (no GPU needed).

    For reading the generated code on a machine without a GPU: e.g. that a
    tile moves through ``ld.global.v4``/``st.global.v4`` (128-bit accesses).
    Arguments are specialised as the launcher would for ``dtype`` tensors:
    16-byte aligned pointers, integers divisible by 16 marked so, integers
    equal to 1 folded in.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    grid, args, meta = _common(spec, scaling, 1e-7, axis_activation, tuple(shape), dtype)
    pointer_type = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16", torch.bfloat16: "*bf16"}[dtype]
    fn = _backward_kernel if backward else _forward_kernel
    pointers = fn.arg_names[:3] if backward else fn.arg_names[:2]
    values = dict(zip([n for n in fn.arg_names if n not in meta and n not in pointers], args))
    signature, constexprs, attrs = {}, dict(meta), {}
    for i, name in enumerate(fn.arg_names):
        value = values.get(name)
        if name in pointers:
            signature[name] = pointer_type
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in meta:
            signature[name] = "constexpr"
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm["ptx"]

