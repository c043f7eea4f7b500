"""How the paper is quoted: :class:`Cited` numbers, :class:`Claim` s and :class:`PaperReference`.

The paper's numbers are the only hand-typed numbers in the experiments
package. Each experiment module quotes its own in a :class:`PaperReference`
(the ``paper`` field of its :class:`colu_lab.framework.contract.Experiment`),
so reports can print them beside ours; our own numbers always come from
results files. Keys of ``values`` are canonical activation labels
(:meth:`colu_lab.framework.activations.ActivationSpec.label`) at the width the
experiment gives them by default; a row only matches when the width does too.
``Cited(None, None, ...)`` marks a cell the paper reports as "Unstable";
``Cited(mean, None, ...)`` a number the paper gives without a spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_SEEDS = 3
"""Seeds each side of a comparison needs before a difference is judged: with fewer, the spread (and so the 2·SE
of the verdict rule) says nothing, and one seed makes any difference look clear."""


def format_number(value: float, like: float | None = None) -> str:
    """A metric value as reports print it, with the precision chosen by ``like`` (default: the value itself):
    4 decimals below 10, 2 up to a million, and 4 significant digits in exponent form above (FLOPs), so that
    a mean and its spread print alike and a count of 252 M does not end in ".00"; below 1e-3, 3 significant
    digits in exponent form (an MSE of 1e-5 would print as 0.0000)."""
    scale = abs(value if like is None else like)
    if scale >= 1e6:
        return f"{value:.3e}"
    if 0 < scale < 1e-3:
        return f"{value:.2e}"
    return f"{value:.{4 if scale < 10 else 2}f}"


@dataclass(frozen=True)
class Cited:
    mean: float | None
    std: float | None
    source: str

    def text(self) -> str:
        if self.mean is None:
            return f"unstable ({self.source})"
        if self.std is None:
            # printed as quoted: padding it to more digits, or adding "± 0", would claim a precision it lacks
            return f"{self.mean:g} ({self.source}; no std in the paper)"
        return f"{format_number(self.mean)} ± {format_number(self.std, like=self.mean)} ({self.source})"


@dataclass(frozen=True)
class Claim:
    """``better`` beats every label in ``than`` on ``metric`` (higher or lower is better)."""

    text: str
    source: str
    metric: str
    better: str
    than: tuple
    higher_is_better: bool


@dataclass(frozen=True)
class PaperReference:
    """What an experiment is compared with in the paper (all fields default to "nothing").

    ``values``: (activation label, width) -> metric -> :class:`Cited`.
    ``claims``: :class:`Claim` s the report gives a verdict on.
    ``settings``: config key -> the paper's value; a run's numbers are
    comparable to the paper's only when every one matches (``steps`` is
    compared with the steps actually trained). ``seeds``: the number of seeds
    per configuration in the paper. ``figure_only``: the paper shows its
    claims as figures, without numbers to match.
    """

    values: dict = field(default_factory=dict)
    claims: tuple = ()
    settings: dict = field(default_factory=dict)
    seeds: int | None = None
    figure_only: bool = False


# Linear mode connectivity (Section 5.7, Appendix C, D.5): the paper shows barriers only as figures
# (Figures 13 and 14, toy VAE), so there is no number to quote. ``colu align`` prints these claims with
# its own measurements beside them.
ALIGN_CLAIMS = {
    "lowers": ("aligning the second model by the activation's symmetry group (weight or state matching) "
               "lowers the loss barrier on the straight line between two seeds, for CoLU as for permutation "
               "(ReLU) models", "Section 5.7, Appendix D.5, Figure 13"),
    "weights_flatter": ("weight matching produces a flatter barrier than state matching (toy VAE)",
                        "Appendix D.5"),
}
ALIGN_NO_NUMBER = "no number in the paper (Figures 13-14 only)"
