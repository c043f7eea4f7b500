"""Numbers and claims cited from the paper (Tables 1-3, Sections 5.1-5.3, Appendix D.1-D.2).

These are the only hand-typed numbers in the experiments package: they are
the paper's, quoted so reports can print them beside ours. Our own numbers
always come from results files. Keys are canonical activation labels
(:meth:`colu.experiments.activations.ActivationSpec.label`) at the width the
experiment gives them by default; a row only matches when the width does too.

VAE losses are per-example sums over pixels, reported in the paper in units of
10^2; they are stored here multiplied out (1.1982 x 10^2 -> 119.82).
``None`` marks a cell the paper reports as "Unstable".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cited:
    mean: float | None
    std: float | None
    source: str

    def text(self) -> str:
        if self.mean is None:
            return f"unstable ({self.source})"
        digits = 4 if abs(self.mean) < 10 else 2
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} ({self.source})"


def _vae(table, train, train_sd, test, test_sd):
    src = f"Table {table}"
    return {"train_loss": Cited(train, train_sd, src), "test_loss": Cited(test, test_sd, src)}


def _x100(*values):
    return [None if v is None else round(v * 100, 6) for v in values]


# (activation label, width) -> metric -> Cited
VALUES = {
    "mnist-mlp": {
        ("relu", 512): {"train_loss": Cited(0.0, 0.0, "Table 3"), "test_accuracy": Cited(0.9576, 0.0017, "Table 3")},
        ("colu:S=4", 512): {"train_loss": Cited(0.0, 0.0, "Table 3"),
                            "test_accuracy": Cited(0.9644, 0.0010, "Table 3")},
        ("colu:S=4,soft,share", 511): {"train_loss": Cited(0.0, 0.0, "Table 3"),
                                       "test_accuracy": Cited(0.9652, 0.0013, "Table 3")},
    },
    "mnist-vae": {
        # Table 1: shared axis, C = 2401 (rows for G = 0 are the identity; the first one is quoted)
        ("colu:G=0", 2401): _vae(1, *_x100(1.1086, 0.0060, 1.1982, 0.0011)),
        ("colu:G=1,soft,share", 2401): _vae(1, *_x100(1.0804, 0.0108, 1.1740, 0.0009)),
        ("colu:G=1,share", 2401): _vae(1, *_x100(1.0835, 0.0048, 1.1656, 0.0013)),
        ("colu:G=2,soft,share", 2401): _vae(1, *_x100(1.0302, 0.0065, 1.1216, 0.0016)),
        ("colu:G=2,share", 2401): _vae(1, *_x100(1.0226, 0.0057, 1.1137, 0.0026)),
        ("colu:G=10,soft,share", 2401): _vae(1, *_x100(0.9181, 0.0060, 1.0106, 0.0017)),
        ("colu:G=10,share", 2401): _vae(1, *_x100(0.9166, 0.0041, 1.0073, 0.0015)),
        ("colu:G=50,soft,share", 2401): _vae(1, *_x100(0.8698, 0.0055, 0.9688, 0.0016)),
        ("colu:G=50,share", 2401): _vae(1, *_x100(0.8736, 0.0040, 0.9742, 0.0024)),
        ("colu:G=200,soft,share", 2401): _vae(1, *_x100(0.8424, 0.0084, 0.9643, 0.0015)),
        ("colu:G=200,share", 2401): _vae(1, *_x100(0.8430, 0.0052, 0.9742, 0.0019)),
        ("colu:G=800,soft,share", 2401): _vae(1, *_x100(0.8388, 0.0268, 0.9764, 0.013)),
        ("colu:G=800,share", 2401): _vae(1, *_x100(None, None, None, None)),
        ("colu:G=1200,soft,share", 2401): _vae(1, *_x100(0.8334, 0.0232, 0.9765, 0.0071)),
        ("colu:G=1200,share", 2401): _vae(1, *_x100(None, None, None, None)),
        ("silu", 2401): _vae(1, *_x100(0.8429, 0.0034, 0.9814, 0.0007)),
        ("relu", 2401): _vae(1, *_x100(0.8195, 0.0039, 0.9892, 0.0011)),
        # Table 2: soft projection without axis sharing, C = 2400 + G
        ("colu:G=1,soft", 2401): _vae(2, *_x100(1.0828, 0.0080, 1.1733, 0.0008)),
        ("colu:G=2,soft", 2402): _vae(2, *_x100(1.0207, 0.0088, 1.1179, 0.0029)),
        ("colu:G=10,soft", 2410): _vae(2, *_x100(0.9111, 0.0041, 1.0096, 0.0013)),
        ("colu:G=50,soft", 2450): _vae(2, *_x100(0.8783, 0.0045, 0.9864, 0.0015)),
        ("colu:G=200,soft", 2600): _vae(2, *_x100(0.8718, 0.0062, 0.9833, 0.0021)),
        ("colu:G=800,soft", 3200): _vae(2, *_x100(0.8801, 0.0073, 0.9893, 0.0021)),
        ("colu:G=1200,soft", 3600): _vae(2, *_x100(0.8808, 0.0099, 0.9930, 0.0018)),
        ("colu:G=2400,soft", 4800): _vae(2, *_x100(0.8402, 0.0041, 0.9856, 0.0008)),  # = SiLU at C=4800
    },
}


@dataclass(frozen=True)
class Claim:
    """``better`` beats every label in ``than`` on ``metric`` (higher or lower is better)."""

    text: str
    source: str
    metric: str
    better: str
    than: tuple
    higher_is_better: bool


CLAIMS = {
    "hemisphere": [
        Claim("CoLU (S=3) keeps rotational symmetry near the equator where ReLU cuts a triangle: "
              "lower max test error", "Section 4, Figure 6", "max_test_error", "colu:S=3", ("relu",), False),
        Claim("RCoLU (S=3) likewise beats ReLU on max test error", "Section 4, Figure 6", "max_test_error",
              "rcolu:S=3", ("relu",), False),
    ],
    "mnist-mlp": [
        Claim("CoLU S=4 (hard, separate axes) beats ReLU on test accuracy", "Table 3", "test_accuracy",
              "colu:S=4", ("relu",), True),
        Claim("CoLU S=4 soft with shared axis (C=511) beats ReLU on test accuracy", "Table 3", "test_accuracy",
              "colu:S=4,soft,share", ("relu",), True),
    ],
    "mnist-vae": [
        *[Claim(f"shared-axis {'soft' if soft else 'hard'} CoLU G={g} has lower test loss than ReLU and SiLU",
                "Table 1 (highlighted)", "test_loss", f"colu:G={g}{',soft' if soft else ''},share",
                ("relu", "silu"), False)
          for g, soft in [(50, True), (200, True), (800, True), (1200, True), (50, False), (200, False)]],
        *[Claim(f"soft CoLU G={g}: sharing the axis lowers test loss", "Table 2", "test_loss",
                f"colu:G={g},soft,share", (f"colu:G={g},soft",), False) for g in (50, 200, 800, 1200)],
    ],
}

# The paper's settings per experiment: a run is numerically comparable only if it matches them.
SETTINGS = {
    "hemisphere": {},  # Figure 6 gives no numbers and no training settings
    "mnist-mlp": {"dataset": "mnist", "batch_size": 1024, "lr": 1e-3, "width": 512},
    "mnist-vae": {"dataset": "mnist", "steps": 4690, "batch_size": 128,
                  "lr": 1e-3, "weight_decay": 1e-2, "hidden": 2400, "latent": 20, "alpha": 1.0},
}
SEEDS = {"mnist-mlp": 7, "mnist-vae": 10}

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
