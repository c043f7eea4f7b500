"""gpt-shakespeare: the quick run end to end, resume, DDP, the real corpus, its metrics and ``colu sample``."""

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from colu_lab.experiments.gpt_shakespeare import experiment as gpt
from colu_lab.experiments.gpt_shakespeare import sample as sample_cmd
from colu_lab.framework.activations import parse_activation
from colu_lab.commands.train import report_main, run_main
from colu_lab.framework.paper import Cited

SHAKESPEARE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"
METRICS = list(gpt.metrics)
ALWAYS = [m for m in METRICS if m != "eval_at_train_loss"]  # read only at a matched_train_loss the run reaches

# a short play-like text: every part of the 90/10 split holds several windows of the quick preset's 16 characters
TEXT = "".join(f"{who}:\n{line}\n\n" for who, line in [
    ("First Citizen", "Before we proceed any further, hear me speak."),
    ("All", "Speak, speak."),
    ("First Citizen", "You are all resolved rather to die than to famish?"),
    ("All", "Resolved. resolved."),
    ("Second Citizen", "One word, good citizens."),
] * 8)


def _results(out):
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def quick_run(corpus_file, tmp_path_factory):
    """One --quick run (relu and colu:S=4, 2 seeds), shared by the tests that read a finished run."""
    out = tmp_path_factory.mktemp("runs") / "gpt"
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--data", str(corpus_file), "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------ fast: definitions and refusals
def test_final_metrics_follow_their_definitions():
    losses = [3.0, 2.5, 2.0, 1.8, 1.7, 1.75, 1.9, 2.0]  # falls, bottoms out at step 50, climbs back
    curve = [{"step": 10 * (i + 1), "train_loss": 1.0 - 0.01 * i, "eval_loss": v} for i, v in enumerate(losses)]
    m = gpt.final_metrics(curve, gpt.Config())
    assert set(m) == set(METRICS) - {"eval_at_train_loss"}  # no matched_train_loss: not read
    assert m["eval_loss"] == 2.0 and m["train_loss"] == pytest.approx(0.93)
    assert m["best_eval_loss"] == 1.7 and m["best_eval_step"] == 50
    assert m["early_eval_loss"] == pytest.approx((3.0 + 2.5) / 2)  # ceil(8 / 4) = 2 points
    assert m["eval_rise"] == pytest.approx(0.3)
    tie = gpt.final_metrics([{"step": s, "train_loss": 1.0, "eval_loss": 1.0} for s in (5, 10, 15)], None)
    assert tie["best_eval_step"] == 5 and tie["eval_rise"] == 0 and tie["early_eval_loss"] == 1.0
    diverged = gpt.final_metrics([{"step": 1, "train_loss": 1.0, "eval_loss": 2.0},
                                  {"step": 2, "train_loss": math.nan, "eval_loss": math.nan}], None)
    assert diverged["best_eval_loss"] == 2.0 and math.isnan(diverged["eval_loss"]) and math.isnan(diverged["eval_rise"])


def test_eval_at_train_loss_interpolates_where_the_train_loss_reaches_the_level():
    curve = [{"step": 10, "train_loss": 2.0, "eval_loss": 2.2}, {"step": 20, "train_loss": 1.6, "eval_loss": 1.9},
             {"step": 30, "train_loss": 1.2, "eval_loss": 1.7}, {"step": 40, "train_loss": 1.0, "eval_loss": 1.8}]
    # 1.5 lies a quarter of the way from train 1.6 to 1.2: eval 1.9 + 0.25 * (1.7 - 1.9)
    assert gpt.eval_at_train_loss(curve, 1.5) == pytest.approx(1.85)
    assert gpt.eval_at_train_loss(curve, 2.5) == 2.2  # reached at the first point already
    assert gpt.eval_at_train_loss(curve, 0.5) is None  # never reached
    cfg = gpt.Config(matched_train_loss=1.5)
    assert gpt.final_metrics(curve, cfg)["eval_at_train_loss"] == pytest.approx(1.85)
    assert "eval_at_train_loss" not in gpt.final_metrics(curve, gpt.Config(matched_train_loss=0.5))
    diverged = [curve[0], {"step": 20, "train_loss": math.nan, "eval_loss": math.nan}]
    assert gpt.eval_at_train_loss(diverged, 1.5) is None


def test_train_chars_cuts_the_training_text_and_says_so(tmp_path, capsys):
    corpus = tmp_path / "input.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    data = gpt.load_data(gpt.Config(data=str(corpus), block_size=16, batch_size=4, eval_batches=1,
                                    eval_batch_size=4, train_chars=100))
    whole = int(len(TEXT) * 0.9)
    assert data.train.numel() == 100 and data.val.numel() == len(TEXT) - whole
    summary = data.summary()
    assert summary["train_examples"] == 100 - 16 and f"the first 100 of the {whole}" in " ".join(summary["notes"])
    assert f"the first 90% ({whole}) for training, of which the first 100" in summary["description"]
    base = ["gpt-shakespeare", "--quick", "--quiet", "--data", str(corpus), "--out", str(tmp_path / "a")]
    assert run_main([*base, "--set", f"train_chars={whole + 1}"]) == 2
    err = capsys.readouterr().err
    assert f"train_chars={whole + 1}" in err and f"16 < N <= {whole}" in err and "Traceback" not in err
    assert not (tmp_path / "a" / "config.json").exists()


def test_train_loss_is_the_per_character_mean_split_across_processes():
    torch.manual_seed(0)
    cfg = gpt.Config(n_layer=1, n_embd=16, n_head=2, block_size=8)
    model, width = gpt.make_model(cfg, parse_activation("colu:S=4"), 11)
    assert width == 64
    x, y = torch.randint(0, 11, (6, 8)), torch.randint(0, 11, (6, 8))
    whole = gpt.train_loss(model, x, y, cfg, global_batch=6, world=1)
    assert whole.item() == pytest.approx(model(x, y)[1].item(), rel=1e-6)
    halves = [gpt.train_loss(model, x[r::2], y[r::2], cfg, global_batch=6, world=2) for r in (0, 1)]
    assert (sum(halves) / 2).item() == pytest.approx(whole.item(), rel=1e-6)  # what DDP's gradient average sees


def test_paper_values_without_a_spread_say_so():
    text = Cited(1.481, None, "Table 7").text()
    assert "1.481" in text and "no std in the paper" in text and "±" not in text
    assert gpt.paper.values[("colu:S=4", 1024)]["eval_loss"].mean == 1.481
    assert gpt.presets["paper"].settings["steps"] == 20000 and gpt.presets["paper"].settings["batch_size"] == 512


def test_missing_corpus_names_the_file_to_get(tmp_path, capsys):
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "input.txt" in err and "--data PATH/input.txt" in err
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--data", str(tmp_path / "nope.txt"),
                     "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "nope.txt" in err and "not found" in err and "input.txt" in err


def test_data_must_be_a_file_and_takes_no_dataset(tmp_path, capsys):
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--data", str(tmp_path), "--out",
                     str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "pass the file" in err.lower()
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--data", str(tmp_path / "input.txt"),
                     "--dataset", "mnist", "--out", str(tmp_path / "b")]) == 2
    assert "--dataset mnist does not apply" in capsys.readouterr().err


def test_activation_must_tile_the_mlp_width(tmp_path, capsys):
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--data", str(tmp_path / "input.txt"),
                     "--activations", "colu:S=4,C=96", "--out", str(tmp_path / "a")]) == 2
    assert "C=96" in capsys.readouterr().err


def test_batch_sizes_beyond_the_corpus_name_option_and_limit(tmp_path, capsys):
    """--batch-size 1e11 used to end in an allocator traceback; the limit is the windows the text holds."""
    corpus = tmp_path / "input.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    windows = int(len(TEXT) * 0.9) - 16  # the quick preset's block of 16 characters
    base = ["gpt-shakespeare", "--quick", "--quiet", "--data", str(corpus), "--out", str(tmp_path / "a")]
    assert run_main([*base, "--batch-size", "100000000000"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 100000000000" in err and f"--batch-size <= {windows}" in err and "Traceback" not in err
    assert run_main([*base, "--set", "eval_batch_size=100000000000"]) == 2
    err = capsys.readouterr().err
    assert "eval_batch_size 100000000000" in err and "eval_batch_size <=" in err
    assert not (tmp_path / "a" / "config.json").exists()


def test_sample_refuses_a_temperature_that_is_not_a_number(tmp_path, capsys):
    folder = _fake_run(tmp_path / "run")
    for value in ("nan", "inf", "-inf"):
        assert sample_cmd.main(["--from", str(folder), f"--temperature={value}"]) == 2
        err = capsys.readouterr().err
        assert f"--temperature {value}" in err and "finite" in err and "Traceback" not in err
    assert sample_cmd.main(["--from", str(folder), "--temperature", "1e-300"]) == 2  # a traceback from torch
    assert "--temperature 1e-300: too small" in capsys.readouterr().err


def test_sample_refuses_a_diverged_run(tmp_path, capsys):
    folder = _fake_run(tmp_path / "run")
    results = json.loads((folder / "results.json").read_text())
    results["runs"][0]["diverged"] = {"step": 3, "loss": "nan"}
    (folder / "results.json").write_text(json.dumps(results))
    assert sample_cmd.main(["--from", str(folder), "--activation", "relu", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "relu seed 0 diverged at step 3" in err and "relu seed 1" in err


def test_sample_warns_about_a_run_of_a_few_steps(tmp_path, capsys):
    corpus = tmp_path / "input.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "young"
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--seeds", "1", "--activations", "relu", "--steps", "4",
                     "--data", str(corpus), "--out", str(out)]) == 0
    capsys.readouterr()
    assert sample_cmd.main(["--from", str(out), "--tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out) == 5 + 1  # the text is still printed
    assert "warning: relu seed 0 trained only 4 steps" in captured.err and "20000" in captured.err


def _fake_run(folder, experiment="gpt-shakespeare", vocab="ab\n"):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"experiment": experiment, "config": {}}))
    runs = [{"activation": a, "seed": s, "steps": 1} for a in ("relu", "colu:S=4") for s in (0, 1)]
    (folder / "results.json").write_text(json.dumps({"experiment": experiment, "data": {"vocab": vocab},
                                                     "runs": runs}))
    return folder


def test_sample_refuses_other_experiments(tmp_path, capsys):
    folder = _fake_run(tmp_path / "vae", experiment="mnist-vae")
    assert sample_cmd.main(["--from", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "'mnist-vae' run" in err and "gpt-shakespeare runs only" in err
    assert sample_cmd.main(["--from", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_sample_lists_the_runs_there_are(tmp_path, capsys):
    folder = _fake_run(tmp_path / "run")
    assert sample_cmd.main(["--from", str(folder), "--activation", "gelu"]) == 2
    assert "its activations are relu, colu:S=4" in capsys.readouterr().err
    assert sample_cmd.main(["--from", str(folder), "--activation", "colu:S=4", "--seed", "5"]) == 2
    assert "its seeds are 0, 1" in capsys.readouterr().err
    assert sample_cmd.main(["--from", str(folder), "--prompt", "abc"]) == 2
    err = capsys.readouterr().err
    assert "'c'" in err and "do not occur" in err
    (folder / "results.json").unlink()
    assert sample_cmd.main(["--from", str(folder)]) == 2
    assert "--resume" in capsys.readouterr().err


# ------------------------------------------------------------------ slow: real runs
@pytest.mark.slow
def test_quick_run_end_to_end(quick_run):
    res = _results(quick_run)
    assert res["experiment"] == "gpt-shakespeare" and len(res["runs"]) == 4
    assert res["data"]["vocab"] == "".join(sorted(set(TEXT)))  # saved for colu sample
    for run in res["runs"]:
        assert set(ALWAYS) <= set(run["metrics"]) and all(math.isfinite(run["metrics"][m]) for m in ALWAYS)
        assert [p["step"] for p in run["curve"]] == [4, 8, 12]
        assert all({"train_loss", "eval_loss"} <= set(p) for p in run["curve"])
        assert run["width"] == 128
    for per_metric in res["summary"].values():
        assert all(per_metric[m]["n"] == 2 for m in ALWAYS)
        assert per_metric["eval_at_train_loss"] == {"mean": None, "std": None, "n": 0, "diverged": 0}
    # the same fixed eval windows for every seed: seeds differ only in their models
    assert len((quick_run / "metrics.jsonl").read_text().splitlines()) == 4 * 3
    assert all((quick_run / f"curve_{m}.png").stat().st_size > 1000 for m in ("eval_loss", "train_loss"))
    report = (quick_run / "report.md").read_text()
    assert "not comparable" in report and "not tiny Shakespeare" in report and "eval_rise" in report
    assert "faster" in report and "more slowly" in report and "reproduced:" not in report
    before = res["summary"]
    os.remove(quick_run / "report.md")
    assert report_main([str(quick_run)]) == 0
    assert (quick_run / "report.md").exists() and _results(quick_run)["summary"] == before


@pytest.mark.slow
def test_sample_prints_text_from_the_vocabulary(quick_run, capsys, monkeypatch):
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    vocab = _results(quick_run)["data"]["vocab"]
    assert sample_cmd.main(["--from", str(quick_run), "--tokens", "37", "--sample-seed", "3"]) == 0
    text = capsys.readouterr().out
    assert text.endswith("\n") and len(text) == 37 + 1 and set(text[:-1]) <= set(vocab)
    assert loads == [True]
    assert sample_cmd.main(["--from", str(quick_run), "--tokens", "37", "--sample-seed", "3"]) == 0
    assert capsys.readouterr().out == text  # reproducible
    assert sample_cmd.main(["--from", str(quick_run), "--activation", "colu:S=4", "--seed", "1", "--tokens", "20",
                            "--prompt", "All:", "--temperature", "0.8", "--top-k", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("All:") and len(out) == 4 + 20 + 1 and set(out[:-1]) <= set(vocab)


@pytest.mark.slow
def test_sample_never_unpickles_code(quick_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(quick_run, copy)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(copy / "checkpoints" / "relu-seed0.pt", "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    assert sample_cmd.main(["--from", str(copy), "--activation", "relu", "--seed", "0"]) == 2
    assert "cannot read this checkpoint" in capsys.readouterr().err and not marker.exists()


@pytest.mark.slow
def test_resume_is_bit_identical(corpus_file, tmp_path):
    args = ["gpt-shakespeare", "--quick", "--quiet", "--seeds", "1", "--activations", "colu:S=4", "relu",
            "--ckpt-every", "5", "--data", str(corpus_file)]
    assert run_main(args + ["--out", str(tmp_path / "full")]) == 0
    halted = tmp_path / "halted"
    assert run_main(args + ["--out", str(halted), "--halt-after", "6"]) == 3
    assert not (halted / "results.json").exists()
    assert run_main(["gpt-shakespeare", "--quiet", "--out", str(halted), "--resume"]) == 0
    full, resumed = _results(tmp_path / "full"), _results(halted)
    assert [r["curve"] for r in resumed["runs"]] == [r["curve"] for r in full["runs"]]
    assert [r["metrics"] for r in resumed["runs"]] == [r["metrics"] for r in full["runs"]]


@pytest.mark.slow
def test_ddp_two_processes_match_single(corpus_file, tmp_path):
    args = ["gpt-shakespeare", "--quick", "--quiet", "--seeds", "1", "--activations", "colu:S=4", "--device", "cpu",
            "--data", str(corpus_file)]
    assert run_main(args + ["--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "colu",
           "run", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    single, ddp = _results(tmp_path / "single"), _results(tmp_path / "ddp")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    for a, b in zip(single["runs"][0]["curve"], ddp["runs"][0]["curve"], strict=True):
        assert a["step"] == b["step"]
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key


@pytest.mark.slow
@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"tiny Shakespeare not present at {SHAKESPEARE}")
def test_tiny_shakespeare_run(tmp_path):
    out = tmp_path / "ts"
    assert run_main(["gpt-shakespeare", "--quick", "--quiet", "--seeds", "1", "--activations", "relu",
                     "--data", str(SHAKESPEARE), "--out", str(out)]) == 0
    data = _results(out)["data"]
    assert data["vocab_size"] == 65 and len(data["vocab"]) == 65
    assert data["train_tokens"] + data["val_tokens"] == gpt.TINY_SHAKESPEARE_CHARS
    assert data["differs_from_paper"] == []
    assert "not tiny Shakespeare" not in (out / "report.md").read_text()
