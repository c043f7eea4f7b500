"""Readings: the settings where an experiment interprets the paper, declared beside its ``PAPER_SETTINGS``.

Where the paper is silent ("the learning rate is 1e-3", and no schedule) or
ambiguous ("Adam with weight decay 1e-2": L2 or decoupled?), an experiment has
to choose. Each such choice is a :class:`Reading` in the experiment's
``readings`` (a field of :class:`colu_lab.framework.contract.Experiment`): the
config setting it decides, the value we take, the paper's sentence it reads
(or :data:`PAPER_SILENT`), the values a user can switch to, and why ours.
The experiment's module docstring argues the choice at length; a reading
holds what a user needs at the command line, and ``colu run EXP
--show-config`` prints it under the setting (:func:`show_config`), so that
every number a run produces can be traced to the sentence it interprets.

A reading must name a setting of the experiment's config, and its value and
alternatives must be values that setting takes (``--set`` syntax): the
experiment is refused when it is built otherwise (:func:`check_readings`),
so a renamed setting cannot leave a reading behind that points nowhere.

Readings that two experiments share (the diffusion UNet and the Stable
Diffusion fine-tune read the same sentence about weight decay) are defined
here once and listed by both.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass

from colu_lab.framework.config import coerce

PAPER_SILENT = "the paper states none"
"""The quote of a reading where the paper says nothing about the setting."""


@dataclass(frozen=True)
class Reading:
    """One setting whose value interprets the paper.

    ``setting``: the config key (``schedule``). ``value``: our reading, as
    ``--set`` writes it (``"step"``); the ``paper`` preset resolves the
    setting to it. ``quote``: where the paper speaks and what it says
    (``'Sec. 5.4: "... a learning rate of 10^-3 ..."'``), or
    :data:`PAPER_SILENT`. ``alternatives``: value as ``--set`` writes it ->
    what it means, the other readings a user can switch to. ``why``: one or
    two sentences for our value (the module docstring holds the argument).
    ``option``: the command-line option that sets it where the command has no
    ``--set`` (``finetune-diffusers``' ``--weight-decay-mode``) [""].
    """

    setting: str
    value: str
    quote: str
    alternatives: dict
    why: str
    option: str = ""

    def switch(self, value: str) -> str:
        """How a user asks for ``value``: ``--set setting=value``, or the command's own option."""
        if self.option:
            return f"{self.option} {value}"
        return f"--set {self.setting}={value}"

    def choices(self) -> dict:
        """Every value this reading names -> what it means, ours first."""
        return {self.value: f"our reading: {self.why}", **self.alternatives}


# ---------------------------------------------------------------- shared readings
DIFFUSION_WEIGHT_DECAY = Reading(
    "weight_decay_mode", "decoupled",
    'App. D.3: "All runs last 100K steps and use the Adam optimizer with ... a weight decay coefficient of '
    '10^-2"; the fine-tune: "The training details are the same as above."',
    {"l2": "torch.optim.Adam(weight_decay=1e-2): 1e-2 x w added to the gradient, which Adam then rescales"},
    "decoupled decay (torch.optim.AdamW) is how diffusers' training scripts, whose pretrained model and "
    "Pokémon data the fine-tune uses, apply 'Adam with weight decay' (train_text_to_image.py: AdamW, "
    "--adam_weight_decay 1e-2 by default); the UNet and the fine-tune read the sentence alike.")
"""The weight-decay reading the diffusion UNet and the Stable Diffusion fine-tune share (Appendix D.3)."""


# ---------------------------------------------------------------- checks
def check_readings(config_class, readings, where: str) -> None:
    """Raise ValueError unless every reading names a setting of ``config_class`` with values it takes."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    seen = set()
    for reading in readings:
        if not isinstance(reading, Reading):
            raise ValueError(f"{where}: readings must be Reading(setting, value, quote, alternatives, why), "
                             f"not {type(reading).__name__}")
        if reading.setting not in fields:
            raise ValueError(f"{where}: the reading of {reading.setting!r} names a setting its config does not "
                             f"have (settings: {', '.join(sorted(fields))}); rename it or add the setting")
        if reading.setting in seen:
            raise ValueError(f"{where}: {reading.setting!r} has two readings; merge them into one")
        seen.add(reading.setting)
        if not reading.quote or not reading.why or not reading.alternatives:
            raise ValueError(f"{where}: the reading of {reading.setting!r} needs a quote (or PAPER_SILENT), a why "
                             "and at least one alternative")
        for value in (reading.value, *reading.alternatives):
            coerce(config_class, reading.setting, value, f"{where}: the reading of {reading.setting!r}")
        if reading.value in reading.alternatives:
            raise ValueError(f"{where}: the reading of {reading.setting!r} lists its own value "
                             f"{reading.value!r} among the alternatives")


# ---------------------------------------------------------------- --show-config
def setting_text(value) -> str:
    """A config value as ``--set`` takes it: ``true``, ``none``, ``128,256`` (numbers), ``relu;colu:S=4``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        if not value:
            return "(empty)"
        sep = ";" if all(isinstance(v, str) for v in value) else ","
        return sep.join(setting_text(v) for v in value)
    return str(value)


def show_config(exp, cfg, origins: dict | None = None, title: str = "") -> str:
    """The resolved settings of ``cfg``, one per line, each reading of ``exp`` marked and explained beneath it.

    ``origins``: setting -> where its value came from ("preset paper", "--set lr=0.1"); unnamed settings read
    "default". An empty ``activations`` is shown as the experiment's default list, which a run trains.
    """
    origins = origins or {}
    readings = {r.setting: r for r in getattr(exp, "readings", ())}
    values = dataclasses.asdict(cfg)
    if not values.get("activations"):
        values["activations"] = list(exp.default_activations(cfg))
        origins = {**origins, "activations": "default (the experiment's list)"}
    shown = {key: f"{key} = {setting_text(value)}" for key, value in values.items()}
    width = min(46, max(map(len, shown.values())))
    lines = [title or f"{exp.name}: the resolved settings (nothing is trained; drop --show-config to train)",
             f"Settings marked 'reading' interpret the paper where it is silent or ambiguous: beneath each, the "
             f"sentence it reads, our value and why, and the --set that switches it ({len(readings)} here).", ""]
    for key, value in values.items():
        tag = origins.get(key, "default")
        reading = readings.get(key)
        if reading is not None:
            tag += "   reading"
        lines.append(f"  {shown[key].ljust(width)}   {tag}")  # three spaces at least: a long value stays apart
        if reading is None:
            continue
        lines += reading_lines(reading, value,
                               lambda text, v, r=reading: coerce(type(cfg), r.setting, text, "reading") == v)
    return "\n".join(lines)


def reading_lines(reading: Reading, value, same=None) -> list[str]:
    """The lines beneath a reading's setting: the paper's sentence, ours and why, the switches to the others.

    ``same(text, value)``: whether the value written ``text`` is ``value`` (default: ``setting_text(value) ==
    text``; a config compares them after :func:`colu_lab.framework.config.coerce`).
    """
    same = same or (lambda text, v: setting_text(v) == text)
    pad = " " * 6
    ours = same(reading.value, value)
    lines = textwrap.wrap(f"paper: {reading.quote}", 110, initial_indent=pad, subsequent_indent=pad + "  ")
    head = (f"ours: {reading.value}" if ours else
            f"ours: {reading.value} (this run: {setting_text(value)})")
    lines += textwrap.wrap(f"{head}: {reading.why}", 110, initial_indent=pad, subsequent_indent=pad + "  ")
    others = {v: m for v, m in reading.choices().items() if not same(v, value)}
    if not ours:
        others[reading.value] = "our reading, above"
    for i, (alt, meaning) in enumerate(others.items()):
        lead = "switch: " if i == 0 else " " * 8
        lines += textwrap.wrap(f"{lead}{reading.switch(alt)}  ({meaning})", 110, initial_indent=pad,
                               subsequent_indent=pad + " " * 10)
    return lines


def readings_markdown(readings, config_class=None) -> str:
    """The readings as a Markdown list for the docs: setting and our value, the paper's sentence, why, the switches.

    With ``config_class``, a reading whose value is not the config's default says so (its value is then the
    paper preset's).
    """
    out = []
    for r in readings:
        where = "the default"
        if config_class is not None:
            default = getattr(config_class(), r.setting)
            if coerce(config_class, r.setting, r.value, "reading") != default:
                where = f"the paper preset's; the default is `{setting_text(default)}`"
        switches = "; ".join(f"`{r.switch(v)}`: {m}" for v, m in r.alternatives.items())
        out += [f"- **`{r.setting}` = `{r.value or '(empty)'}`** ({where})",
                f"  - paper: {r.quote}",
                f"  - why: {r.why}",
                f"  - switch: {switches}"]
    return "\n".join(out)


__all__ = ["Reading", "PAPER_SILENT", "DIFFUSION_WEIGHT_DECAY", "check_readings", "show_config", "setting_text",
           "reading_lines", "readings_markdown"]
