"""The result of matching: :class:`Alignment`, which moves model B and checks that its function is kept."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from colu.align.running import EvalMode, default_forward, run_seeded
from colu.align.states import modules_by_name, owner_of
from colu.symmetry import apply_along


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
                work[key] = apply_along(t, P, axis)
        with torch.no_grad():
            for key, t in work.items():
                sd[key].copy_(t.to(sd[key].dtype))
        self._verify(model_b, out, probe, forward, [sd[key].dtype for key in work])
        return out

    def _verify(self, model_b, moved, probe, forward, dtypes) -> None:
        """Raise (or warn, for a deliberate group override) if ``moved`` computes another function than ``model_b``."""
        forward = forward or self._forward or default_forward
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
        with EvalMode(model_b, moved), torch.no_grad():
            try:
                expected = _flat_outputs(run_seeded(model_b, forward, probe))
            except Exception:
                if guessed:
                    return  # the model's input is not what the first linear layer takes: nothing to probe with
                raise
            got = _flat_outputs(run_seeded(moved, forward, probe))
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


def make_alignment(states, transforms, objective, method, probe=None, forward=None) -> Alignment:
    """The :class:`Alignment` moving the resolved hidden ``states`` by ``transforms`` (name -> P); ``probe``
    and ``forward`` (default ``None``) are what :meth:`Alignment.apply` checks the moved model with."""
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


def first_rows(batch, rows: int = _PROBE_ROWS):
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
    owner = owner_of(states[0].tensors[0][0])
    layer = modules_by_name(model).get(owner)
    if not isinstance(layer, nn.Linear) or not layer.weight.is_floating_point():
        return None, ""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_ROWS, layer.in_features, generator=gen, dtype=torch.float64)
    x = x.to(device=layer.weight.device, dtype=layer.weight.dtype)
    return x, f"a random probe of shape {tuple(x.shape)} built from the {layer.in_features} inputs of {owner!r}"


def _flat_outputs(output) -> list:
    """The tensors in a model's output (a tensor, or nested tuples/lists/dicts of them), in order."""
    if isinstance(output, torch.Tensor):
        return [output.detach()]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _flat_outputs(o)]
    if isinstance(output, dict):
        return [t for o in output.values() for t in _flat_outputs(o)]
    return []
