"""One-call conversion of an existing model's activations to CoLU.

:func:`convert` swaps activation modules (``nn.ReLU``, ``nn.GELU``,
``nn.SiLU`` by default, or any class named by type or class name) for
:class:`colu.CoLU` configured for the tensors each one actually sees, and
returns a :class:`ConversionReport`.

How a site's channel axis and width are found:

* with ``example_input``: the model is run once (``no_grad``, eval mode,
  training flags restored afterwards) with forward hooks on every candidate.
  Each call is a *site*. Inputs of rank >= 4 (``NCHW``, ``NCDHW``, after
  convolutions and norms) use ``dim=1``; ranks 1-3 (``(N, C)``,
  ``(N, L, C)``) use ``dim=-1``. A rank-3 ``(N, C, L)`` Conv1d activation is
  the one case this rule gets wrong: pass ``dim=1`` for it.
* without it: only activations inside an ``nn.Sequential`` right after a
  layer whose output width is known (``Linear``, ``ConvNd``, ``BatchNormNd``,
  ``GroupNorm``, ``LayerNorm``) can be converted; ``dim`` comes from that
  layer (``-1`` after ``Linear``/``LayerNorm``, ``1`` otherwise) unless given.
  Anything else is skipped with the reason "pass example_input".

One module object called at several sites (diffusers' ``ResnetBlock2D``
applies one ``nn.SiLU`` to its feature maps and to the time embedding) is
replaced by one module serving all of them when every site's width fits the
cone spec: a plain :class:`colu.CoLU` if the sites agree on ``dim``, else a
:class:`MultiSiteCoLU` that picks ``dim`` from the input's rank. If any site
does not fit, the whole object is left alone (it cannot be half replaced).

Activations called as functions inside ``forward`` (``F.silu(x)``,
``torch.relu(x)``) cannot be swapped from outside the model; with
``example_input`` they are recorded in :attr:`ConversionReport.functional`
so you can see what stays component-wise.

CoLU has no parameters, so a converted model's saved weights load into the
original architecture without its CoLU modules. :func:`conversion_record`
describes them as JSON, to save beside the weights, and
:func:`apply_conversion_record` puts them back into a freshly built model.
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from colu import functional
from colu.modules import CoLU, RCoLU
from colu.spec import LAYOUTS, SCALINGS, ConeSpec, check_choice, check_flag, validate_cone_args

__all__ = [
    "convert", "ConversionReport", "Replacement", "Skip", "FunctionalUse", "MultiSiteCoLU",
    "conversion_record", "apply_conversion_record",
]

ON_MISMATCH = ("skip", "raise")

# functional activations worth reporting: calling them inside forward bypasses any module swap
_FUNCTIONAL = {
    torch.nn.functional.relu: "F.relu",
    torch.nn.functional.gelu: "F.gelu",
    torch.nn.functional.silu: "F.silu",
    torch.nn.functional.mish: "F.mish",
    torch.nn.functional.elu: "F.elu",
    torch.nn.functional.leaky_relu: "F.leaky_relu",
    torch.nn.functional.hardswish: "F.hardswish",
    torch.relu: "torch.relu",
    torch.Tensor.relu: "Tensor.relu",
}


class MultiSiteCoLU(CoLU):
    """A :class:`colu.CoLU` whose channel axis depends on the input's rank.

    Made by :func:`convert` for one activation module object used at sites
    with different layouts, e.g. feature maps ``(N, C, H, W)`` (``dim=1``) and
    a time embedding ``(N, C)`` (``dim=-1``). ``dims`` maps rank to ``dim``.
    """

    def __init__(self, dims: Dict[int, int], **kwargs):
        super().__init__(dim=-1, **kwargs)
        self.dims = {int(k): int(v) for k, v in dims.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in self.dims:
            raise ValueError(
                f"this CoLU was converted for inputs of rank {sorted(self.dims)}, got rank {x.dim()} "
                f"(shape {tuple(x.shape)}); convert again with an example_input that reaches this call"
            )
        return functional.colu(
            x, self.cone_dim, self.num_cones, share_axis=self.share_axis, scaling=self.scaling,
            dim=self.dims[x.dim()], eps=self.eps, layout=self.layout, axis_activation=self.axis_activation,
            componentwise=self.componentwise,
        )

    def extra_repr(self) -> str:
        rest = [p for p in super().extra_repr().split(", ") if not p.startswith("dim=")]
        return ", ".join(rest + [f"dims_by_rank={self.dims}"])


@dataclass
class Replacement:
    """One replaced site: ``name`` was an ``old_type`` seeing ``channels`` channels at ``dim``."""

    name: str
    old_type: str
    channels: int
    dim: int
    config: Dict[str, Any]


@dataclass
class Skip:
    """An activation module left in place, and why."""

    name: str
    reason: str


@dataclass
class FunctionalUse:
    """A functional activation called inside ``module``'s forward (not replaceable)."""

    module: str
    function: str
    calls: int
    shapes: List[Tuple[int, ...]]


@dataclass
class ConversionReport:
    """What :func:`convert` did. ``str(report)`` is a readable summary."""

    replaced: List[Replacement] = field(default_factory=list)
    skipped: List[Skip] = field(default_factory=list)
    functional: List[FunctionalUse] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.replaced)

    def __str__(self) -> str:
        names = {r.name for r in self.replaced}
        lines = [f"colu.convert: replaced {len(names)} activation module(s) at {len(self.replaced)} site(s), "
                 f"skipped {len(self.skipped)}"]
        if self.replaced:
            lines.append("  the network now computes a different function: fine-tune it before use")
        for r in self.replaced:
            cfg = r.config
            lines.append(
                f"  replaced {r.name} ({r.old_type}) C={r.channels} dim={r.dim} -> CoLU "
                f"G={cfg['num_cones']} S={cfg['cone_dim']} scaling={cfg['scaling']}"
                + (" shared axis" if cfg["share_axis"] else "")
                + (
                    (" (S=2: the component-wise activation)" if cfg.get("componentwise", True)
                     else " (S=2: two-dimensional cones)")
                    if cfg["cone_dim"] == 2 else ""
                )
            )
        for s in self.skipped:
            lines.append(f"  skipped  {s.name}: {s.reason}")
        for f in self.functional:
            lines.append(
                f"  functional {f.function} called {f.calls}x in {f.module or '<model>'} "
                f"(not replaceable; shapes {f.shapes[:3]})"
            )
        return "\n".join(lines)


def _matcher(replace):
    if isinstance(replace, (type, str)):
        replace = (replace,)
    types = tuple(r for r in replace if isinstance(r, type))
    names = {r for r in replace if isinstance(r, str)}
    bad = [r for r in replace if not isinstance(r, (type, str))]
    if bad:
        raise TypeError(f"replace must hold module classes or class names, got {bad[0]!r}")

    def match(module: nn.Module) -> bool:
        if isinstance(module, CoLU):
            return False
        if types and isinstance(module, types):
            return True
        return any(cls.__name__ in names for cls in type(module).__mro__)

    return match


def _site_dim(rank: int) -> int:
    return 1 if rank >= 4 else -1


class _FunctionalRecorder(TorchFunctionMode):
    """Records functional activation calls, attributed to the innermost running module."""

    def __init__(self, stack, candidates):
        super().__init__()
        self.stack, self.candidates = stack, candidates
        self.calls: Dict[Tuple[str, str], List[Tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _FUNCTIONAL.get(func)
        # inside a candidate module the call is that module's own implementation
        if name is not None and not any(id(m) in self.candidates for _, m in self.stack):
            where = self.stack[-1][0] if self.stack else ""
            shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
            self.calls.setdefault((where, name), []).append(shape)
        return func(*args, **(kwargs or {}))


def _run_example(model, example_input, candidates, names):
    """Run ``example_input`` once; return {id: [(rank, shape)]} per candidate and functional calls."""
    sites: Dict[int, List[Tuple[int, ...]]] = {i: [] for i in candidates}
    stack: List[Tuple[str, nn.Module]] = []
    handles = []

    def pre(mod, args):
        stack.append((names.get(id(mod), ""), mod))

    def post(mod, args, out):
        if stack:
            stack.pop()
        if id(mod) in sites and args and isinstance(args[0], torch.Tensor):
            sites[id(mod)].append(tuple(args[0].shape))

    for mod in {id(m): m for m in model.modules()}.values():
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    flags = {id(m): m.training for m in model.modules()}
    model.eval()
    recorder = _FunctionalRecorder(stack, candidates)
    try:
        with torch.no_grad(), recorder:
            if isinstance(example_input, dict):
                model(**example_input)
            elif isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            m.training = flags.get(id(m), m.training)
    functional = [FunctionalUse(where, fn, len(shapes), shapes) for (where, fn), shapes in recorder.calls.items()]
    return sites, functional


def _width_from_previous(model, name) -> Optional[Tuple[int, int]]:
    """(channels, dim) from the layer just before ``name`` in its nn.Sequential parent, if known."""
    parent_name, _, last = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules)
    pos = keys.index(last)
    if pos == 0:
        return None
    prev = parent._modules[keys[pos - 1]]
    if isinstance(prev, nn.Linear):
        return prev.out_features, -1
    if isinstance(prev, nn.LayerNorm) and len(prev.normalized_shape) == 1:
        return prev.normalized_shape[0], -1
    if isinstance(prev, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return prev.out_channels, 1
    if isinstance(prev, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return prev.num_features, 1
    if isinstance(prev, nn.GroupNorm):
        return prev.num_channels, 1
    return None


def convert(
    model: nn.Module,
    *,
    cone_dim: Optional[int] = None,
    num_cones: Optional[int] = None,
    scaling: str = "hard",
    share_axis: bool = False,
    layout: str = "grouped",
    componentwise: bool = True,
    replace: Sequence[Union[type, str]] = (nn.ReLU, nn.GELU, nn.SiLU),
    example_input: Any = None,
    dim: Optional[int] = None,
    on_mismatch: str = "skip",
) -> ConversionReport:
    """Replace ``model``'s activation modules with :class:`colu.CoLU`, in place.

    Conversion changes the function the model computes (CoLU is not a
    re-parametrisation of ReLU/GELU/SiLU): expect the loss to jump and
    fine-tune afterwards (``colu convert-check`` shows this on a small model).

    Args:
        model: any ``nn.Module``; modified in place.
        cone_dim, num_cones, scaling, share_axis, layout, componentwise: the
            CoLU config for every site (as in :class:`colu.CoLU`); the paper
            fine-tunes a Stable Diffusion UNet with ``num_cones=32,
            scaling="soft"``. ``componentwise=False`` makes sites whose cones
            have dimension 2 two-dimensional cones instead of the
            component-wise activation.
        replace: module classes or class names (e.g. ``"NewGELUActivation"``
            for transformers' GPT-2) to replace; subclasses match too.
        example_input: a tensor, a tuple of positional arguments or a dict of
            keyword arguments for one forward pass, used to find each site's
            width and channel axis (see the module docstring). Recommended.
        dim: force the channel axis of every site.
        on_mismatch: ``"skip"`` leaves an activation whose width does not fit
            the cone spec and records why; ``"raise"`` raises ``ValueError``
            naming the module.

    Returns:
        A :class:`ConversionReport` with ``replaced`` (name, old type,
        channels, dim, config per site), ``skipped`` (name, reason) and
        ``functional`` (functional activation calls seen; never replaced).
    """
    check_choice("scaling", scaling, SCALINGS)
    check_choice("layout", layout, LAYOUTS)
    check_choice("on_mismatch", on_mismatch, ON_MISMATCH)
    validate_cone_args(cone_dim, num_cones)
    check_flag("componentwise", componentwise)
    componentwise = bool(componentwise)
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise TypeError(f"dim must be an int or None, got {dim!r}")
    match = _matcher(replace)

    # every name a module object is registered under (shared modules have several)
    all_names: Dict[int, List[str]] = {}
    objects: Dict[int, nn.Module] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if name and match(mod):
            all_names.setdefault(id(mod), []).append(name)
            objects[id(mod)] = mod
    first_name = {i: names[0] for i, names in all_names.items()}

    report = ConversionReport()
    if example_input is not None:
        names = {id(m): n for n, m in model.named_modules()}
        sites, report.functional = _run_example(model, example_input, set(objects), names)
    else:
        sites = {}

    for key, mod in objects.items():
        label = first_name[key]
        old_type = type(mod).__name__
        if example_input is not None:
            shapes = list(dict.fromkeys(sites[key]))
            if not shapes:
                _mismatch(report, on_mismatch, label, "not called by example_input, so its width is unknown")
                continue
            found = []
            for shape in shapes:
                d = dim if dim is not None else _site_dim(len(shape))
                if not -len(shape) <= d < len(shape):
                    found = f"dim={d} is out of range for its input of shape {shape}"
                    break
                found.append((len(shape), shape[d], d))
            if isinstance(found, str):
                _mismatch(report, on_mismatch, label, found)
                continue
        else:
            prev = _width_from_previous(model, label)
            if prev is None:
                _mismatch(
                    report, on_mismatch, label,
                    "width unknown without example_input (not right after a Linear/Conv/norm layer in an "
                    "nn.Sequential); pass example_input",
                )
                continue
            found = [(None, prev[0], dim if dim is not None else prev[1])]
        site_set = list(dict.fromkeys(found))
        specs, problem = [], None
        for _, channels, d in site_set:
            try:
                specs.append(ConeSpec.resolve(channels, cone_dim, num_cones, share_axis=share_axis, layout=layout,
                                              componentwise=componentwise))
            except ValueError as err:
                problem = f"C={channels} at dim={d} does not fit the cone spec: {err}"
                break
        if problem is None:
            dims_by_rank: Dict[int, int] = {}
            for rank, _, d in site_set:
                if rank is not None and dims_by_rank.setdefault(rank, d) != d:
                    problem = f"inputs of rank {rank} use both dim={dims_by_rank[rank]} and dim={d}"
        if problem is not None:
            if len(site_set) > 1:
                problem += f" (one module object used at {len(site_set)} sites, so it is kept at all of them)"
            _mismatch(report, on_mismatch, label, problem)
            continue
        kwargs = dict(cone_dim=cone_dim, num_cones=num_cones, share_axis=share_axis, scaling=scaling, layout=layout,
                      componentwise=componentwise)
        distinct_dims = {d for _, _, d in site_set}
        if len(distinct_dims) == 1:
            new = CoLU(dim=distinct_dims.pop(), **kwargs)
        else:
            new = MultiSiteCoLU({r: d for r, _, d in site_set}, **kwargs)
        for name in all_names[key]:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
        for (_, channels, d), spec in zip(site_set, specs):
            config = dict(
                num_cones=spec.num_cones, cone_dim=spec.cone_dim, scaling=scaling,
                share_axis=share_axis, layout=layout, componentwise=componentwise,
            )
            report.replaced.append(Replacement(label, old_type, channels, d, config))
    return report


def _mismatch(report: ConversionReport, on_mismatch: str, name: str, reason: str) -> None:
    if on_mismatch == "raise":
        raise ValueError(
            f"cannot convert activation {name!r}: {reason}. Pick a cone_dim/num_cones that fits, "
            f"or pass on_mismatch='skip' to keep the original activation there"
        )
    report.skipped.append(Skip(name, reason))


# the version of the record written by conversion_record; apply_conversion_record refuses others
RECORD_VERSION = 1


def conversion_record(model: nn.Module, report: Optional[ConversionReport] = None) -> Dict[str, Any]:
    """A JSON-serialisable description of the CoLU modules in ``model``.

    Saving a converted model's ``state_dict`` (or a diffusers/transformers
    ``save_pretrained``) keeps the weights but not the activations, since CoLU
    has no parameters: loaded into a freshly built model they would run
    through the original SiLU/ReLU/GELU. The record saved beside them lets
    :func:`apply_conversion_record` put the same CoLU modules back, without an
    example input and without pickling modules.

    Args:
        model: a model converted by :func:`convert` (any ``colu.CoLU``,
            :class:`MultiSiteCoLU` or ``colu.RCoLU`` in it is recorded).
        report: the :class:`ConversionReport` of that conversion; adds the
            replaced type per module (checked when the record is applied) and
            the sites, skips and functional calls, for whoever reads the file.

    Returns:
        A dict of JSON types: ``version``, ``modules`` (one entry per module
        object: its registered ``names``, ``class``, constructor ``options``,
        ``dims_by_rank`` for a :class:`MultiSiteCoLU`, ``old_type``) and,
        with ``report``, ``sites``, ``skipped`` and ``functional``.
    """
    old_types = {r.name: r.old_type for r in report.replaced} if report is not None else {}
    objects: Dict[int, Tuple[nn.Module, List[str]]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if name and isinstance(mod, (CoLU, RCoLU)):
            objects.setdefault(id(mod), (mod, []))[1].append(name)
    modules = []
    for mod, names in objects.values():
        entry: Dict[str, Any] = {"names": names, "class": type(mod).__name__}
        if type(mod) not in (CoLU, MultiSiteCoLU, RCoLU):
            raise TypeError(
                f"cannot record {names[0]!r}: a {type(mod).__name__} (subclass of {type(mod).__mro__[1].__name__}) "
                f"can only be rebuilt from a record as colu.CoLU, MultiSiteCoLU or colu.RCoLU"
            )
        options = dict(mod._options)
        if isinstance(mod, MultiSiteCoLU):
            options.pop("dim")
            entry["dims_by_rank"] = {str(rank): d for rank, d in sorted(mod.dims.items())}
        entry["options"] = options
        entry["old_type"] = next((old_types[n] for n in names if n in old_types), None)
        modules.append(entry)
    record: Dict[str, Any] = {"version": RECORD_VERSION, "modules": modules}
    if report is not None:
        record["sites"] = [
            {"name": r.name, "old_type": r.old_type, "channels": r.channels, "dim": r.dim, **r.config}
            for r in report.replaced
        ]
        record["skipped"] = [{"name": s.name, "reason": s.reason} for s in report.skipped]
        record["functional"] = [
            {"module": f.module, "function": f.function, "calls": f.calls, "shapes": [list(x) for x in f.shapes]}
            for f in report.functional
        ]
    return record


def apply_conversion_record(model: nn.Module, record: Dict[str, Any]) -> List[str]:
    """Put the CoLU modules described by ``record`` into ``model``, in place.

    ``model`` is the architecture that was converted, freshly built or loaded
    with the converted model's weights (they fit: CoLU adds no parameters).
    Every module named in the record must exist; where the record knows the
    replaced type (``old_type``), the module there must still be of that type,
    so a record applied twice, or to another architecture, fails loudly
    instead of converting half a model.

    Args:
        model: the model to convert.
        record: a dict from :func:`conversion_record` (e.g. read back from JSON).

    Returns:
        The names whose modules were replaced.
    """
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        found = record.get("version") if isinstance(record, dict) else type(record).__name__
        raise ValueError(
            f"not a conversion record of version {RECORD_VERSION} (version {found!r}); "
            f"write one with colu.convert.conversion_record(model, report)"
        )
    classes = {"CoLU": CoLU, "MultiSiteCoLU": MultiSiteCoLU, "RCoLU": RCoLU}
    present = dict(model.named_modules(remove_duplicate=False))
    plan = []
    for entry in record.get("modules", []):
        names = entry.get("names") or []
        cls = classes.get(entry.get("class"))
        if cls is None or not names:
            raise ValueError(
                f"conversion record entry {entry!r}: needs 'names' and a 'class' among {sorted(classes)}"
            )
        for name in names:
            if name not in present:
                raise ValueError(
                    f"conversion record names module {name!r}, which this {type(model).__name__} does not have: "
                    f"the record belongs to another architecture"
                )
            old = entry.get("old_type")
            if old is not None and type(present[name]).__name__ != old:
                raise ValueError(
                    f"module {name!r} is a {type(present[name]).__name__}, the conversion record expects the "
                    f"{old} it replaced: apply the record to the unconverted model (once)"
                )
        options = dict(entry.get("options", {}))
        if cls is MultiSiteCoLU:
            new = MultiSiteCoLU({int(k): v for k, v in entry["dims_by_rank"].items()}, **options)
        else:
            new = cls(**options)
        plan.append((names, new))
    replaced = []
    # replaced only after every entry checked out, so a bad record leaves the model untouched
    for names, new in plan:
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
            replaced.append(name)
    return replaced


class _CallableModule(types.ModuleType):
    """This module, callable as its own :func:`convert`.

    ``colu.convert(model, ...)`` is the documented entry point, and
    ``colu.convert.ConversionReport`` (or ``import colu.convert``) must reach
    this module: a package attribute cannot be both a function and a module,
    so the module forwards calls to the function instead of the function
    hiding the module.
    """

    def __call__(self, *args, **kwargs) -> ConversionReport:
        # forwarded untouched, so a wrong call fails with convert()'s own TypeError
        return convert(*args, **kwargs)


# inspect.signature(colu.convert) reads this, so introspection shows the function's parameters
__signature__ = inspect.signature(convert)
sys.modules[__name__].__class__ = _CallableModule
