"""`colu align`: two seeds trained (or loaded), aligned by weights and by states, barriers written."""

import importlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from colu import align
from colu.tools.cli import commands
from colu_lab.commands import align as align_cmd
from colu_lab.experiments.mnist_mlp import experiment as mnist_mlp
from colu_lab.experiments.mnist_vae import experiment as mnist_vae
from colu_lab.framework.activations import parse_activation
from colu_lab.framework.config import build_config, fingerprint, result_settings
from colu_lab.experiments.mnist_vae.model import ToyVAE
from colu_lab.registry import EXPERIMENTS

MLP_ARGS = ["mnist-mlp", "--quick", "--steps", "12", "--num-points", "5", "--quiet"]
VAE_ARGS = ["mnist-vae", "--quick", "--steps", "12", "--set", "hidden=50", "--num-points", "5", "--quiet"]


def _results(out):
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f)


def _eq11(values, s_values):
    """eq. (11) from a saved curve: max_s L(s) / ((1-s) L(0) + s L(1)) - 1."""
    l0, l1 = values[0], values[-1]
    return max(v / ((1 - s) * l0 + s * l1) - 1 for s, v in zip(s_values, values))


def _check(out, experiment, losses):
    res = _results(out)
    assert res["experiment"] == "align-" + experiment and res["base_experiment"] == experiment
    assert res["config"]["seed_pair"] == [0, 1] and res["config"]["num_points"] == 5
    labels = [r["activation"] for r in res["runs"]]
    assert labels == list(EXPERIMENTS[experiment].align.activations)
    names = align_cmd.metric_names(EXPERIMENTS[experiment])
    for run in res["runs"]:
        assert {"activation", "seed", "seed_b", "width", "metrics", "curve", "alignment"} <= set(run)
        assert (run["seed"], run["seed_b"]) == (0, 1)
        m = run["metrics"]
        assert set(names) <= set(m)
        # the moved copies of B compute B's function
        assert m["max_output_diff_weights"] < 1e-4 and m["max_output_diff_states"] < 1e-4
        assert run["alignment"]["weights"]["method"] == "weights"
        assert run["alignment"]["states"]["method"] == "states"
        assert len(run["curve"]) == 5 and run["curve"][0]["s"] == 0.0 and run["curve"][-1]["s"] == 1.0
        s_values = [p["s"] for p in run["curve"]]
        for loss, prefix in losses:
            for method in align_cmd.METHODS:
                barrier = m[f"{prefix}barrier_{method}"]
                assert math.isfinite(barrier)
                values = [p[f"{loss}_{method}"] for p in run["curve"]]
                assert barrier == pytest.approx(_eq11(values, s_values), rel=1e-12, abs=1e-12)
            # moving B does not move the path's far end: same loss at s = 1 on every path
            far = [run["curve"][-1][f"{loss}_{method}"] for method in align_cmd.METHODS]
            assert far[1] == pytest.approx(far[0], rel=1e-5) and far[2] == pytest.approx(far[0], rel=1e-5)
            assert run["curve"][0][f"{loss}_naive"] == run["curve"][0][f"{loss}_weights"]
    for act in labels:
        for name in names:
            assert res["summary"][act][name]["n"] == 1
    assert (out / "barriers.png").stat().st_size > 5000
    report = (out / "report.md").read_text()
    for section in ("## Data actually used", "## Barriers", "## Claims", "## Config", "barriers.png"):
        assert section in report
    assert "no number in the paper" in report and "not trained with the paper's settings" in report
    return res, report


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("align") / "mlp"
    assert align_cmd.main(MLP_ARGS + ["--out", str(out)]) == 0
    return out


def test_command_is_registered():
    module, function = commands()["align"].target.split(":")
    assert getattr(importlib.import_module(module), function) is align_cmd.main


@pytest.mark.slow
def test_mlp_end_to_end(mlp_run):
    res, _ = _check(mlp_run, "mnist-mlp", [("loss", "")])
    # the training log and the runner-layout checkpoints are there, and the saved naive barrier is what
    # align.loss_barrier gives on those checkpoints with the experiment's test cross-entropy
    lines = (mlp_run / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(line)["seed"] for line in lines} == {0, 1}
    saved = {k: v for k, v in res["config"].items() if k in mnist_mlp.Config.__dataclass_fields__}
    cfg, _ = build_config(mnist_mlp.Config, None, saved, {})
    data = mnist_mlp.load_data(cfg)
    for run in res["runs"]:
        act = parse_activation(run["activation"])
        a, b = (align_cmd.load_final(mnist_mlp.EXPERIMENT, cfg, act, data,
                                     align_cmd.checkpoint_path(str(mlp_run), act.label(), seed), seed)[0]
                for seed in (0, 1))
        again = align.loss_barrier(a, b, lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
                                   [(data.x_test, data.y_test)], 5)
        assert again["barrier"] == pytest.approx(run["metrics"]["barrier_naive"], rel=1e-5)


@pytest.mark.slow
def test_from_reuses_checkpoints(mlp_run, tmp_path):
    out = tmp_path / "again"
    assert align_cmd.main(["mnist-mlp", "--from", str(mlp_run), "--num-points", "5", "--quiet",
                           "--out", str(out)]) == 0
    first, again = _results(mlp_run), _results(out)
    assert again["config"]["from"] == str(mlp_run) and not (out / "checkpoints").exists()
    for r1, r2 in zip(first["runs"], again["runs"]):
        assert r1["activation"] == r2["activation"]
        for method in align_cmd.METHODS:
            assert r2["metrics"][f"barrier_{method}"] == pytest.approx(r1["metrics"][f"barrier_{method}"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    (["--epochs", "3"], "epochs is 3 here but the saved run used"),
    (["--activations", "silu"], "silu-seed0.pt"),
    (["--seed-pair", "0", "5"], "relu-seed5.pt"),
])
def test_from_refuses_mismatches(mlp_run, tmp_path, capsys, extra, message):
    assert align_cmd.main(["mnist-mlp", "--from", str(mlp_run), "--quiet", "--out", str(tmp_path / "x")]
                          + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_bad_options_name_the_value(mlp_run, capsys):
    assert align_cmd.main(["mnist-mlp", "--from", str(mlp_run), "--out", str(mlp_run)]) == 2
    assert "is the --from directory" in capsys.readouterr().err
    assert align_cmd.main(["mnist-mlp", "--seed-pair", "3", "3"]) == 2
    assert "--seed-pair 3 3" in capsys.readouterr().err
    assert align_cmd.main(["mnist-mlp", "--num-points", "1"]) == 2
    assert "--num-points 1" in capsys.readouterr().err


@pytest.mark.slow
def test_vae_end_to_end(tmp_path):
    out = tmp_path / "vae"
    assert align_cmd.main(VAE_ARGS + ["--out", str(out)]) == 0
    res, report = _check(out, "mnist-vae", [("loss", ""), ("kl", "kl_")])
    assert "KL barrier (Figure 14)" in report
    assert [r["width"] for r in res["runs"]] == [51, 51]


def test_vae_kl_is_the_experiments_kl():
    # the KL barrier's loss is the KL term of mnist_vae.vae_loss, batch by batch
    cfg = mnist_vae.Config(hidden=8, batch_size=16)
    torch.manual_seed(0)
    model = ToyVAE(12, 9, cfg.latent, torch.nn.ReLU(), torch.nn.ReLU())
    x = (torch.rand(50, 12) > 0.5).float()
    kl_fn = mnist_vae.EXPERIMENT.align.losses(cfg)["kl"]
    expected, n = 0.0, 0
    chunks = mnist_vae.eval_chunks(50, 16)
    assert chunks == [(0, 16), (16, 32), (32, 48), (48, 50)]
    with torch.no_grad():
        for i, j in chunks:
            logits, z = model(x[i:j])
            kl = mnist_vae.vae_loss(logits, x[i:j], z, 1.0) - mnist_vae.vae_loss(logits, x[i:j], z, 0.0)
            expected += kl.item() * (j - i)
            n += j - i
        assert kl_fn(model, (x, None)) == pytest.approx(expected / n, rel=1e-4)
    assert mnist_vae.eval_chunks(49, 16)[-1] == (34, 49)  # no batch of one


def test_unfinished_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoints" / "relu-seed0.pt"
    path.parent.mkdir()
    cfg = mnist_mlp.Config()
    settings = result_settings(cfg)
    torch.save({"model": {}, "optimizer": {}, "step": 3, "total": 10, "curve": [], "activation": "relu", "seed": 0,
                "fingerprint": fingerprint(settings), "settings": settings}, path)
    with pytest.raises(ValueError, match="step 3 of 10"):
        align_cmd.load_final(mnist_mlp.EXPERIMENT, cfg, parse_activation("relu"), None, str(path), 0)
