"""Linear mode connectivity under the activation's symmetry group.

Two networks trained from different initialisations usually sit in different
basins of the loss; moving one of them by an element of its symmetry group
(paper Theorem 4.7: Perm(G) x O(S-1)^G for CoLU, Perm(C) for a component-wise
activation) often puts both in the same basin, so that the straight line
between their weights has a low loss barrier (paper Section 5.7, Appendix C
and F).

* :func:`match_weights` (Algorithm 1, weight matching) and
  :func:`match_states` (Algorithm 2, state matching) find one group element
  per hidden state and return an :class:`Alignment`;
  ``alignment.apply(model_b)`` gives a copy of model B, moved by those
  elements, that computes exactly the same function; it checks that on one
  small probe batch (``apply(model_b, probe=batch)``, or the first rows of
  the state-matching data, or random rows for the first ``nn.Linear``) and
  raises a ``ValueError`` naming the largest output difference if the
  hidden states it was given do not describe the model.
* :func:`interpolate`, :func:`loss_curve` and :func:`loss_barrier` evaluate the
  linear path between two models (eq. 11); :func:`kl_standard_normal` is the
  KL term for a VAE's KL barrier (Figure 14).

**Which tensors move.** A hidden state of width C is produced by some tensors
(rows of ``fc_in.weight``, entries of ``fc_in.bias``) and consumed by others
(columns of ``fc_out.weight``). An element ``P`` of the activation's group acts
on every one of them along the hidden axis (``W_in <- P W_in``,
``b_in <- P b_in``, ``W_out <- W_out P^T``). ``nn.Sequential`` stacks of
``nn.Linear`` and activation modules are read automatically (one activation
module object placed at several positions gives a hidden state at each, named
by its position); anything else is described by a *spec*
(:class:`HiddenState`)::

    spec = [
        HiddenState("enc", group="enc_act",                # the activation module's name
                    producers=["enc_in.weight", "enc_in.bias"],  # hidden axis 0 by default
                    consumers=["enc_out.weight"],                # hidden axis 1 by default
                    pre="enc_in", post="enc_act"),               # where match_states reads it
        HiddenState("dec", group="dec_act", producers=["dec_in.weight"],
                    consumers=["dec_out.weight"], pre="dec_in", post="dec_act"),
    ]

Entries of ``producers``/``consumers`` are ``state_dict`` keys, or
``(key, axis)`` pairs for other layouts (e.g. a conv weight consumed along
axis 1 is the default; a transposed layer may need axis 0). ``group`` is an
activation module, the name of one inside the model, a :class:`colu.ConeSpec`,
``"permutation"`` or ``"orthogonal"``. A plain dict with the same keys works
too, and so does the shorthand ``{"act": ("fc_in", "fc_out")}`` (activation
module name -> the layers before and after it), which is also read from a
model's ``HIDDEN_STATES`` class attribute when no spec is given.

**Groups.** Component-wise activations (ReLU, GELU, SiLU, ..., and CoLU with
``cone_dim=2``) get permutations (Hungarian algorithm). CoLU gets cone
permutations times section rotations: the score of matching cone ``g`` of A to
cone ``h`` of B is their axis correlation plus the nuclear norm of their
section cross-correlation (the value of the best rotation, orthogonal
Procrustes); the Hungarian algorithm on these G x G scores picks the cone
permutation and each pair gets its Procrustes rotation. With a shared axis the
axis stays in place. RCoLU works in the basis ``(e, e_perp)`` of each group:
the all-ones component is matched like an axis and the complement is rotated.
The identity activation (``nn.Identity``, no activation between two linear
layers, ``CoLU(num_cones=0)``) commutes with all of O(C), matched by Procrustes.

**Objectives.** Both methods maximise a sum of inner products
``<X_A, P X_B>`` over the group: weight matching uses the tensors listed for
each hidden state (the total is ``sum <theta_A, pi(theta_B)>``, so every
coordinate step of Algorithm 1 solves its subproblem exactly and the total
never decreases; equivalently it minimises ``||theta_A - pi(theta_B)||``).
State matching uses the raw second moment ``sum_n x_A(n) x_B(n)^T`` of the
hidden states on the data, not a per-channel-normalised correlation, because
rescaling single channels is not invariant under section rotations.

scipy (for the Hungarian algorithm) is imported only when a permutation is
solved; ``import colu`` never imports this module.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .modules import CoLU, RCoLU
from .spec import ConeSpec

__all__ = [
    "Alignment",
    "Group",
    "HiddenState",
    "group_of",
    "infer_spec",
    "interpolate",
    "kl_standard_normal",
    "loss_barrier",
    "loss_curve",
    "match_states",
    "match_weights",
    "procrustes",
    "resolve_spec",
]

# Modules that act channel by channel with the same function on every channel:
# their isometric symmetry group is Perm(C) (paper Corollary 4.6).
_COMPONENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
)
# Modules that are the identity at evaluation time and so do not restrict the group.
_TRANSPARENT = (nn.Identity, nn.Dropout)
_GROUP_NAMES = {
    "permutation": "permutation", "perm": "permutation", "componentwise": "permutation",
    "relu": "permutation", "orthogonal": "orthogonal", "identity": "orthogonal",
}
_SPEC_HELP = "describe the hidden states with spec=[HiddenState(...), ...] (see help(colu.align))"


# ------------------------------------------------------------------- solvers
def procrustes(corr: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The orthogonal ``R`` maximising ``<R, corr> = tr(R^T corr)`` and that maximum.

    ``corr = U diag(s) V^T`` gives ``R = U V^T`` with value ``sum(s)`` (the
    nuclear norm): the orthogonal Procrustes solution.
    """
    if corr.shape[0] == 0:
        return corr.new_zeros(0, 0), 0.0
    u, s, vh = torch.linalg.svd(corr.double())
    return u @ vh, float(s.sum())


def _hungarian(score: torch.Tensor) -> torch.Tensor:
    """Column matched to each row by a maximum-weight perfect matching."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # pragma: no cover - scipy is in the tools extra
        raise ImportError(
            "colu.align needs scipy for the Hungarian algorithm; install it with "
            "pip install scipy (or pip install 'colu[tools]')"
        ) from err
    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    match = torch.empty(score.shape[0], dtype=torch.long)
    match[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return match


def _homogeneous_basis(S: int) -> torch.Tensor:
    """Orthonormal basis of R^S (columns) whose first vector is (1, ..., 1)/sqrt(S)."""
    m = torch.eye(S, dtype=torch.float64)
    m[:, 0] = 1.0
    q, _ = torch.linalg.qr(m)
    return q * torch.sign(q[0, 0])


@dataclass(frozen=True)
class Group:
    """The isometric symmetry group of the activation at one hidden state of width ``channels``.

    ``kind`` is ``"permutation"`` (component-wise activations), ``"orthogonal"``
    (the identity), ``"colu"`` or ``"rcolu"`` (with their ``cone``
    :class:`~colu.ConeSpec`). :meth:`solve` finds the element maximising the
    inner product with a cross-correlation matrix.
    """

    kind: str
    channels: int
    cone: Optional[ConeSpec] = None

    def solve(self, corr: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``argmax_P <P, corr>`` over the group and its value.

        ``corr[i, j]`` is the correlation of channel ``i`` of model A with
        channel ``j`` of model B; ``P`` (float64, ``C x C``) moves B onto A:
        ``P @ x_B`` is compared with ``x_A``.
        """
        C = self.channels
        corr = corr.double()
        if corr.shape != (C, C):
            raise ValueError(f"{self}: expected a {C}x{C} cross-correlation, got shape {tuple(corr.shape)}")
        if self.kind == "orthogonal":
            return procrustes(corr)
        if self.kind == "permutation":
            match = _hungarian(corr)
            P = torch.zeros(C, C, dtype=torch.float64)
            P[torch.arange(C), match] = 1.0
            return P, float(corr[torch.arange(C), match].sum())
        if self.kind == "rcolu":
            return self._solve_rcolu(corr)
        return self._solve_colu(corr)

    def _solve_colu(self, corr):
        spec = self.cone
        G = spec.num_cones
        sec = spec.section_channels()
        axes = spec.axis_channels()
        # score[g, h]: value of matching cone g of A to cone h of B with the best section rotation
        score = torch.zeros(G, G, dtype=torch.float64)
        rotations = {}
        for g in range(G):
            for h in range(G):
                R, value = procrustes(corr[sec[g][:, None], sec[h]])
                rotations[g, h] = R
                score[g, h] = value if spec.share_axis else value + corr[axes[g], axes[h]]
        match = _hungarian(score) if G > 1 else torch.zeros(1, dtype=torch.long)
        P = torch.zeros(self.channels, self.channels, dtype=torch.float64)
        if spec.share_axis:
            P[0, 0] = 1.0
        total = float(corr[0, 0]) if spec.share_axis else 0.0
        for g in range(G):
            h = int(match[g])
            if not spec.share_axis:
                P[axes[g], axes[h]] = 1.0
            P[sec[g][:, None], sec[h]] = rotations[g, h]
            total += float(score[g, h])
        return P, total

    def _solve_rcolu(self, corr):
        spec = self.cone
        G, S = spec.num_cones, spec.cone_dim
        groups = spec.cone_channels()
        Q = _homogeneous_basis(S)
        score = torch.zeros(G, G, dtype=torch.float64)
        rotations = {}
        for g in range(G):
            for h in range(G):
                # in the basis (e, e_perp) the group acts as diag(1, R), R in O(S-1)
                block = Q.T @ corr[groups[g][:, None], groups[h]] @ Q
                R, value = procrustes(block[1:, 1:])
                rotations[g, h] = R
                score[g, h] = block[0, 0] + value
        match = _hungarian(score) if G > 1 else torch.zeros(1, dtype=torch.long)
        P = torch.zeros(self.channels, self.channels, dtype=torch.float64)
        total = 0.0
        for g in range(G):
            h = int(match[g])
            inner = torch.eye(S, dtype=torch.float64)
            inner[1:, 1:] = rotations[g, h]
            P[groups[g][:, None], groups[h]] = Q @ inner @ Q.T
            total += float(score[g, h])
        return P, total

    def __str__(self) -> str:
        if self.cone is not None:
            return f"Group({self.cone})"
        return f"Group({self.kind}, C={self.channels})"


def group_of(activation: Any, channels: int) -> Group:
    """The :class:`Group` of ``activation`` on a hidden state of ``channels`` channels.

    ``activation`` may be a module (``colu.CoLU``, ``colu.RCoLU``, a
    component-wise torch activation, ``nn.Identity``), a
    :class:`~colu.ConeSpec`, a :class:`Group`, or one of the strings
    ``"permutation"`` and ``"orthogonal"``.
    """
    if isinstance(activation, Group):
        if activation.channels != channels:
            raise ValueError(f"{activation} was given for a hidden state of {channels} channels")
        return activation
    if isinstance(activation, str):
        kind = _GROUP_NAMES.get(activation.lower())
        if kind is None:
            raise ValueError(
                f"unknown group {activation!r}; use 'permutation', 'orthogonal', an activation module, "
                f"the name of an activation module in the model, or a colu.ConeSpec"
            )
        return Group(kind, channels)
    if isinstance(activation, ConeSpec):
        if activation.channels != channels:
            raise ValueError(
                f"{activation} describes {activation.channels} channels but the hidden state has {channels}"
            )
        if activation.is_identity:
            return Group("orthogonal", channels)
        if activation.kind == "colu" and activation.cone_dim == 2:
            return Group("permutation", channels)  # cone_dim=2 CoLU is the component-wise activation
        return Group(activation.kind, channels, activation)
    if activation is None or isinstance(activation, _TRANSPARENT):
        return Group("orthogonal", channels)
    if isinstance(activation, (CoLU, RCoLU)):
        if activation.dim not in (-1,):
            raise ValueError(
                f"{type(activation).__name__}(dim={activation.dim}) after a linear layer: alignment reads "
                f"the channels of a hidden state on the last axis; use dim=-1, or {_SPEC_HELP} with a "
                f"ConeSpec group"
            )
        try:
            if isinstance(activation, CoLU):
                cone = ConeSpec.resolve(channels, activation.cone_dim, activation.num_cones,
                                        share_axis=activation.share_axis, layout=activation.layout)
            else:
                cone = ConeSpec.resolve(channels, activation.cone_dim, activation.num_cones, kind="rcolu")
        except ValueError as err:
            raise ValueError(f"{activation!r} does not fit a hidden state of {channels} channels: {err}") from err
        return group_of(cone, channels)
    if isinstance(activation, nn.PReLU):
        if activation.num_parameters != 1:
            raise ValueError(
                f"nn.PReLU(num_parameters={activation.num_parameters}) has a slope per channel, so it does "
                f"not commute with permutations; use nn.PReLU() with one shared slope"
            )
        return Group("permutation", channels)
    if isinstance(activation, _COMPONENTWISE):
        return Group("permutation", channels)
    raise ValueError(
        f"cannot tell the symmetry group of {type(activation).__name__} ({activation!r}); "
        f"give group='permutation' if it acts channel by channel, or {_SPEC_HELP}"
    )


# ---------------------------------------------------------------------- specs
@dataclass
class HiddenState:
    """One hidden state between linear maps, as the alignment code sees it.

    Args:
        name: a label (keys :attr:`Alignment.transforms`).
        group: the activation's group: an activation module, the name of a
            module in the model, a :class:`~colu.ConeSpec`, a :class:`Group`,
            ``"permutation"`` or ``"orthogonal"``.
        producers: ``state_dict`` keys of the tensors that produce the state
            (hidden axis 0), or ``(key, axis)`` pairs.
        consumers: keys of the tensors that read the state (hidden axis 1),
            or ``(key, axis)`` pairs.
        pre: name of the module whose output is the state before the
            activation (default: the module owning the first producer).
        post: name of the module whose output is the state after the
            activation (needed only for ``match_states(..., where="post")``).
        state_dim: the channel axis of those module outputs.
    """

    name: str
    group: Any
    producers: Sequence[Union[str, tuple]] = ()
    consumers: Sequence[Union[str, tuple]] = ()
    pre: Optional[str] = None
    post: Optional[str] = None
    state_dim: int = -1


@dataclass(frozen=True)
class _Resolved:
    name: str
    group: Group
    tensors: tuple  # ((state_dict key, hidden axis), ...), producers first
    num_producers: int
    pre: Optional[str]
    post: Optional[str]
    state_dim: int
    override: Optional[str] = None  # why a change of function is expected (a group other than the activation's)


def _flatten_sequential(model: nn.Sequential, prefix: str = ""):
    # every position, also a module object placed at several of them (named_children() would
    # yield it once, and the hidden state at its later positions would lose its activation)
    for name, child in model._modules.items():
        if child is None:
            continue
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _flatten_sequential(child, full + ".")
        else:
            yield full, child


def infer_spec(model: nn.Module) -> list:
    """The hidden states of ``model``: its ``HIDDEN_STATES`` attribute, or those of an ``nn.Sequential``.

    In an ``nn.Sequential`` (nested ones are flattened), every pair of
    consecutive ``nn.Linear`` layers encloses a hidden state; the modules
    between them give its group (none or ``nn.Identity``: the identity, so
    O(C); ``nn.Dropout`` is ignored since it is the identity in eval mode).
    Modules before the first and after the last linear layer do not touch a
    hidden state and may be anything. One activation module object placed at
    several positions (``act = CoLU(...); nn.Sequential(lin1, act, lin2, act,
    lin3)``) gives one hidden state per position, each with that module's
    group, named by the position (``"1"`` and ``"3"``).
    """
    pairs = getattr(type(model), "HIDDEN_STATES", None)
    if isinstance(pairs, dict):
        return _spec_from_pairs(model, pairs)
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"cannot find the hidden states of {type(model).__name__}: only nn.Sequential stacks of nn.Linear "
            f"and activations (or models with a HIDDEN_STATES = {{'act': ('layer_in', 'layer_out')}} "
            f"attribute) are read automatically; {_SPEC_HELP}"
        )
    items = list(_flatten_sequential(model))
    linear_at = [i for i, (_, m) in enumerate(items) if isinstance(m, nn.Linear)]
    if len(linear_at) < 2:
        raise ValueError(
            f"{type(model).__name__} has {len(linear_at)} nn.Linear layer(s), so no hidden state to align; "
            f"alignment needs at least two linear layers, or {_SPEC_HELP}"
        )
    spec = []
    for i, j in zip(linear_at, linear_at[1:]):
        (name_in, lin_in), (name_out, lin_out) = items[i], items[j]
        between = items[i + 1:j]
        for name, m in between:
            if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                raise ValueError(
                    f"module {name!r} ({type(m).__name__}) between {name_in!r} and {name_out!r} has "
                    f"parameters or buffers, which weight alignment cannot move automatically; {_SPEC_HELP}"
                )
        acts = [(n, m) for n, m in between if not isinstance(m, _TRANSPARENT)]
        if len(acts) <= 1:
            group = acts[0][1] if acts else None
        elif all(isinstance(m, _COMPONENTWISE) for _, m in acts):
            group = "permutation"
        else:
            names = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in acts)
            raise ValueError(
                f"several activations between {name_in!r} and {name_out!r}: {names}; their common "
                f"symmetry group is not inferred; {_SPEC_HELP}"
            )
        producers = [f"{name_in}.weight"] + ([f"{name_in}.bias"] if lin_in.bias is not None else [])
        spec.append(HiddenState(
            name=acts[0][0] if len(acts) == 1 else f"{name_in}->{name_out}",
            group=group,
            producers=producers,
            consumers=[f"{name_out}.weight"],
            pre=name_in,
            post=between[-1][0] if between else name_in,
        ))
    return spec


def _modules_by_name(model: nn.Module) -> dict:
    """Every module of ``model`` under every name it is registered as (a shared module under each)."""
    return dict(model.named_modules(remove_duplicate=False))


def _spec_from_pairs(model: nn.Module, pairs: dict) -> list:
    modules = _modules_by_name(model)
    spec = []
    for act, pair in pairs.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"hidden state {act!r}: expected (layer_in, layer_out), got {pair!r}")
        layer_in, layer_out = pair
        for name in (act, layer_in, layer_out):
            if name not in modules:
                raise ValueError(f"hidden state {act!r}: {type(model).__name__} has no module named {name!r}")
        producers = [f"{layer_in}.weight"]
        if getattr(modules[layer_in], "bias", None) is not None:
            producers.append(f"{layer_in}.bias")
        spec.append(HiddenState(act, group=act, producers=producers, consumers=[f"{layer_out}.weight"],
                                pre=layer_in, post=act))
    return spec


def resolve_spec(model: nn.Module, spec=None) -> list:
    """Check ``spec`` against ``model`` and resolve it to internal hidden states.

    ``spec`` is ``None`` (use :func:`infer_spec`), a list of
    :class:`HiddenState` or dicts with its fields, or the
    ``{"act": ("layer_in", "layer_out")}`` shorthand.
    """
    if spec is None:
        spec = infer_spec(model)
    elif isinstance(spec, dict):
        spec = _spec_from_pairs(model, spec)
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(f"spec must be a non-empty list of HiddenState, got {spec!r}")
    params = model.state_dict(keep_vars=True)
    shapes = {k: v.shape for k, v in params.items()}
    keys_of = {}  # id of a tensor -> its state_dict keys (several when one tensor sits at several places)
    for k, v in params.items():
        keys_of.setdefault(id(v), []).append(k)
    modules = _modules_by_name(model)
    resolved, seen = [], {}
    for entry in spec:
        if isinstance(entry, dict):
            try:
                entry = HiddenState(**entry)
            except TypeError as err:
                raise ValueError(f"bad hidden-state entry {entry!r}: {err}") from err
        if not isinstance(entry, HiddenState):
            raise ValueError(f"spec entries must be HiddenState or dict, got {entry!r}")
        tensors = []
        for role, items, default_axis in (("producer", entry.producers, 0), ("consumer", entry.consumers, 1)):
            for item in items:
                key, axis = (item, default_axis) if isinstance(item, str) else tuple(item)
                if key not in shapes:
                    close = [k for k in shapes if k.split(".")[0] == key.split(".")[0]]
                    raise ValueError(
                        f"hidden state {entry.name!r}: {role} {key!r} is not in the model's state_dict"
                        + (f"; keys of that module: {close}" if close else f"; keys: {list(shapes)[:12]}")
                    )
                ndim = len(shapes[key])
                if not -ndim <= axis < ndim:
                    raise ValueError(f"hidden state {entry.name!r}: axis {axis} out of range for {key!r} "
                                     f"of shape {tuple(shapes[key])}")
                tensors.append((key, axis % ndim))
        if not tensors:
            raise ValueError(f"hidden state {entry.name!r} lists no producers or consumers")
        widths = {(k, a): shapes[k][a] for k, a in tensors}
        C = next(iter(widths.values()))
        if any(w != C for w in widths.values()):
            raise ValueError(f"hidden state {entry.name!r}: the listed tensors disagree on its width: {widths}")
        keys = [k for k, _ in tensors]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"hidden state {entry.name!r} lists a tensor twice ({keys}); a tensor both producing and "
                f"consuming the same state (a recurrent weight) is not supported"
            )
        for k, a in tensors:
            if (k, a) in seen:
                raise ValueError(f"{k!r} axis {a} is listed by both {seen[k, a]!r} and {entry.name!r}")
            seen[k, a] = entry.name
            aliases = keys_of[id(params[k])]
            if len(aliases) > 1:
                others = " and ".join(repr(o) for o in aliases if o != k)
                raise ValueError(
                    f"hidden state {entry.name!r}: {k!r} and {others} are the same tensor (one module placed "
                    f"at several positions, or tied weights); moving it for one hidden state would move it for "
                    f"the other too, so the aligned model would compute a different function. Use separate "
                    f"module instances (e.g. copy.deepcopy(layer)) for the layers around hidden states"
                )
        given = entry.group
        if isinstance(given, str) and given in modules and given.lower() not in _GROUP_NAMES:
            given = modules[given]
        group = group_of(given, C)
        override = None
        if not isinstance(given, nn.Module) and entry.post in modules:
            # a group stated outright for a state whose activation module has another one: a deliberate
            # choice (e.g. a permutation-only baseline for CoLU), which may change the function
            try:
                own = group_of(modules[entry.post], C)
            except ValueError:
                own = None
            if own is not None and own != group:
                override = (f"hidden state {entry.name!r} is given {group} while its activation {entry.post!r} "
                            f"({type(modules[entry.post]).__name__}) has {own}")
        pre = entry.pre if entry.pre is not None else _owner(tensors[0][0])
        for label, mod in (("pre", pre), ("post", entry.post)):
            if mod is not None and mod not in modules:
                raise ValueError(f"hidden state {entry.name!r}: {label}={mod!r} is not a module of the model")
        resolved.append(_Resolved(entry.name, group, tuple(tensors), len(entry.producers), pre, entry.post,
                                  entry.state_dim, override))
    names = [r.name for r in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"hidden-state names must be unique, got {names}")
    return resolved


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _resolve_pair(model_a: nn.Module, model_b: nn.Module, spec) -> list:
    """Resolve ``spec`` on both models; their activations must have the same groups."""
    _check_pair(model_a, model_b)
    states = resolve_spec(model_a, spec)
    for sa, sb in zip(states, resolve_spec(model_b, spec)):
        if sa.group != sb.group:
            raise ValueError(
                f"hidden state {sa.name!r} has {sa.group} in model_a but {sb.group} in model_b; "
                f"alignment needs the same activation configuration in both models"
            )
    return states


def _rng_scope(*models):
    """Fork the RNGs of every device the models live on, so reseeding leaves the caller's state alone."""
    devices = sorted({t.device.index or 0 for m in models for t in m.state_dict().values() if t.is_cuda})
    return torch.random.fork_rng(devices=devices)


def _check_pair(model_a: nn.Module, model_b: nn.Module) -> None:
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys():
        diff = sorted(set(sa) ^ set(sb))
        raise ValueError(f"model_a and model_b have different parameters: {diff[:8]}; both must share one architecture")
    for k in sa:
        if sa[k].shape != sb[k].shape:
            raise ValueError(
                f"{k!r} has shape {tuple(sa[k].shape)} in model_a but {tuple(sb[k].shape)} in model_b; "
                f"both models must share one architecture"
            )


def _move(P: torch.Tensor, t: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply ``P`` along ``axis`` of ``t``: ``P W`` for axis 0, ``W P^T`` for axis 1."""
    return torch.tensordot(P, t, dims=([1], [axis])).movedim(0, axis)


# ----------------------------------------------------------------- alignment
@dataclass
class Alignment:
    """The result of :func:`match_weights` or :func:`match_states`.

    Attributes:
        transforms: hidden-state name -> the ``C x C`` orthogonal matrix (float64)
            that moves model B onto model A at that state.
        objective: the matching objective after each step (weight matching:
            ``sum <theta_A, pi(theta_B)>`` before the first and after every
            sweep; state matching: the mean ``<x_A, P x_B>`` per sample before
            and after).
        method: ``"weights"`` or ``"states"``.
        groups: hidden-state name -> a description of its group.
    """

    transforms: dict
    objective: list
    method: str
    groups: dict = field(default_factory=dict)
    _states: tuple = field(default=(), repr=False)
    _probe: Any = field(default=None, repr=False, compare=False)
    _forward: Optional[Callable] = field(default=None, repr=False, compare=False)

    def apply(self, model_b: nn.Module, probe=None, *, forward: Optional[Callable] = None) -> nn.Module:
        """A deep copy of ``model_b`` moved by :attr:`transforms`; it computes the same function.

        The copy is checked on one small probe batch: both models run on it
        (in eval mode, without gradients, with the same random seed), and if
        their outputs differ by more than rounding allows (relative to the
        largest output: 1e-4 in float32, 1e-9 in float64, 1e-2 in float16,
        5e-2 in bfloat16) a ``ValueError`` names the largest difference and
        the probe. The probe is ``probe`` if given (a batch as
        :func:`match_states` takes it, fed by ``forward(model, batch)``,
        default ``model(batch)``); else the first rows of the data given to
        :func:`match_states`; else 8 random rows as wide as the input of the
        ``nn.Linear`` producing the first hidden state. When there is none of
        these, or ``model_b`` does not accept the random rows (its input is
        not that layer's input: an embedding or a convolution first), the
        check is skipped; pass ``probe=`` to have it.

        A spec that states a group other than the one of a hidden state's
        activation (e.g. ``group="permutation"`` for CoLU, a permutation-only
        baseline) changes the function on purpose: then a difference is a
        warning, not an error.
        """
        out = copy.deepcopy(model_b)
        sd = out.state_dict()
        work = {}
        for state in self._states:
            P = self.transforms[state.name]
            for key, axis in state.tensors:
                if key not in sd or sd[key].shape[axis] != P.shape[0]:
                    raise ValueError(
                        f"model_b does not match this alignment: expected {key!r} with {P.shape[0]} "
                        f"channels on axis {axis}; apply it to the model it was computed for"
                    )
                t = work.get(key, sd[key].detach().double())
                work[key] = _move(P, t, axis)
        with torch.no_grad():
            for key, t in work.items():
                sd[key].copy_(t.to(sd[key].dtype))
        self._verify(model_b, out, probe, forward, [sd[key].dtype for key in work])
        return out

    def _verify(self, model_b, moved, probe, forward, dtypes) -> None:
        """Raise (or warn, for a deliberate group override) if ``moved`` computes another function than ``model_b``."""
        forward = forward or self._forward or _default_forward
        guessed = False
        if probe is not None:
            source = f"the probe you passed ({_describe_batch(probe)})"
        elif self._probe is not None:
            probe = self._probe
            source = f"the first rows of the data given to match_states ({_describe_batch(probe)})"
        else:
            probe, source = _random_probe(model_b, self._states)
            if probe is None:
                return
            guessed = True
        with _EvalMode(model_b, moved), torch.no_grad():
            try:
                expected = _flat_outputs(_run_seeded(model_b, forward, probe))
            except Exception:
                if guessed:
                    return  # the model's input is not what the first linear layer takes: nothing to probe with
                raise
            got = _flat_outputs(_run_seeded(moved, forward, probe))
        if len(got) != len(expected):
            raise ValueError(f"the aligned model returned {len(got)} tensors on {source}, model_b {len(expected)}")
        if not expected:
            return
        dtypes = list(dtypes) + [t.dtype for t in expected]
        rtol = max(_rtol(d) for d in dtypes)
        scale = max((float(t[torch.isfinite(t)].abs().max()) if torch.isfinite(t).any() else 0.0)
                    for t in (e.double() for e in expected))
        worst, where = 0.0, 0
        for i, (a, b) in enumerate(zip(expected, got)):
            if a.shape != b.shape:
                raise ValueError(f"the aligned model's output {i} has shape {tuple(b.shape)} on {source}, "
                                 f"model_b's {tuple(a.shape)}")
            if a.numel() == 0:
                continue
            a, b = a.double(), b.double()
            same = (a == b) | (torch.isnan(a) & torch.isnan(b))
            diff = torch.where(same, torch.zeros_like(a), (a - b).abs().nan_to_num(nan=math.inf))
            d = float(diff.max())
            if d > worst:
                worst, where = d, i
        tol = rtol * scale
        if worst <= tol:
            return
        output = f" (in output {where} of {len(expected)})" if len(expected) > 1 else ""
        message = (
            f"the aligned model does not compute the same function as model_b: largest |difference| "
            f"{worst:.4g}{output}, against a tolerance of {tol:.3g} ({rtol:g} x the largest |output| "
            f"{scale:.4g}), on {source}"
        )
        overrides = [s.override for s in self._states if s.override]
        if overrides:
            warnings.warn(f"{message}. Expected: {'; '.join(overrides)}, and only the activation's own group "
                          f"keeps the function", UserWarning, stacklevel=3)
            return
        raise ValueError(
            f"{message}. The hidden states this alignment was computed with do not describe the model: a group "
            f"that is not the activation's, a tensor reading or producing a hidden state that is missing from "
            f"producers=/consumers=, or a transform changed after matching. Check align.resolve_spec(model_b) "
            f"against the model's forward pass and pass a corrected spec=[HiddenState(...), ...] to the "
            f"matching function (see help(colu.align))"
        )

    def summary(self) -> dict:
        """A JSON-serialisable record: method, objective trace and the group of each hidden state."""
        return {"method": self.method, "objective": [float(v) for v in self.objective],
                "groups": dict(self.groups), "iterations": max(len(self.objective) - 1, 0)}


def _make_alignment(states, transforms, objective, method, probe=None, forward=None) -> Alignment:
    return Alignment(dict(transforms), list(objective), method, {s.name: str(s.group) for s in states},
                     tuple(states), probe, forward)


_PROBE_ROWS = 8
_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _rtol(dtype) -> float:
    """Relative tolerance for comparing outputs of two models that differ by rounding in ``dtype``."""
    if dtype in _RTOL:
        return _RTOL[dtype]
    if dtype.is_floating_point or dtype.is_complex:
        return max(1e-9, 1e3 * torch.finfo(dtype).eps)
    return 0.0


def _first_rows(batch, rows: int = _PROBE_ROWS):
    """The first ``rows`` rows of a batch (a tensor, or a tuple/list/dict of them), copied; None if none."""
    leading = []

    def find(obj):
        if isinstance(obj, torch.Tensor):
            if obj.dim() >= 1:
                leading.append(obj.shape[0])
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                find(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                find(o)

    find(batch)
    if not leading:
        return None
    n = leading[0]

    def cut(obj):
        if isinstance(obj, torch.Tensor):
            return obj[:rows].clone() if obj.dim() >= 1 and obj.shape[0] == n else obj
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*(cut(o) for o in obj))
        if isinstance(obj, (tuple, list)):
            return type(obj)(cut(o) for o in obj)
        if isinstance(obj, dict):
            return {k: cut(o) for k, o in obj.items()}
        return obj

    return cut(batch)


def _describe_batch(batch) -> str:
    if isinstance(batch, torch.Tensor):
        return f"shape {tuple(batch.shape)}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {', '.join(_describe_batch(b) for b in batch)}"
    if isinstance(batch, dict):
        return "a dict of " + ", ".join(f"{k!r}: {_describe_batch(v)}" for k, v in batch.items())
    return type(batch).__name__


def _random_probe(model, states):
    """8 random rows for the ``nn.Linear`` producing the first hidden state, and their description."""
    if not states or not states[0].tensors:
        return None, ""
    owner = _owner(states[0].tensors[0][0])
    layer = _modules_by_name(model).get(owner)
    if not isinstance(layer, nn.Linear) or not layer.weight.is_floating_point():
        return None, ""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_ROWS, layer.in_features, generator=gen, dtype=torch.float64)
    x = x.to(device=layer.weight.device, dtype=layer.weight.dtype)
    return x, f"a random probe of shape {tuple(x.shape)} built from the {layer.in_features} inputs of {owner!r}"


def _run_seeded(model, forward, batch, seed: int = 0):
    with _rng_scope(model):
        torch.manual_seed(seed)
        return forward(model, batch)


def _flat_outputs(output) -> list:
    """The tensors in a model's output (a tensor, or nested tuples/lists/dicts of them), in order."""
    if isinstance(output, torch.Tensor):
        return [output.detach()]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _flat_outputs(o)]
    if isinstance(output, dict):
        return [t for o in output.values() for t in _flat_outputs(o)]
    return []


def match_weights(
    model_a: nn.Module,
    model_b: nn.Module,
    spec=None,
    *,
    max_iter: int = 100,
    seed: int = 0,
    tol: float = 1e-12,
    init: str = "forward",
) -> Alignment:
    """Weight matching (paper Algorithm 1): align ``model_b`` to ``model_a`` by their weights.

    Visits the hidden states in a random order (``seed``) and replaces each
    state's group element by the exact maximiser of ``sum <theta_A, pi(theta_B)>``
    with the others held fixed; stops after a sweep that raises the objective
    by at most ``tol`` (relative), or after ``max_iter`` sweeps. From its
    starting point the objective never decreases.

    ``init="identity"`` starts from the identity at every state, as Algorithm 1
    is written. ``init="forward"`` (default) first sweeps the states in spec
    order (the forward order) matching each by its producing tensors only,
    with the earlier states already aligned: coordinate ascent over continuous
    groups can stall in a poor local maximum from the identity (e.g. with the
    identity activation's O(C)), while this start already recovers any exact
    group-transformed copy whose producing weights have full rank.
    """
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    states = _resolve_pair(model_a, model_b, spec)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    touching = {}  # key -> [(axis, state index)]
    for h, s in enumerate(states):
        for key, axis in s.tensors:
            touching.setdefault(key, []).append((axis, h))
    A = {k: sa[k].detach().double() for k in touching}
    B = {k: sb[k].detach().double() for k in touching}
    P = [torch.eye(s.group.channels, dtype=torch.float64) for s in states]

    def moved(key, skip=None):
        t = B[key]
        for axis, h in touching[key]:
            if h != skip:
                t = _move(P[h], t, axis)
        return t

    def total():
        return float(sum((A[k] * moved(k)).sum() for k in touching))

    def solve(h, tensors):
        C = states[h].group.channels
        corr = torch.zeros(C, C, dtype=torch.float64)
        for key, axis in tensors:
            a = A[key].movedim(axis, 0).reshape(C, -1)
            b = moved(key, skip=h).movedim(axis, 0).reshape(C, -1)
            corr += a @ b.T
        P[h], _ = states[h].group.solve(corr)

    if init == "forward":
        # Producers only, in forward order: each state then sees inputs already aligned
        # and ignores consumers whose other side is not aligned yet.
        for h, s in enumerate(states):
            solve(h, s.tensors[: s.num_producers] or s.tensors)
    elif init != "identity":
        raise ValueError(f"init={init!r}; use 'forward' (greedy start) or 'identity' (Algorithm 1 as written)")
    gen = torch.Generator().manual_seed(seed)
    trace = [total()]
    for _ in range(max_iter):
        for h in torch.randperm(len(states), generator=gen).tolist():
            solve(h, states[h].tensors)
        trace.append(total())
        if trace[-1] - trace[-2] <= tol * max(1.0, abs(trace[-2])):
            break
    return _make_alignment(states, {s.name: P[h] for h, s in enumerate(states)}, trace, "weights")


def _batches(data) -> list:
    """A tensor or tuple is one batch; any other iterable (list, DataLoader) is a sequence of batches."""
    if isinstance(data, (torch.Tensor, tuple)):
        return [data]
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be a tensor, a tuple or an iterable of batches, got {type(data).__name__}") from None
    # a one-shot iterator would be exhausted after the first pass
    return list(it) if it is data else data


def _default_forward(model, batch):
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0])  # (inputs, targets, ...) as a DataLoader yields them
    raise TypeError(
        f"cannot feed a batch of type {type(batch).__name__} to the model; pass forward=lambda model, batch: ..."
    )


class _EvalMode:
    """Put models in eval mode and restore each module's flag afterwards."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.flags = [[(m, m.training) for m in model.modules()] for model in self.models]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc):
        for flags in self.flags:
            for m, t in flags:
                m.training = t


def match_states(
    model_a: nn.Module,
    model_b: nn.Module,
    data,
    spec=None,
    *,
    where: str = "pre",
    forward: Optional[Callable] = None,
    seed: int = 0,
) -> Alignment:
    """State matching (paper Algorithm 2): align ``model_b`` to ``model_a`` by their hidden states on data.

    Runs both models (in eval mode, without gradients, with the same random
    seed per batch so that sampling layers draw the same noise) over
    ``data``, accumulates for each hidden state the cross second moment
    ``sum_n x_A(n) x_B(n)^T`` and takes the group element maximising
    ``<P, that>``.

    ``where="pre"`` (default) reads the state right after the linear map,
    before the activation: the paper's hidden state ``x' = w' x`` (Section
    3.3); it keeps the sign and section information that ReLU and hard CoLU
    zero out, so the correlations are better conditioned. ``where="post"``
    reads the activation's output. Both transform exactly by ``P``, so
    either recovers a model moved by a group element, except that after the
    activation channels that are zero on all of ``data`` (dead ReLU units,
    sections of cones whose axis is never positive) carry no correlation and
    are matched arbitrarily.

    Because the aligned model computes the same function, aligning one state
    does not change the later states of B: one forward pass of each model is
    all Algorithm 2 needs.

    ``data`` is a batch (tensor or tuple) or an iterable of batches;
    ``forward(model, batch)`` runs a model on a batch (default: ``model(batch)``
    or ``model(batch[0])`` for a tuple/list batch).
    """
    if where not in ("pre", "post"):
        raise ValueError(f"where={where!r}; use 'pre' (after the linear map) or 'post' (after the activation)")
    states = _resolve_pair(model_a, model_b, spec)
    forward_given = forward
    forward = forward or _default_forward
    targets = []
    for s in states:
        name = s.pre if where == "pre" else s.post
        if name is None:
            raise ValueError(
                f"hidden state {s.name!r} has no post= module, so where='post' cannot read it; "
                f"give post='<activation module name>' in its HiddenState or use where='pre'"
            )
        if name in targets:
            other = states[targets.index(name)].name
            raise ValueError(
                f"hidden states {other!r} and {s.name!r} both read the output of module {name!r} "
                f"(where={where!r}), so their states cannot be told apart; give each hidden state its own "
                f"{where}= module (a separate module instance per position), or use "
                f"where={'pre' if where == 'post' else 'post'!r}"
            )
        targets.append(name)
    corr = [torch.zeros(s.group.channels, s.group.channels, dtype=torch.float64) for s in states]
    count, probe = 0, None
    batches = _batches(data)
    with _EvalMode(model_a, model_b), torch.no_grad():
        for batch in batches:
            if probe is None:
                probe = _first_rows(batch)  # what Alignment.apply checks the aligned model on
            captured = []
            for model in (model_a, model_b):
                caught = _capture(model, states, targets, forward, batch, seed)
                captured.append(caught)
            for h, s in enumerate(states):
                xa, xb = captured[0][h], captured[1][h]
                if xa.shape != xb.shape:
                    raise ValueError(f"hidden state {s.name!r}: shapes {tuple(xa.shape)} and {tuple(xb.shape)} differ")
                corr[h] += xa.T @ xb
            count += captured[0][0].shape[0]
    if count == 0:
        raise ValueError("data yielded no batches; match_states needs at least one batch")
    transforms, before, after = {}, 0.0, 0.0
    for h, s in enumerate(states):
        P, value = s.group.solve(corr[h])
        transforms[s.name] = P
        before += float(torch.diagonal(corr[h]).sum())
        after += value
    return _make_alignment(states, transforms, [before / count, after / count], "states",
                           probe=probe, forward=forward_given)


def _capture(model, states, targets, forward, batch, seed):
    named = list(model.named_modules(remove_duplicate=False))
    modules = dict(named)
    outputs = {h: [] for h in range(len(states))}

    def record(h, output):
        s, name = states[h], targets[h]
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"hidden state {s.name!r}: module {name!r} returned {type(output).__name__}, not a tensor; "
                f"point pre=/post= at a module that outputs the state"
            )
        x = output.detach().movedim(s.state_dim, -1)
        if x.shape[-1] != s.group.channels:
            raise ValueError(
                f"hidden state {s.name!r}: module {name!r} outputs {x.shape[-1]} channels on axis "
                f"{s.state_dim}, expected {s.group.channels}; fix state_dim= or pre=/post="
            )
        outputs[h].append(x.reshape(-1, x.shape[-1]).double())

    # A module object placed at several positions is hooked once; its k-th call in a forward pass is
    # attributed to the k-th of its names in registration order (modulo their number): the order in
    # which an nn.Sequential calls them.
    hooked = {}  # id(module) -> (module, names in registration order, [state indices], call counter)
    for h, name in enumerate(targets):
        module = modules[name]
        if id(module) not in hooked:
            hooked[id(module)] = (module, [n for n, m in named if m is module], [], [0])
        hooked[id(module)][2].append(h)
    handles = []
    for module, names, indices, calls in hooked.values():
        def hook(_module, _inputs, output, names=names, indices=indices, calls=calls):
            current = names[calls[0] % len(names)]
            calls[0] += 1
            for h in indices:
                if targets[h] == current:
                    record(h, output)
        handles.append(module.register_forward_hook(hook))
    try:
        with _rng_scope(model):
            torch.manual_seed(seed)
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    for module, names, indices, calls in hooked.values():
        if len(names) > 1 and calls[0] % len(names):
            raise ValueError(
                f"module {names[0]!r} ({type(module).__name__}) is placed at {len(names)} positions "
                f"({', '.join(map(repr, names))}) but was called {calls[0]} times in one forward pass, so its "
                f"calls cannot be matched to its positions; use a separate module instance at each position"
            )
    for h, s in enumerate(states):
        if not outputs[h]:
            raise ValueError(f"hidden state {s.name!r}: module {targets[h]!r} was not called by the forward pass")
    return [torch.cat(outputs[h]) for h in range(len(states))]


# ------------------------------------------------------------ interpolation
def interpolate(model_a: nn.Module, model_b: nn.Module, s: float) -> nn.Module:
    """A copy of ``model_a`` with weights ``(1 - s) theta_A + s theta_B`` (buffers too).

    Integer buffers (e.g. BatchNorm's step counter) are taken from model A.
    ``interpolate(m, m, s)`` reproduces ``m`` exactly.
    """
    _check_pair(model_a, model_b)
    out = copy.deepcopy(model_a)
    sd, sb = out.state_dict(), model_b.state_dict()
    with torch.no_grad():
        for k, t in sd.items():
            if t.is_floating_point():
                # lerp is exact when both ends are equal, so a model with itself has zero barrier
                t.copy_(torch.lerp(t, sb[k].to(t), float(s)))
    return out


def loss_curve(model_a, model_b, loss_fn, data, num_points: int = 11, *, seed: int = 0) -> list:
    """``[(s, L(theta_s)), ...]`` at ``num_points`` evenly spaced ``s`` in ``[0, 1]``.

    ``loss_fn(model, batch)`` returns a scalar (tensor or number); ``L`` is
    its mean over the batches of ``data``. Each model is evaluated in eval
    mode without gradients, with the random seed reset to ``seed`` before
    each pass so that every point of the path sees the same noise.
    """
    if not (isinstance(num_points, int) and num_points >= 2):
        raise ValueError(f"num_points must be an int >= 2 (the two ends), got {num_points!r}")
    batches = _batches(data)
    curve = []
    for i in range(num_points):
        s = i / (num_points - 1)
        model = interpolate(model_a, model_b, s)
        model.eval()
        values = []
        with torch.no_grad(), _rng_scope(model):
            torch.manual_seed(seed)
            for batch in batches:
                value = loss_fn(model, batch)
                if isinstance(value, torch.Tensor):
                    if value.numel() != 1:
                        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(value.shape)}")
                    value = value.item()
                values.append(float(value))
        if not values:
            raise ValueError("data yielded no batches; the loss curve needs at least one batch")
        curve.append((s, sum(values) / len(values)))
    return curve


def loss_barrier(model_a, model_b, loss_fn, data, num_points: int = 11, *, seed: int = 0) -> dict:
    """The loss barrier of paper eq. (11) on the straight line from ``model_a`` to ``model_b``.

    ``sup_s L((1-s) theta_0 + s theta_1) / ((1-s) L(theta_0) + s L(theta_1)) - 1``
    over ``num_points`` values of ``s``. The barrier is *relative*: 0.1 means
    a 10% loss increase over the straight line between the two end losses, so
    both end losses must be positive.

    Returns ``{"barrier": float, "curve": [(s, loss), ...], "relative": [(s, B(s)), ...]}``.
    See :func:`loss_curve` for ``loss_fn`` and ``data``.
    """
    curve = loss_curve(model_a, model_b, loss_fn, data, num_points, seed=seed)
    l0, l1 = curve[0][1], curve[-1][1]
    if not (math.isfinite(l0) and math.isfinite(l1) and l0 > 0 and l1 > 0):
        raise ValueError(
            f"the barrier of eq. (11) is relative and needs positive end losses, got L(theta_0)={l0!r} and "
            f"L(theta_1)={l1!r}; use a positive loss (e.g. add a constant) or read the absolute values "
            f"from loss_curve()"
        )
    relative = [(s, value / ((1 - s) * l0 + s * l1) - 1.0) for s, value in curve]
    return {"barrier": max(b for _, b in relative), "curve": curve, "relative": relative}


def kl_standard_normal(mu: torch.Tensor, logvar: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the last axis, averaged over the rest.

    The KL term of a VAE, for the KL barrier of paper Figure 14. With a
    deterministic latent ``z``, pass its batch statistics:
    ``kl_standard_normal(z.mean(0), z.var(0).log())``. Example::

        def kl_loss(vae, batch):
            z = vae.encode(batch[0])
            return kl_standard_normal(z.mean(0), z.var(0).log())

        loss_barrier(vae_a, aligned_b, kl_loss, test_loader)["curve"]
    """
    if logvar is None:
        logvar = torch.zeros_like(mu)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.sum(-1).mean() if kl.dim() > 1 else kl.sum()
