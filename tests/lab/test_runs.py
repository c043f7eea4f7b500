"""End to end: quick modes, resume, 2-process DDP, the VAE loss, the report."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from colu_lab.experiments.mnist_vae import experiment as mnist_vae
from colu_lab.commands.train import report_main, run_main

SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def _results(out):
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f)


def _check_outputs(out, experiment, metrics, n_runs):
    res = _results(out)
    assert res["experiment"] == experiment and isinstance(res["config"], dict)
    assert len(res["runs"]) == n_runs
    for run in res["runs"]:
        assert set(run) >= {"activation", "seed", "metrics", "curve"}
        assert set(metrics) <= set(run["metrics"]) and all(math.isfinite(run["metrics"][m]) for m in metrics)
        assert run["curve"] and all(m in run["curve"][-1] for m in metrics)
    for act, per_metric in res["summary"].items():
        for m in metrics:
            assert set(per_metric[m]) >= {"mean", "std", "n"} and per_metric[m]["n"] >= 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines and all("activation" in json.loads(line) for line in lines)
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "## Config" in report and "## Data actually used" in report
    return res, report


@pytest.mark.slow
@pytest.mark.parametrize("experiment, metrics", [
    ("hemisphere", ["test_mse", "max_test_error"]),
    ("mnist-mlp", ["train_loss", "test_accuracy"]),
    ("mnist-vae", ["train_loss", "test_loss"]),
])
def test_quick_mode_end_to_end(tmp_path, experiment, metrics):
    out = tmp_path / experiment
    assert run_main([experiment, "--quick", "--quiet", "--out", str(out)]) == 0
    runs = {"mnist-vae": 4 * 2, "hemisphere": 5 * 2}.get(experiment, 3 * 2)  # default activations x 2 seeds
    res, report = _check_outputs(out, experiment, metrics, n_runs=runs)
    if experiment == "hemisphere":
        assert (out / "latitudes.png").stat().st_size > 1000
        assert "Figure 6" in report
    else:
        # built-in digits are not MNIST: the report must not claim a reproduction
        assert "not comparable" in report and "reproduced:" not in report
        assert "Table" in report  # paper values sit beside ours
    # colu report regenerates the same summary from results.json
    before = res["summary"]
    os.remove(out / "report.md")
    assert report_main([str(out)]) == 0
    assert (out / "report.md").exists() and _results(out)["summary"] == before


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
    args = ["mnist-mlp", "--quiet", "--seeds", "1", "--steps", "14", "--batch-size", "64", "--eval-every", "3",
            "--ckpt-every", "4", "--activations", "relu", "colu:S=4,soft,share", "--set", "width=64"]
    assert run_main(args + ["--out", str(tmp_path / "full")]) == 0
    halted = tmp_path / "halted"
    assert run_main(args + ["--out", str(halted), "--halt-after", "6"]) == 3  # interrupted mid-epoch
    assert not (halted / "results.json").exists() and (halted / "checkpoints").is_dir()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(halted), "--resume"]) == 0
    full, resumed = _results(tmp_path / "full"), _results(halted)
    assert [r["metrics"] for r in resumed["runs"]] == [r["metrics"] for r in full["runs"]]
    assert [r["curve"] for r in resumed["runs"]] == [r["curve"] for r in full["runs"]]
    # a resume that changes the experiment's settings is refused
    assert run_main(["mnist-mlp", "--quiet", "--out", str(halted), "--resume", "--lr", "0.1"]) == 2


def _torchrun(args, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "colu", "run", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("experiment, extra", [
    ("mnist-mlp", ["--activations", "colu:S=4", "--set", "width=64", "--batch-size", "64"]),
    ("mnist-vae", ["--activations", "colu:G=10,soft,share", "--set", "hidden=40", "--batch-size", "32"]),
])
def test_ddp_two_processes_match_single(tmp_path, experiment, extra):
    args = [experiment, "--quiet", "--seeds", "1", "--steps", "8", "--eval-every", "4", "--device", "cpu", *extra]
    assert run_main(args + ["--out", str(tmp_path / "single")]) == 0
    _torchrun(args, tmp_path / "ddp")
    single, ddp = _results(tmp_path / "single"), _results(tmp_path / "ddp")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    for a, b in zip(single["runs"][0]["curve"], ddp["runs"][0]["curve"]):
        assert a["step"] == b["step"]
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key


def test_vae_loss_matches_hand_computation():
    torch.manual_seed(0)
    x = (torch.rand(5, 6) > 0.5).double()
    logits = torch.randn(5, 6, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64) * 2 + 0.5
    rows = x.tolist()
    bce = 0.0
    for xi, li in zip(rows, logits.tolist()):
        for xn, ln in zip(xi, li):
            p = 1 / (1 + math.exp(-ln))
            bce -= xn * math.log(p) + (1 - xn) * math.log(1 - p)
    bce /= 5
    kl = 0.0
    for j in range(3):
        col = [z[i, j].item() for i in range(5)]
        mu = sum(col) / 5
        var = sum((c - mu) ** 2 for c in col) / 4  # unbiased, eq. (13)
        kl += -0.5 * (1 + math.log(var) - mu ** 2 - var)
    got = mnist_vae.vae_loss(logits, x, z, alpha=1.0)
    assert got.item() == pytest.approx(bce + kl, rel=1e-5)
    assert kl > 0  # the sign fix: a KL divergence is never negative
    got_half = mnist_vae.vae_loss(logits, x, z, alpha=0.5)
    assert got_half.item() == pytest.approx(bce + 0.5 * kl, rel=1e-5)


def test_bad_options_fail_clearly(tmp_path, capsys):
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "a"), "--activations", "colu:S=4,sof"]) == 2
    assert "unknown option 'sof'" in capsys.readouterr().err
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "b"), "--dataset", "mnist",
                     "--data", str(tmp_path)]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "c"), "--bf16", "--device", "cpu"]) == 2
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST t10k files not present at {SHARED_MNIST}")
def test_mnist_split_from_test_run_says_so(tmp_path):
    out = tmp_path / "m"
    assert run_main(["mnist-mlp", "--quiet", "--dataset", "mnist", "--data", str(SHARED_MNIST),
                     "--split-from-test", "2000", "--seeds", "1", "--steps", "4", "--set", "width=64",
                     "--activations", "relu", "colu:S=4", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "split into 8000 train / 2000 test" in report and "MNIST TEST set" in report
    assert "not comparable" in report and "--split-from-test" in report


def test_report_names_an_experiment_it_cannot_rebuild(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "align-mnist-mlp", "runs": []}))
    assert report_main([str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "'align-mnist-mlp' is not one colu report rebuilds" in err and "--from" in err
