"""Finding the group element at each hidden state: weight matching and state matching (paper Algorithms 1, 2)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from colu.align.alignment import Alignment, first_rows, make_alignment
from colu.align.running import EvalMode, batches_of, default_forward, rng_scope
from colu.align.states import resolve_pair
from colu.symmetry import apply_along


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
    states = resolve_pair(model_a, model_b, spec)
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
                t = apply_along(t, P[h], axis)
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
    return make_alignment(states, {s.name: P[h] for h, s in enumerate(states)}, trace, "weights")


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
    states = resolve_pair(model_a, model_b, spec)
    forward_given = forward
    forward = forward or default_forward
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
    batches = batches_of(data)
    with EvalMode(model_a, model_b), torch.no_grad():
        for batch in batches:
            if probe is None:
                probe = first_rows(batch)  # what Alignment.apply checks the aligned model on
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
    return make_alignment(states, transforms, [before / count, after / count], "states",
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
        with rng_scope(model):
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
