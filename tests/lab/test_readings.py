"""Readings: declared per experiment, printed by --show-config, checked against the config, and switchable.

``--show-config`` is run for every experiment of the registry and every one of its presets; the switches are
checked on what they build (the schedule's rates, the GPT's modules, the optimiser's class), not on text.
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from colu_lab.commands.train import run_main, sweep_main
from colu_lab.experiments.gpt_shakespeare import experiment as gpt
from colu_lab.experiments.gpt_shakespeare.model import GPT, GPTConfig
from colu_lab.experiments.resnet_cifar import experiment as resnet
from colu_lab.experiments.sd_finetune import command as sd_command
from colu_lab.experiments.sd_finetune.training import make_optimizer
from colu_lab.framework.config import build_config, coerce, preset_table
from colu_lab.framework.contract import Experiment
from colu_lab.framework.readings import DIFFUSION_WEIGHT_DECAY, Reading, check_readings, setting_text
from colu_lab.framework.report import comparability
from colu_lab.framework.runner import build_optimizer, checkpoint_path, lr_factor, step_milestones
from colu_lab.registry import EXPERIMENTS

CASES = [(name, preset) for name, exp in EXPERIMENTS.items() for preset in [None, *exp.presets]]


def _show(capsys, tmp_path, name, *options):
    out = tmp_path / "out"
    rc = run_main([name, *options, "--show-config", "--out", str(out)])
    captured = capsys.readouterr()
    assert not out.exists(), "--show-config must train nothing and write no run folder"
    return rc, captured.out, captured.err


def _value_of(text: str, setting: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith(f"  {setting} = "))
    return line[len(f"  {setting} = "):].split("   ")[0].strip()


# ------------------------------------------------------------------ --show-config
@pytest.mark.parametrize("name, preset", CASES, ids=[f"{n}-{p or 'default'}" for n, p in CASES])
def test_show_config_prints_every_setting_and_reading_and_trains_nothing(capsys, tmp_path, name, preset):
    exp = EXPERIMENTS[name]
    rc, out, err = _show(capsys, tmp_path, name, *(["--preset", preset] if preset else []))
    assert rc == 0, err
    request_cfg, _ = build_config(exp.Config, preset_table(exp), {}, {"preset": preset} if preset else {})
    for field in dataclasses.fields(exp.Config):
        assert f"  {field.name} = " in out, f"{name} {preset}: {field.name} not shown"
    for reading in exp.readings:
        line = next(line for line in out.splitlines() if line.startswith(f"  {reading.setting} = "))
        assert line.rstrip().endswith("reading"), line
        now = getattr(request_cfg, reading.setting)
        assert _value_of(out, reading.setting) == setting_text(now)
        assert reading.quote.split('"')[0].strip()[:30] in out.replace("\n        ", " ")
        # every value the reading names, but the one this run has, is offered with its --set
        for value in reading.choices():
            if coerce(exp.Config, reading.setting, value, "test") != now:
                assert reading.switch(value) in out, (name, preset, reading.setting, value)


def test_show_config_follows_dataset_and_overrides(capsys, tmp_path):
    rc, out, err = _show(capsys, tmp_path, "resnet-cifar", "--quick", "--dataset", "mnist", "--set",
                         "schedule=cosine", "--lr", "0.01")
    assert rc == 0, err
    assert _value_of(out, "digits_size") == "32"  # the quick preset's 8 is for the digits: dropped for mnist
    assert _value_of(out, "dataset") == "mnist" and _value_of(out, "depth") == "8"
    assert "schedule = cosine" in out and "--set schedule=cosine" in out and "--set schedule=step" in out
    assert "ours: step (this run: cosine)" in out
    assert "lr = 0.01" in out and "--lr (command line)" in out
    rc, out, err = _show(capsys, tmp_path, "diffusion-unet", "--quick", "--dataset", "mnist")
    assert rc == 0 and _value_of(out, "image_size") == "32" and "preset quick" in out


def test_sweep_show_config_shows_the_sweep_grid(capsys, tmp_path):
    out = tmp_path / "sweep"
    assert sweep_main(["resnet-cifar", "--quick", "--show-config", "--out", str(out)]) == 0
    assert _value_of(capsys.readouterr().out, "activations") == ";".join(resnet.sweep_grid(None))
    assert not out.exists()


def test_finetune_diffusers_show_config_needs_no_model(capsys):
    assert sd_command.main(["--show-config", "--steps", "100000"]) == 0
    out = capsys.readouterr().out
    assert "steps = 100000" in out and "ours: 15000 (this run: 100000)" in out and "--steps 15000" in out
    assert "weight_decay_mode = decoupled" in out and "--weight-decay-mode l2" in out
    with pytest.raises(SystemExit):
        sd_command.parse_args(["--data", "x", "--out", "y"])  # without --show-config, --model is required
    assert "--model" in capsys.readouterr().err


# ------------------------------------------------------------------ the declarations
def test_every_reading_names_a_setting_its_config_has_with_values_that_build():
    for name, exp in EXPERIMENTS.items():
        fields = {f.name for f in dataclasses.fields(exp.Config)}
        for reading in exp.readings:
            assert reading.setting in fields, f"{name}: reading of {reading.setting!r}, not a setting"
            for value in reading.choices():
                cfg, _ = build_config(exp.Config, None, {}, {reading.setting: value})  # a whole valid config
                assert getattr(cfg, reading.setting) == coerce(exp.Config, reading.setting, value, "test")
            if "paper" in exp.presets:  # the paper preset holds our readings
                cfg, _ = build_config(exp.Config, preset_table(exp), {}, {"preset": "paper"})
                assert getattr(cfg, reading.setting) == coerce(exp.Config, reading.setting, reading.value, "t")
    fine_tune = {k for k in vars(sd_command.parse_args(["--show-config"]))}
    assert {r.setting for r in sd_command.READINGS} <= fine_tune


def test_a_reading_of_a_setting_the_config_lacks_is_refused():
    exp = EXPERIMENTS["mnist-mlp"]
    bad = Reading("no_such_setting", "1", "the paper states none", {"2": "two"}, "why not")
    with pytest.raises(ValueError, match="no_such_setting.*names a setting its config does not have"):
        dataclasses.replace(exp, readings=(*exp.readings, bad))
    with pytest.raises(ValueError, match="schedule.*'weekly'"):
        check_readings(exp.Config, [Reading("schedule", "weekly", "q", {"constant": "c"}, "w")], "test")
    with pytest.raises(ValueError, match="preset 'paper' sets"):
        dataclasses.replace(resnet.EXPERIMENT, readings=(
            Reading("schedule", "cosine", "q", {"constant": "c"}, "w"),))
    assert isinstance(resnet.EXPERIMENT, Experiment)


def test_diffusion_and_fine_tune_share_one_weight_decay_reading():
    diffusion = EXPERIMENTS["diffusion-unet"]
    assert DIFFUSION_WEIGHT_DECAY in diffusion.readings
    shared = next(r for r in sd_command.READINGS if r.setting == "weight_decay_mode")
    assert dataclasses.replace(shared, option="") == DIFFUSION_WEIGHT_DECAY  # the same reading, its own option
    assert diffusion.Config().weight_decay_mode == DIFFUSION_WEIGHT_DECAY.value == "decoupled"
    assert sd_command.parse_args(["--show-config"]).weight_decay_mode == "decoupled"


# ------------------------------------------------------------------ the switches build what they say
def test_resnet_schedule_switch_sets_the_rates():
    total = 180 * resnet.CIFAR_EPOCH_STEPS
    paper, _ = build_config(resnet.Config, preset_table(resnet.EXPERIMENT), {}, {"preset": "paper"})
    assert paper.schedule == "step" and step_milestones(paper, total) == [35190, 52785]
    rates = [lr_factor(paper, s, total) for s in (0, 35189, 35190, 52784, 52785, total - 1)]
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    quick, _ = build_config(resnet.Config, preset_table(resnet.EXPERIMENT), {}, {"preset": "quick"})
    assert step_milestones(quick, 6) == [3, 4]  # the fractions follow any budget
    constant, _ = build_config(resnet.Config, None, {}, {"schedule": "constant"})
    assert {lr_factor(constant, s, total) for s in (0, 40000, total - 1)} == {1.0}
    cosine, _ = build_config(resnet.Config, None, {}, {"schedule": "cosine"})
    assert lr_factor(cosine, 0, total) == 1 and lr_factor(cosine, total // 2, total) == pytest.approx(0.5, abs=1e-4)
    assert lr_factor(cosine, total, total) == pytest.approx(0.0)
    explicit, _ = build_config(resnet.Config, None, {}, {"step_milestones": "100,200"})
    assert step_milestones(explicit, total) == [100, 200]  # given milestones win over the default fractions


def test_resnet_step_schedule_sets_the_optimiser_rate_in_training(tmp_path):
    out = tmp_path / "run"
    assert run_main(["resnet-cifar", "--quick", "--quiet", "--activations", "relu", "--seeds", "1", "--steps", "4",
                     "--eval-every", "2", "--out", str(out)]) == 0
    import json

    curve = json.loads((out / "results.json").read_text())["runs"][0]["curve"]
    # the rate of the last step before each evaluation point: 4 steps with milestones at 2 and 3 (0-based)
    assert [p["lr"] for p in curve] == pytest.approx([1e-3, 1e-5])


def _gpt(**settings):
    cfg, _ = build_config(gpt.Config, preset_table(gpt.EXPERIMENT), {}, {"preset": "quick", **settings})
    act = __import__("colu_lab.framework.activations", fromlist=["x"]).parse_activation("relu")
    torch.manual_seed(0)
    model, _ = gpt.make_model(cfg, act, vocab_size=11)
    return model


def test_gpt_switches_change_the_model():
    default = _gpt()
    assert default.head.weight is default.tok_emb.weight
    assert isinstance(default.ln_f, nn.LayerNorm) and not default.blocks[0].post_norm
    assert all(m.p == 0 for m in default.modules() if isinstance(m, nn.Dropout))

    untied = _gpt(tie_weights="false")
    assert untied.head.weight is not untied.tok_emb.weight
    assert sum(p.numel() for p in untied.parameters()) == sum(p.numel() for p in default.parameters()) + 11 * 32

    post = _gpt(norm_placement="post").eval()
    assert post.blocks[0].post_norm and isinstance(post.ln_f, nn.Identity)
    block, x = post.blocks[0], torch.randn(2, 5, 32)
    h = block.ln1(x + block.attn(x))
    assert torch.allclose(block(x), block.ln2(h + block.mlp(h)))  # LN(x + f(x)), twice

    dropped = _gpt(dropout="0.1")
    rates = {m.p for m in dropped.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.1} and dropped.blocks[0].attn.dropout == 0.1
    idx = torch.randint(0, 11, (2, 8))
    dropped.train()
    assert not torch.equal(dropped(idx)[0], dropped(idx)[0])  # dropout is live in training
    dropped.eval()
    assert torch.equal(dropped(idx)[0], dropped(idx)[0])


def test_weight_decay_mode_builds_adamw_or_adam():
    model = nn.Linear(3, 2)
    for name in ("diffusion-unet", "resnet-cifar", "gpt-shakespeare"):
        exp = EXPERIMENTS[name]
        decoupled = build_optimizer(exp, model, exp.Config())
        assert type(decoupled) is torch.optim.AdamW and decoupled.param_groups[0]["weight_decay"] == 1e-2
        l2 = build_optimizer(exp, model, build_config(exp.Config, None, {}, {"weight_decay_mode": "l2"})[0])
        assert type(l2) is torch.optim.Adam and l2.param_groups[0]["weight_decay"] == 1e-2
    args = sd_command.parse_args(["--show-config"])
    fine_tune = make_optimizer(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                               weight_decay_mode=args.weight_decay_mode)
    assert type(fine_tune) is torch.optim.AdamW and fine_tune.param_groups[0]["weight_decay"] == 1e-2
    args = sd_command.parse_args(["--show-config", "--weight-decay-mode", "l2"])
    assert type(make_optimizer(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                               weight_decay_mode=args.weight_decay_mode)) is torch.optim.Adam


# ------------------------------------------------------------------ invalid values
@pytest.mark.parametrize("name, item, words", [
    ("resnet-cifar", "schedule=linear", ["'linear'", "constant, cosine, step"]),
    ("resnet-cifar", "step_fractions=0.5,1.5", ["[0.5, 1.5]", "between 0 and 1"]),
    ("gpt-shakespeare", "norm_placement=middle", ["'middle'", "pre, post"]),
    ("gpt-shakespeare", "tie_weights=maybe", ["'maybe'", "true, false"]),
    ("gpt-shakespeare", "dropout=1.5", ["1.5", "< 1"]),
    ("diffusion-unet", "weight_decay_mode=adamw", ["'adamw'", "l2, decoupled"]),
])
def test_invalid_switch_values_name_the_value_and_the_choices(capsys, tmp_path, name, item, words):
    rc, out, err = _show(capsys, tmp_path, name, "--quick", "--set", item)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err


def test_fine_tune_refuses_an_unknown_weight_decay_mode(capsys):
    with pytest.raises(SystemExit) as exc:
        sd_command.parse_args(["--show-config", "--weight-decay-mode", "adamw"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'adamw'" in err and "'l2', 'decoupled'" in err
    with pytest.raises(ValueError, match="'adamw' is not one of decoupled, l2"):
        make_optimizer(nn.Linear(1, 1).parameters(), lr=1e-4, weight_decay=0.0, weight_decay_mode="adamw")


def test_gpt_config_refuses_an_unknown_norm_placement():
    with pytest.raises(ValueError, match="norm_placement='sandwich' is not one of pre, post"):
        GPT(GPTConfig(vocab_size=5, norm_placement="sandwich"))


# ------------------------------------------------------------------ the report
def test_report_calls_a_switched_reading_ours_not_the_papers():
    record = {"experiment": "resnet-cifar", "data": {}, "runs": [{"steps": 180 * resnet.CIFAR_EPOCH_STEPS}]}
    cfg = {**resnet.PAPER_SETTINGS, "schedule": "constant"}
    assert comparability(resnet.EXPERIMENT, {**record, "config": cfg}) == [
        "schedule = 'constant' (our reading of the paper: 'step')"]
    assert comparability(resnet.EXPERIMENT, {**record, "config": {**cfg, "lr": 0.1}})[0] == "lr = 0.1 (paper: 0.001)"
    # a run saved before tie_weights and norm_placement existed had the defaults: nothing differs
    old = {k: v for k, v in gpt.PAPER_SETTINGS.items() if k not in ("tie_weights", "norm_placement")}
    record = {"experiment": "gpt-shakespeare", "data": {}, "runs": [{"steps": 20000}]}
    assert comparability(gpt.EXPERIMENT, {**record, "config": old}) == []
    assert math.isfinite(lr_factor(resnet.Config(), 0, 10))


# ------------------------------------------------------------------ the palettes preset (Appendix D.5)
def test_palettes_preset_is_appendix_d5_and_trains_a_step_when_shrunk(tmp_path):
    pytest.importorskip("diffusers")
    import json

    from colu_lab.experiments.diffusion_unet import experiment as diffusion

    exp = EXPERIMENTS["diffusion-unet"]
    cfg, _ = build_config(exp.Config, preset_table(exp), {}, {"preset": "palettes"})
    assert cfg.block_channels[0] == 256 and cfg.activations == ["silu", "colu:G=32,soft"]
    assert (cfg.batch_size, cfg.lr, cfg.steps, cfg.seeds, cfg.dataset) == (128, 1e-4, 5000, 2, "cifar10")
    out = tmp_path / "palettes"
    # the preset's network and activations on the built-in digits, shrunk: 64 channels hold 32 cones of 2
    assert run_main(["diffusion-unet", "--preset", "palettes", "--dataset", "digits", "--quiet", "--out", str(out),
                     "--steps", "1", "--batch-size", "4", "--seeds", "1", "--eval-every", "1",
                     "--set", "image_size=8", "--set", "block_channels=64,64", "--set", "attention_levels=1",
                     "--set", "norm_groups=8", "--set", "attention_head_dim=16", "--set", "heldout_examples=8",
                     "--set", "samples=0"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["activation"] for r in res["runs"]] == ["silu", "colu:G=32,soft"]
    colu_run = res["runs"][1]
    cones = {(r["num_cones"], r["cone_dim"]) for r in colu_run["probe"]["conversion"]["replaced"]}
    assert {n for n, _ in cones} == {32} and (32, 2) in cones  # G = 32 everywhere, no shared axis
    state = torch.load(checkpoint_path(str(out), "colu:G=32,soft", 0), weights_only=True)
    assert tuple(state["model"][diffusion.PALETTE_KEY].shape) == (1, 64, 3, 3)  # 64 -> 1 colour here, 256 -> 3
