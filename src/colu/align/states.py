"""Hidden states: which tensors produce and consume each one, and the symmetry group acting on it.

:class:`HiddenState` describes one hidden state; :func:`infer_spec` reads them
from an ``nn.Sequential`` (every position of a module object placed at several
positions, nested stacks flattened) or a model's ``HIDDEN_STATES`` attribute;
:func:`resolve_spec` checks a description against a model and resolves each
group with :func:`colu.groups.group_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from torch import nn

from colu.groups import COMPONENTWISE, EVAL_IDENTITY, Group, group_of, is_group_name
from colu.modules import CoLU, RCoLU

SPEC_HELP = "describe the hidden states with spec=[HiddenState(...), ...] (see help(colu.align))"


@dataclass
class HiddenState:
    """One hidden state between linear maps, as the alignment code sees it.

    Args:
        name: a label (keys :attr:`Alignment.transforms`).
        group: the activation's group: an activation module, the name of a
            module in the model, a :class:`~colu.ConeSpec`, a :class:`Group`,
            ``"permutation"`` or ``"orthogonal"``.
        producers: ``state_dict`` keys of the tensors that produce the state
            (hidden axis 0), or ``(key, axis)`` pairs (default: none).
        consumers: keys of the tensors that read the state (hidden axis 1),
            or ``(key, axis)`` pairs (default: none). Producers and
            consumers together must list at least one tensor.
        pre: name of the module whose output is the state before the
            activation (default ``None``: the module owning the first producer).
        post: name of the module whose output is the state after the
            activation (default ``None``; needed only for
            ``match_states(..., where="post")``).
        state_dim: the channel axis of those module outputs (default -1).
    """

    name: str
    group: Any
    producers: Sequence[Union[str, tuple]] = ()
    consumers: Sequence[Union[str, tuple]] = ()
    pre: Optional[str] = None
    post: Optional[str] = None
    state_dim: int = -1


@dataclass(frozen=True)
class ResolvedState:
    """A :class:`HiddenState` checked against a model: its group resolved, its tensors with their axes."""

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
            f"attribute) are read automatically; {SPEC_HELP}"
        )
    items = list(_flatten_sequential(model))
    linear_at = [i for i, (_, m) in enumerate(items) if isinstance(m, nn.Linear)]
    if len(linear_at) < 2:
        raise ValueError(
            f"{type(model).__name__} has {len(linear_at)} nn.Linear layer(s), so no hidden state to align; "
            f"alignment needs at least two linear layers, or {SPEC_HELP}"
        )
    spec = []
    for i, j in zip(linear_at, linear_at[1:]):
        (name_in, lin_in), (name_out, lin_out) = items[i], items[j]
        between = items[i + 1:j]
        for name, m in between:
            # a learnable cone angle stays as it is: its group permutes only cones of equal angle
            if isinstance(m, (CoLU, RCoLU)) and not any(True for _ in m.buffers()):
                continue
            if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                raise ValueError(
                    f"module {name!r} ({type(m).__name__}) between {name_in!r} and {name_out!r} has "
                    f"parameters or buffers, which weight alignment cannot move automatically; {SPEC_HELP}"
                )
        acts = [(n, m) for n, m in between if not isinstance(m, EVAL_IDENTITY)]
        if len(acts) <= 1:
            group = acts[0][1] if acts else None
        elif all(isinstance(m, COMPONENTWISE) for _, m in acts):
            group = "permutation"
        else:
            names = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in acts)
            raise ValueError(
                f"several activations between {name_in!r} and {name_out!r}: {names}; their common "
                f"symmetry group is not inferred; {SPEC_HELP}"
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


def modules_by_name(model: nn.Module) -> dict:
    """Every module of ``model`` under every name it is registered as (a shared module under each)."""
    return dict(model.named_modules(remove_duplicate=False))


def _spec_from_pairs(model: nn.Module, pairs: dict) -> list:
    modules = modules_by_name(model)
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
    modules = modules_by_name(model)
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
        if isinstance(given, str) and given in modules and not is_group_name(given):
            given = modules[given]
        group = _state_group(given, C)
        override = None
        if not isinstance(given, nn.Module) and entry.post in modules:
            # a group stated outright for a state whose activation module has another one: a deliberate
            # choice (e.g. a permutation-only baseline for CoLU), which may change the function
            try:
                own = _state_group(modules[entry.post], C)
            except ValueError:
                own = None
            if own is not None and own != group:
                override = (f"hidden state {entry.name!r} is given {group} while its activation {entry.post!r} "
                            f"({type(modules[entry.post]).__name__}) has {own}")
        pre = entry.pre if entry.pre is not None else owner_of(tensors[0][0])
        for label, mod in (("pre", pre), ("post", entry.post)):
            if mod is not None and mod not in modules:
                raise ValueError(f"hidden state {entry.name!r}: {label}={mod!r} is not a module of the model")
        resolved.append(ResolvedState(entry.name, group, tuple(tensors), len(entry.producers), pre, entry.post,
                                      entry.state_dim, override))
    names = [r.name for r in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"hidden-state names must be unique, got {names}")
    return resolved


def _state_group(activation: Any, channels: int) -> Group:
    """The group of ``activation`` (see :func:`colu.groups.group_of`) on a hidden state whose channels are
    the last axis of the linear layer's output."""
    if isinstance(activation, (CoLU, RCoLU)) and activation.dim != -1:
        raise ValueError(
            f"{type(activation).__name__}(dim={activation.dim}) after a linear layer: alignment reads "
            f"the channels of a hidden state on the last axis; use dim=-1, or {SPEC_HELP} with a "
            f"ConeSpec group"
        )
    return group_of(activation, channels)


def owner_of(key: str) -> str:
    """The name of the module owning the ``state_dict`` key ``key`` (``""`` for the model itself)."""
    return key.rsplit(".", 1)[0] if "." in key else ""


def resolve_pair(model_a: nn.Module, model_b: nn.Module, spec) -> list:
    """Resolve ``spec`` on both models; their activations must have the same groups."""
    check_same_architecture(model_a, model_b)
    states = resolve_spec(model_a, spec)
    for sa, sb in zip(states, resolve_spec(model_b, spec)):
        if sa.group != sb.group:
            raise ValueError(
                f"hidden state {sa.name!r} has {sa.group} in model_a but {sb.group} in model_b; "
                f"alignment needs the same activation configuration in both models"
            )
    return states


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
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
