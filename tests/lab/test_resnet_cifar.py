"""resnet-cifar: the quick run end to end, resume, CoLU on the channel axis, FLOPs, the data sets and settings."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import colu
from colu import reference
from colu_lab.framework import data as D
from colu_lab.experiments.resnet_cifar import experiment as R
from colu_lab.framework.activations import parse_activation
from colu_lab.commands.train import report_main, run_main
from colu_lab.framework.config import build_config, preset_table
from colu_lab.framework.runner import build_optimizer

METRICS = ["train_loss", "train_accuracy", "test_loss", "test_accuracy", "flops"]


def _results(out):
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f)


def _images(n, size=8, channels=3, seed=0):
    """Random ``ImageData`` (no files, no scikit-learn): enough for models, batches and evaluation."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    mean, std = D.channel_stats(x)
    return D.ImageData("random", x, y, x[: n // 2].clone(), y[: n // 2].clone(), "random images", mean=mean, std=std)


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "quick"
    assert run_main(["resnet-cifar", "--quick", "--quiet", "--out", str(out)]) == 0
    res = _results(out)
    assert res["experiment"] == "resnet-cifar" and res["config"]["preset"] == "quick"
    assert [r["activation"] for r in res["runs"]] == ["relu", "colu:S=4"]
    for run in res["runs"]:
        assert set(METRICS) <= set(run["metrics"]) and all(math.isfinite(run["metrics"][m]) for m in METRICS)
        assert 0 <= run["metrics"]["train_accuracy"] <= 1 and 0 <= run["metrics"]["test_accuracy"] <= 1
        assert len(run["curve"]) == 2 and all(set(METRICS) <= set(p) for p in run["curve"])
    flops = {r["activation"]: r["metrics"]["flops"] for r in res["runs"]}
    assert flops["colu:S=4"] > flops["relu"] > 0
    for act in ("relu", "colu:S=4"):
        assert set(res["summary"][act]) == set(METRICS)
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"curve_{m}.png" for m in R.EXPERIMENT.curve_metrics}
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    report = (out / "report.md").read_text()
    assert "preset `quick`" in report and "not comparable" in report and "reproduced:" not in report
    assert "Table 6" in report and "Table 4" in report and "poster" in report  # the paper's numbers beside ours
    assert "ReLU beats CoLU S=4 on test accuracy" in report and "CoLU S=4 beats ReLU on test accuracy" in report
    assert report_main([str(out)]) == 0 and _results(out)["summary"] == res["summary"]


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
    args = ["resnet-cifar", "--quick", "--quiet", "--activations", "colu:S=4", "--steps", "5", "--eval-every", "2"]
    assert run_main(args + ["--out", str(tmp_path / "full")]) == 0
    halted = tmp_path / "halted"
    assert run_main(args + ["--out", str(halted), "--halt-after", "3"]) == 3  # between two evaluations
    assert not (halted / "results.json").exists()
    assert run_main(["resnet-cifar", "--quiet", "--out", str(halted), "--resume"]) == 0
    full, resumed = _results(tmp_path / "full"), _results(halted)
    assert [r["curve"] for r in resumed["runs"]] == [r["curve"] for r in full["runs"]]
    assert [r["metrics"] for r in resumed["runs"]] == [r["metrics"] for r in full["runs"]]


# ------------------------------------------------------------------ the model
def test_colu_acts_on_the_channel_axis():
    cfg = R.Config(depth=8)
    data = SimpleNamespace(x_train=torch.zeros(1, 3, 8, 8))
    torch.manual_seed(0)
    model, width = R.build_model(cfg, parse_activation("colu:S=4"), data)
    cones = [m for m in model.modules() if isinstance(m, colu.CoLU)]
    assert width == 16 and len(cones) == 1 + 2 * 3  # the stem and two per block, one block per stage
    assert all(m.dim == 1 and m.cone_dim == 4 for m in cones)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out))) for m in cones]
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    for h in hooks:
        h.remove()
    assert {x.shape[1] for x, _ in seen} == {16, 32, 64}
    for x, y in seen:  # the projection of each pixel's channel vector, done by hand on channels-last data
        by_hand = reference.colu(x.movedim(1, -1), 4).movedim(-1, 1)
        torch.testing.assert_close(y, by_hand, rtol=1e-5, atol=1e-6)


def test_activation_check_names_the_stage_it_cannot_tile():
    cfg, data = R.Config(depth=8), None
    for spec in ("relu", "colu:S=4", "colu:S=4,soft", "rcolu:S=4", "colu:G=4"):
        R.check_activation(cfg, parse_activation(spec), data)
    with pytest.raises(ValueError, match="16-channel stage.*tiles 16, 32 and 64"):
        R.check_activation(cfg, parse_activation("colu:S=5"), data)
    with pytest.raises(ValueError, match="drop C=32"):
        R.check_activation(cfg, parse_activation("colu:S=4,C=32"), data)
    for spec in R.sweep_grid(cfg):
        R.check_activation(cfg, parse_activation(spec), data)


@pytest.mark.parametrize("depth", [20, 56])
def test_in_channels_follow_the_data(depth):
    model, _ = R.build_model(R.Config(depth=depth), parse_activation("relu"),
                             SimpleNamespace(x_train=torch.zeros(1, 1, 32, 32)))
    assert model.conv.in_channels == 1 and model.depth == depth


@pytest.mark.slow  # FlopCounterMode's first use in a process takes seconds
def test_flops_colu_above_relu_near_the_papers_quarter_gigaflop():
    counts = {}
    for spec in ("relu", "colu:S=4"):
        model, _ = R.build_model(R.Config(), parse_activation(spec), SimpleNamespace(x_train=torch.zeros(1, 3, 32, 32)))
        counts[spec] = R.image_flops(model, (3, 32, 32))
    assert counts["colu:S=4"] > counts["relu"]
    for spec, paper in (("relu", 0.252e9), ("colu:S=4", 0.257e9)):
        assert counts[spec] == pytest.approx(0.25e9, rel=0.03)
        assert counts[spec] == pytest.approx(paper, rel=0.03)


@pytest.mark.slow
def test_flops_are_counted_once_per_architecture(monkeypatch):
    calls = []
    real = R.forward_flops_per_example
    monkeypatch.setattr(R, "forward_flops_per_example", lambda m, x: calls.append(1) or real(m, x))
    monkeypatch.setattr(R, "_FLOPS", {})
    data = _images(20)
    cfg = R.Config(depth=8, dataset="random")
    torch.manual_seed(0)
    first, _ = R.build_model(cfg, parse_activation("colu:S=4"), data)
    torch.manual_seed(1)
    second, _ = R.build_model(cfg, parse_activation("colu:S=4"), data)  # another seed, the same architecture
    other, _ = R.build_model(cfg, parse_activation("relu"), data)
    cpu = torch.device("cpu")
    values = [R.evaluate(m, data, cfg, cpu)["flops"] for m in (first, first, second, other)]
    assert len(calls) == 2 and values[0] == values[1] == values[2] > values[3]
    assert first.training  # counting leaves the model as it was


# ------------------------------------------------------------------ batches and evaluation
def test_batches_augment_and_normalise():
    data = _images(40)
    cfg = R.Config(batch_size=8)
    x, y = R.batches(data, cfg, seed=3, step=5)
    again, _ = R.batches(data, cfg, seed=3, step=5)
    assert x.shape == (8, 3, 8, 8) and torch.equal(x, again)
    plain_cfg = R.Config(batch_size=8, augment=False)
    plain, plain_y = R.batches(data, plain_cfg, seed=3, step=5)
    assert torch.equal(plain_y, y)  # the same images in the same order, only crops and flips differ
    pixels = (plain * data.std[:, None, None] + data.mean[:, None, None])
    matches = [(pixels[i][None] - data.x_train).abs().amax((1, 2, 3)).min() for i in range(8)]
    assert max(float(m) for m in matches) < 1e-5  # un-normalised, each is a training image as it is
    assert not torch.allclose(x, plain)


def test_evaluate_matches_a_full_batch_computation():
    data = _images(30)
    cfg = R.Config(depth=8, dataset="random")
    torch.manual_seed(0)
    model, _ = R.build_model(cfg, parse_activation("colu:S=4"), data)
    model.eval()
    with torch.no_grad():
        got = R.evaluate(model, data, cfg, torch.device("cpu"))
        for split in ("train", "test"):
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            logits = model((x - data.mean[:, None, None]) / data.std[:, None, None])
            assert got[f"{split}_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
            assert got[f"{split}_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


# ------------------------------------------------------------------ settings
def _cfg(**cli):
    cfg, _ = build_config(R.Config, preset_table(R.EXPERIMENT), {}, cli, "test")
    return cfg


def test_weight_decay_is_decoupled_by_default_and_switchable():
    model = torch.nn.Linear(2, 2)
    cfg = _cfg()
    assert (cfg.optimizer, cfg.weight_decay, cfg.weight_decay_mode) == ("adam", 1e-2, "decoupled")
    assert type(build_optimizer(R.EXPERIMENT, model, cfg)) is torch.optim.AdamW
    l2 = _cfg(weight_decay_mode="l2")
    assert type(build_optimizer(R.EXPERIMENT, model, l2)) is torch.optim.Adam
    assert _cfg(optimizer="sgd").weight_decay_mode == "l2"  # SGD keeps its own decay, without an error
    assert "decoupled" in R.__doc__ and "weight_decay_mode=l2" in R.EXPERIMENT.report_note


def test_defaults_and_paper_preset_are_the_papers_settings():
    cfg = _cfg()
    assert (cfg.depth, cfg.batch_size, cfg.lr, cfg.epochs, cfg.steps, cfg.augment) == (56, 128, 1e-3, 180, None, True)
    paper = _cfg(preset="paper")
    for key, want in R.PAPER_SETTINGS.items():
        assert getattr(paper, key) == want, key
    assert paper.seeds == 10 == R.EXPERIMENT.paper.seeds
    assert R.PAPER_SETTINGS["steps"] == 180 * math.ceil(50000 / 128)
    assert R.EXPERIMENT.default_activations(cfg) == ["relu", "colu:S=4"]
    cpu = _cfg(preset="cpu")
    assert cpu.dataset == "mnist" and cpu.seeds == 3 and cpu.activations == ["relu", "colu:S=4"]
    assert cpu.steps == 2 * math.ceil(8000 / cpu.batch_size)  # 2 epochs of the 8000 images the t10k split leaves
    with pytest.raises(ValueError, match="depth=21.*6n \\+ 2"):
        _cfg(depth=21)


def test_mnist_without_data_names_the_files(tmp_path):
    with pytest.raises(D.DataError, match="t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        R.load_data(_cfg(preset="cpu"))
    with pytest.raises(D.DataError, match="split-from-test applies to --dataset mnist only"):
        R.load_data(_cfg(dataset="cifar10", data=str(tmp_path), split_from_test=10))
    with pytest.raises(D.DataError, match="digits_size=16 applies to --dataset digits only"):
        R.load_data(_cfg(dataset="cifar10", data=str(tmp_path), digits_size=16))
    with pytest.raises(D.DataError, match="data_batch_1"):
        R.load_data(_cfg(dataset="cifar10"))


def test_preset_cpu_without_data_fails_before_training(tmp_path, capsys):
    assert run_main(["resnet-cifar", "--preset", "cpu", "--quiet", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte" in err and "Traceback" not in err


# ------------------------------------------------------------------ CIFAR-10 in the official format
def test_cifar10_goes_through_load_data(tmp_path, write_cifar):
    write_cifar(tmp_path)
    data = R.load_data(_cfg(dataset="cifar10", data=str(tmp_path)))
    assert data.name == "cifar10" and data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert torch.allclose(data.mean, data.x_train.mean((0, 2, 3)), atol=1e-6)
    assert not any("not comparable" in note for note in data.notes)


@pytest.mark.slow
def test_cifar10_run_from_official_batches(tmp_path, write_cifar):
    write_cifar(tmp_path / "cifar")
    out = tmp_path / "out"
    assert run_main(["resnet-cifar", "--quiet", "--data", str(tmp_path / "cifar"), "--set", "depth=8", "--steps", "2",
                     "--batch-size", "8", "--seeds", "1", "--activations", "colu:S=4", "--out", str(out)]) == 0
    res = _results(out)
    assert res["config"]["dataset"] == "cifar10" and res["data"]["name"] == "cifar10"
    assert res["data"]["train_examples"] == 20 and res["runs"][0]["metrics"]["flops"] > 0
    report = (out / "report.md").read_text()
    assert "depth = 8 (paper: 56)" in report and "dataset =" not in report  # only the budget and size differ


def test_quick_runs_on_a_dataset_the_preset_does_not_name(tmp_path, write_cifar):
    """--quick sets the built-in digits at 8x8; with CIFAR-10 (named, or found in --data) its digits size does not
    carry over: it stopped with 'digits_size=8 applies to --dataset digits only ... drop it', a setting the user
    never gave."""
    from colu_lab.framework.config import parse_cli
    from colu_lab.registry import EXPERIMENTS

    cifar = tmp_path / "cifar"
    write_cifar(cifar)
    for extra in (["--dataset", "cifar10"], []):
        request = parse_cli(["resnet-cifar", "--quick", "--data", str(cifar), *extra], "colu run", "", EXPERIMENTS)
        assert request.cfg.dataset == "cifar10" and request.cfg.digits_size == 32 and request.cfg.depth == 8
    assert run_main(["resnet-cifar", "--quick", "--quiet", "--dataset", "cifar10", "--data", str(cifar),
                     "--out", str(tmp_path / "out")]) == 0
    # a value the user gives stays theirs, and still gets the error that names it
    assert run_main(["resnet-cifar", "--quick", "--quiet", "--dataset", "cifar10", "--data", str(cifar),
                     "--set", "digits_size=8", "--out", str(tmp_path / "out2")]) == 2
