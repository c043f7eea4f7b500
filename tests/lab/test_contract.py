"""The experiment contract: a toy experiment defined here runs through the runner, report and resume;
optimisers, schedules, clipping, presets, batch sources and ActivationSpec.build(dim=...)."""

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import pytest
import torch
import torch.nn.functional as F

import colu
from colu_lab import registry
from colu_lab.framework.activations import parse_activation
from colu_lab.commands.train import report_main, run_main
from colu_lab.framework.config import TrainConfig, build_config, fingerprint, result_settings
from colu_lab.framework.contract import Experiment, Preset
from colu_lab.framework.nets import TwoLayer
from colu_lab.framework.paper import Cited, Claim, PaperReference
from colu_lab.framework.runner import build_optimizer, lr_factor

SRC = Path(__file__).resolve().parents[2] / "src"


# ------------------------------------------------------------------ the toy experiment
@dataclass
class ToyConfig(TrainConfig):
    activations: list = field(default_factory=list)
    width: int = 8
    noise: float = 0.0  # augmentation: Gaussian noise added to each training batch, drawn from (seed, step)
    epochs: Optional[int] = None
    steps: Optional[int] = 12
    batch_size: int = 16
    lr: float = 1e-2
    dataset: str = "toy"

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "width": (">=", 1), "noise": (">=", 0.0)}


@dataclass
class ToyData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def summary(self):
        return {"name": "toy", "train_examples": len(self.x_train), "test_examples": len(self.x_test),
                "input_dim": 4, "description": "a random linear map of 4-d Gaussian points", "notes": []}


def _load(cfg):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(96, 4, generator=gen)
    y = x @ torch.randn(4, 4, generator=gen)
    return ToyData(x[:64], y[:64], x[64:], y[64:])


def _build(cfg, act, data):
    width = act.fit_width(cfg.width)
    return TwoLayer(4, width, 4, act.build(width), bias=True), width


def _loss(net, x, y, cfg, *, global_batch, world):
    return F.mse_loss(net(x), y, reduction="sum") * (world / (global_batch * y.shape[1]))


def _evaluate(model, data, cfg, device):
    return {"test_mse": F.mse_loss(model(data.x_test.to(device)), data.y_test.to(device)).item()}


def _noisy_batches(data, cfg, seed, step):
    # a batch source of the kind augmentations use: a window of the data plus noise, both drawn from (seed, step)
    gen = torch.Generator().manual_seed(10_000 * seed + step)
    idx = torch.randint(0, len(data.x_train), (cfg.batch_size,), generator=gen)
    x = data.x_train[idx]
    return x + cfg.noise * torch.randn(x.shape, generator=gen), data.y_train[idx]


TOY = Experiment(
    name="toy-contract",
    summary="a linear map learnt by a 4->8->4 net (the contract's test experiment)",
    Config=ToyConfig,
    metrics={"test_mse": False},
    default_activations=lambda cfg: ["relu", "colu:S=4"],
    load_data=_load,
    build_model=_build,
    train_loss=_loss,
    evaluate=_evaluate,
    log_metrics=("test_mse",),
    curve_x="step",
    presets={"paper": Preset({"steps": 10, "lr": 0.02, "seeds": 2, "optimizer": "adamw", "weight_decay": 0.01},
                             "the made-up paper's settings"),
             "cpu": Preset({"steps": 8, "lr": 0.05, "optimizer": "sgd"}, "a few seconds on a 2-core CPU"),
             "quick": Preset({"steps": 4, "seeds": 1}, "a second")},
    paper=PaperReference(
        values={("relu", 8): {"test_mse": Cited(0.5, 0.1, "Table 0")}},
        claims=(Claim("CoLU fits the toy map better", "Table 0", "test_mse", "colu:S=4", ("relu",), False),),
        settings={"steps": 10, "lr": 0.02, "optimizer": "adamw", "weight_decay": 0.01},
        seeds=2,
    ),
    report_note="A toy: nothing to reproduce.",
    batches=_noisy_batches,
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.EXPERIMENTS, TOY.name, TOY)
    return TOY


def _results(out):
    return json.loads((out / "results.json").read_text())


def _run(out, *extra):
    return run_main([TOY.name, "--quiet", "--seeds", "1", "--out", str(out), *extra])


# ------------------------------------------------------------------ end to end
def test_toy_experiment_runs_reports_and_rebuilds(toy, tmp_path):
    out = tmp_path / "toy"
    assert _run(out, "--seeds", "2", "--eval-every", "4") == 0
    res = _results(out)
    assert res["experiment"] == TOY.name and len(res["runs"]) == 4
    run = res["runs"][0]
    assert [p["step"] for p in run["curve"]] == [4, 8, 12] and math.isfinite(run["metrics"]["test_mse"])
    assert run["curve"][0]["lr"] == 0.01 and run["train_examples"] == 64
    report = (out / "report.md").read_text()
    assert "a linear map learnt" in report and "preset: none" in report
    assert "Adam (torch.optim.Adam), lr 0.01, no weight decay; constant learning rate" in report
    assert "0.5000 ± 0.1000 (Table 0)" in report  # the paper's value beside ours, from the toy's reference
    assert "CoLU fits the toy map better" in report and "not comparable" in report  # its settings differ
    assert "lr = 0.01 (paper: 0.02)" in report and "A toy: nothing to reproduce." in report
    assert (out / "curve_test_mse.png").stat().st_size > 1000
    before = res["summary"]
    (out / "report.md").unlink()
    assert report_main([str(out)]) == 0
    assert _results(out)["summary"] == before and (out / "report.md").exists()


def test_resume_with_every_hook_is_bit_identical(toy, tmp_path):
    args = ["--activations", "colu:S=4", "--steps", "14", "--eval-every", "3", "--ckpt-every", "4",
            "--optimizer", "sgd", "--weight-decay", "0.01", "--schedule", "cosine", "--warmup-steps", "3",
            "--grad-clip", "0.5", "--set", "min_lr_ratio=0.1", "--set", "noise=0.3"]
    assert _run(tmp_path / "full", *args) == 0
    assert _run(tmp_path / "halted", *args, "--halt-after", "6") == 3  # between checkpoints 4 and 8
    assert run_main([TOY.name, "--quiet", "--out", str(tmp_path / "halted"), "--resume"]) == 0
    full, resumed = _results(tmp_path / "full"), _results(tmp_path / "halted")
    assert [r["curve"] for r in resumed["runs"]] == [r["curve"] for r in full["runs"]]
    assert [r["metrics"] for r in resumed["runs"]] == [r["metrics"] for r in full["runs"]]
    weights = [torch.load(tmp_path / d / "checkpoints" / "colu-S4-seed0.pt", weights_only=True)["model"]
               for d in ("full", "halted")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the noise is part of the batches: without it the run differs
    assert _run(tmp_path / "clean", *args[:-2]) == 0
    assert _results(tmp_path / "clean")["runs"][0]["curve"] != full["runs"][0]["curve"]


# ------------------------------------------------------------------ schedules
def _cfg(**values):
    cfg, _ = build_config(ToyConfig, None, {}, values)
    return cfg


def test_learning_rate_at_given_steps_for_each_schedule():
    total = 100
    constant = _cfg(warmup_steps=4)
    assert [lr_factor(constant, s, total) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor(_cfg(), 0, total) == 1.0
    cosine = _cfg(schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cosine, 0, total) == 1.0
    assert lr_factor(cosine, 50, total) == pytest.approx(0.55)
    assert lr_factor(cosine, 100, total) == pytest.approx(0.1)
    warm = _cfg(schedule="cosine", warmup_steps=10)
    assert lr_factor(warm, 4, total) == pytest.approx(0.5) and lr_factor(warm, 10, total) == 1.0
    assert lr_factor(warm, 55, total) == pytest.approx(0.5)
    step = _cfg(schedule="step", step_milestones="30,60", step_gamma=0.5)
    assert step.step_milestones == [30, 60]
    assert [lr_factor(step, s, total) for s in (0, 29, 30, 59, 60, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_the_runner_sets_the_scheduled_rate(toy, tmp_path):
    out = tmp_path / "s"
    assert _run(out, "--activations", "relu", "--steps", "8", "--eval-every", "2", "--schedule", "step",
                "--set", "step_milestones=3;5", "--set", "step_gamma=0.1") == 0
    # the rate of the last update before each evaluation: updates 1, 3, 5, 7 (0-based); after 3 updates the
    # rate drops to 0.1 x, after 5 to 0.01 x
    lrs = [p["lr"] for p in _results(out)["runs"][0]["curve"]]
    assert lrs == pytest.approx([0.01, 0.001, 0.0001, 0.0001])


@pytest.mark.parametrize("values, message", [
    ({"optimizer": "adm"}, "optimizer 'adm' is not one of adam, adamw, sgd"),
    ({"schedule": "linear"}, "schedule 'linear' is not one of constant, cosine, step"),
    ({"optimizer": "adamw", "weight_decay_mode": "l2"}, "AdamW's decay is decoupled"),
    ({"optimizer": "sgd", "weight_decay_mode": "decoupled"}, "SGD's weight decay is L2"),
    ({"schedule": "step"}, "schedule=step needs step_milestones"),
    ({"step_milestones": "5,3", "schedule": "step"}, "need increasing steps"),
    ({"step_milestones": "5"}, "apply to schedule=step only"),
    ({"min_lr_ratio": "1.5"}, "min_lr_ratio 1.5 is out of range"),
    ({"grad_clip": "-1"}, "--grad-clip -1.0 is out of range"),
    ({"autocast": "fp16"}, "autocast 'fp16' is not one of off, bf16, auto"),
])
def test_bad_hook_settings_name_the_value(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _cfg(**values)


# ------------------------------------------------------------------ optimisers
def _one_weight(value=1.0):
    return torch.nn.Linear(1, 1, bias=False).requires_grad_(True).eval().apply(
        lambda m: torch.nn.init.constant_(m.weight, value) if isinstance(m, torch.nn.Linear) else None)


def _steps(cfg, n):
    """The weight of a one-weight model after ``n`` updates with a zero loss gradient (decay alone acts)."""
    model = _one_weight()
    opt = build_optimizer(TOY, model, cfg)
    for _ in range(n):
        opt.zero_grad()
        (model.weight * 0).sum().backward()
        opt.step()
    return model.weight.item(), opt


def test_optimisers_and_weight_decay_modes_differ_as_they_should():
    lr, wd = 0.1, 0.5
    w, opt = _steps(_cfg(optimizer="adamw", lr=lr, weight_decay=wd), 1)
    assert type(opt) is torch.optim.AdamW and w == pytest.approx(1 - lr * wd)  # decoupled: shrink by lr*wd
    w, opt = _steps(_cfg(optimizer="adam", weight_decay_mode="decoupled", lr=lr, weight_decay=wd), 1)
    assert type(opt) is torch.optim.AdamW and w == pytest.approx(1 - lr * wd)  # adam + decoupled = AdamW
    w, opt = _steps(_cfg(optimizer="adam", lr=lr, weight_decay=wd), 1)
    assert type(opt) is torch.optim.Adam and w == pytest.approx(1 - lr, rel=1e-5)  # L2 through Adam: a unit step
    w, opt = _steps(_cfg(optimizer="sgd", lr=lr, weight_decay=wd), 2)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9
    assert not opt.param_groups[0]["nesterov"]
    w1 = 1 - lr * wd  # SGD + L2 with momentum: the second step carries 0.9 of the first gradient
    assert w == pytest.approx(w1 - lr * (0.9 * wd * 1.0 + wd * w1))
    assert _cfg(optimizer="sgd").weight_decay_mode == "l2" and _cfg(optimizer="adamw").weight_decay_mode == \
        "decoupled" and _cfg().weight_decay_mode == "l2"


def test_gradient_clipping_bounds_each_update(toy, tmp_path):
    args = ["--activations", "relu", "--steps", "5", "--optimizer", "sgd", "--set", "momentum=0", "--lr", "0.1"]
    assert _run(tmp_path / "clip", *args, "--grad-clip", "1e-4") == 0
    assert _run(tmp_path / "free", *args) == 0
    torch.manual_seed(0)
    start = _build(_cfg(), parse_activation("relu"), None)[0].state_dict()

    def moved(folder):
        end = torch.load(tmp_path / folder / "checkpoints" / "relu-seed0.pt", weights_only=True)["model"]
        return math.sqrt(sum(float((end[k] - start[k]).pow(2).sum()) for k in start))

    assert moved("clip") <= 5 * 0.1 * 1e-4 * (1 + 1e-5)  # 5 steps of lr x (norm <= 1e-4)
    assert moved("free") > 100 * moved("clip")


# ------------------------------------------------------------------ presets
def test_preset_settings_explicit_options_win_and_the_report_says_which(toy, tmp_path):
    out = tmp_path / "p"
    assert _run(out, "--activations", "relu", "--preset", "cpu", "--lr", "0.01") == 0
    res = _results(out)
    cfg = res["config"]
    assert (cfg["preset"], cfg["steps"], cfg["lr"], cfg["optimizer"]) == ("cpu", 8, 0.01, "sgd")
    assert json.loads((out / "config.json").read_text())["config"]["preset"] == "cpu"
    report = (out / "report.md").read_text()
    assert "preset `cpu` (a few seconds on a 2-core CPU)" in report and "SGD (torch.optim.SGD" in report
    # a preset takes part in the fingerprint only through what it sets
    same, _ = build_config(ToyConfig, None, {}, {"steps": 8, "lr": 0.01, "optimizer": "sgd",
                                                 "activations": "relu", "seeds": 1})
    assert fingerprint(result_settings(same)) == res["fingerprint"]
    # resuming under another preset is refused; the saved one is kept
    assert run_main([TOY.name, "--quiet", "--out", str(out), "--resume", "--quick"]) == 2
    assert run_main([TOY.name, "--quiet", "--out", str(out), "--resume"]) == 0


def test_paper_preset_is_the_paper_settings(toy, tmp_path):
    out = tmp_path / "paper"
    assert _run(out, "--preset", "paper", "--seeds", "2") == 0
    res = _results(out)
    assert res["config"]["optimizer"] == "adamw" and res["config"]["weight_decay_mode"] == "decoupled"
    report = (out / "report.md").read_text()
    assert "preset `paper`" in report and "AdamW (torch.optim.AdamW), lr 0.02, weight decay 0.01 (decoupled" in report
    assert "Settings differ from the paper's" not in report  # comparable: the claim gets a verdict


def test_preset_errors_name_the_presets(toy, tmp_path, capsys):
    assert _run(tmp_path / "x", "--preset", "gpu") == 2
    err = capsys.readouterr().err
    assert "--preset gpu" in err and "paper, cpu, quick" in err
    assert _run(tmp_path / "y", "--preset", "cpu", "--quick") == 2
    assert "--quick contradicts --preset cpu" in capsys.readouterr().err


def test_every_registered_experiment_has_quick_and_cpu_presets_and_a_consistent_paper_preset():
    for exp in registry.EXPERIMENTS.values():
        assert {"quick", "cpu"} <= set(exp.presets), exp.name
        for preset in exp.presets.values():
            build_config(exp.Config, {"p": preset.settings}, {}, {"preset": "p"})  # every value is valid
        if "paper" in exp.presets:
            paper = exp.presets["paper"].settings
            assert {k: paper.get(k) for k in exp.paper.settings} == exp.paper.settings, exp.name


# ------------------------------------------------------------------ evaluation schedule, precision
def test_eval_every_respects_max_evals(toy, tmp_path, capsys):
    assert _run(tmp_path / "x", "--steps", "200", "--eval-every", "2") == 2
    err = capsys.readouterr().err
    assert "--eval-every 2 evaluates 100 times" in err and "--eval-every >= 4" in err


def test_autocast(toy, tmp_path, capsys):
    assert _run(tmp_path / "x", "--autocast", "bf16", "--device", "cpu") == 2
    assert "CUDA" in capsys.readouterr().err
    assert _run(tmp_path / "y", "--bf16", "--device", "cpu") == 2
    assert _run(tmp_path / "z", "--activations", "relu", "--autocast", "auto", "--device", "cpu") == 0
    assert _results(tmp_path / "z")["precision"] == "float32"


# ------------------------------------------------------------------ activations on a channel axis
@pytest.mark.parametrize("spec, call", [
    ("colu:S=4", lambda x: colu.colu(x, cone_dim=4, dim=1)),
    ("colu:G=2,soft", lambda x: colu.colu(x, num_cones=2, scaling="soft", dim=1)),
    ("rcolu:S=4", lambda x: colu.rcolu(x, cone_dim=4, dim=1)),
])
def test_build_with_dim_acts_on_the_channel_axis(spec, call):
    x = torch.randn(2, 8, 5, 8)
    module = parse_activation(spec).build(8, dim=1)
    assert torch.equal(module(x), call(x))
    assert not torch.equal(module(x), parse_activation(spec).build(8)(x))  # the default acts on the last axis
    assert torch.equal(parse_activation("relu").build(8, dim=1)(x), x.relu())


# ------------------------------------------------------------------ nothing names an experiment
def test_no_experiment_is_named_in_the_generic_modules():
    names = set(registry.EXPERIMENTS) | {"mnist", "hemisphere", "vae_", "mnist_mlp", "mnist_vae"}
    framework = [f"colu_lab/framework/{m}.py" for m in ("runner", "report", "ablation", "ablation_tables", "paper",
                                                          "config", "contract", "rundir", "batches")]
    for path in framework + ["colu_lab/commands/train.py", "colu_lab/commands/align.py", "colu/tools/cli.py"]:
        text = (SRC / path).read_text(encoding="utf-8").lower()
        found = sorted(n for n in names if n in text)
        if path == "colu_lab/framework/config.py":
            found = [n for n in found if n != "mnist"]  # the MNIST file format is named in --split-from-test's help
        assert not found, f"{path} names {found}"


def test_contract_defaults_and_checks():
    assert TOY.curve_metrics == ("test_mse",) and TOY.sweep_grid is TOY.default_activations
    assert TOY.final_metrics([{"test_mse": 2.0}, {"test_mse": 1.0, "lr": 0.1}], None) == {"test_mse": 1.0}
    with pytest.raises(ValueError, match="Config must be a dataclass subclassing TrainConfig"):
        dataclasses.replace(TOY, Config=dict)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dataclasses.replace(TOY, name="mnist-mlp"))


def test_report_numbers_keep_their_precision_at_every_scale():
    from colu_lab.framework.paper import Cited, format_number

    assert format_number(0.93741) == "0.9374" and format_number(55.432) == "55.43"
    # FLOP counts print in exponent form, not as "252000000.00"; the spread follows the mean's form
    assert Cited(252e6, 0.0, "Table 4").text() == "2.520e+08 ± 0.000e+00 (Table 4)"
    assert format_number(81102080.0) == "8.110e+07"
    assert Cited(0.9374, 0.0035, "Table 6").text() == "0.9374 ± 0.0035 (Table 6)"
    # small errors keep their digits instead of printing as 0.0000
    assert format_number(1.07e-5) == "1.07e-05" and format_number(2e-6, like=1.07e-5) == "2.00e-06"
    assert format_number(0.0) == "0.0000"
