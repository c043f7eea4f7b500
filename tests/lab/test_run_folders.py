"""Runs that never lie: one config per folder, one writer, checked resumes, validated options, clean stops."""

import gzip
import json
import os
import socket
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from colu_lab.experiments.hemisphere import experiment as hemisphere
from colu_lab.framework import runner
from colu_lab.commands.train import report_main, run_main, sweep_main
from colu_lab.framework.rundir import LOCK_NAME

SMALL = ["mnist-mlp", "--seeds", "1", "--steps", "6", "--batch-size", "64", "--eval-every", "2",
         "--ckpt-every", "2", "--activations", "relu", "--set", "width=16"]


def _run(out, *extra, quiet=True):
    return run_main([*SMALL, *(["--quiet"] if quiet else []), "--out", str(out), *extra])


def _results(out):
    return json.loads((out / "results.json").read_text())


def _log_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ stale results
@pytest.mark.slow
def test_fresh_run_refuses_a_folder_with_results_and_overwrite_clears_it(tmp_path, capsys):
    out = tmp_path / "x"
    assert _run(out, "--lr", "0.001") == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert _run(out, "--lr", "0.05") == 2
    err = capsys.readouterr().err
    assert "already holds results" in err and "--resume" in err and "--overwrite" in err
    assert (out / "results.json").read_bytes() == before  # nothing touched
    (out / "notes.txt").write_text("mine")
    assert _run(out, "--lr", "0.05", "--overwrite") == 0
    res = _results(out)
    assert res["config"]["lr"] == 0.05 and all(r["settings"]["lr"] == 0.05 for r in res["runs"])
    assert len(_log_rows(out)) == 3  # the old log was not appended to
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are deleted


def test_quick_halted_run_cannot_land_on_a_finished_folder(tmp_path, capsys):
    out = tmp_path / "x"
    assert _run(out) == 0
    assert run_main(["mnist-mlp", "--quiet", "--quick", "--halt-after", "5", "--out", str(out)]) == 2
    assert "already holds results" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_refuses_records_and_checkpoints_of_other_settings(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(a, "--lr", "0.001", "--activations", "relu", "silu") == 0
    assert _run(b, "--lr", "0.05", "--activations", "relu", "silu", "--halt-after", "3") == 3
    # a finished record of lr 0.001 among lr 0.05 checkpoints (what the old runner silently reused)
    (b / "runs").mkdir(exist_ok=True)
    (b / "runs" / "relu-seed0.json").write_bytes((a / "runs" / "relu-seed0.json").read_bytes())
    capsys.readouterr()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(b), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "relu-seed0.json" in err and "lr=0.001 (now 0.05)" in err and "--overwrite" in err
    assert not (b / "results.json").exists()
    # the same for a checkpoint
    os.remove(b / "runs" / "relu-seed0.json")
    (b / "checkpoints" / "relu-seed0.pt").write_bytes((a / "checkpoints" / "relu-seed0.pt").read_bytes())
    assert run_main(["mnist-mlp", "--quiet", "--out", str(b), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "relu-seed0.pt" in err and "lr=0.001 (now 0.05)" in err


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err
    assert run_main([*SMALL, "--quiet", "--out", str(tmp_path / "e"), "--resume", "--overwrite"]) == 2


@pytest.mark.slow
def test_resume_may_add_seeds_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "x"
    assert _run(out) == 0
    first = _results(out)["runs"][0]
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume", "--seeds", "2"]) == 0
    res = _results(out)
    assert [r["seed"] for r in res["runs"]] == [0, 1] and res["runs"][0] == first
    assert res["config"]["seeds"] == 2


@pytest.mark.slow
def test_log_holds_each_step_once_after_kill_and_resume(tmp_path):
    full, h2, h4 = tmp_path / "full", tmp_path / "h2", tmp_path / "h4"
    assert _run(full) == 0
    assert _run(h2, "--halt-after", "2") == 3
    assert _run(h4, "--halt-after", "4") == 3
    # a process killed at step 4 after its last checkpoint at step 2: the log is ahead of the checkpoint
    (h4 / "checkpoints" / "relu-seed0.pt").write_bytes((h2 / "checkpoints" / "relu-seed0.pt").read_bytes())
    with open(h4 / "metrics.jsonl", "a") as f:
        f.write('{"activation": "relu", "seed": 0, "st')  # a line torn by the kill
    assert run_main(["mnist-mlp", "--quiet", "--out", str(h4), "--resume"]) == 0
    rows = _log_rows(h4)
    keys = [(r["activation"], r["seed"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3
    assert rows == _log_rows(full)
    assert _results(h4)["runs"][0]["curve"] == _results(full)["runs"][0]["curve"]


# ------------------------------------------------------------------ one writer per folder
def test_a_live_lock_stops_a_second_writer(tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                 "command": "colu run mnist-mlp", "since": "now"}))
        assert _run(out) == 2
        err = capsys.readouterr().err
        assert f"in use by process {sleeper.pid}" in err and LOCK_NAME in err
        assert not (out / "config.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_and_tmp_debris_cleaned(tmp_path, capsys):
    out = tmp_path / "x"
    assert _run(out, "--halt-after", "2") == 3
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    debris = [out / ".results.json.k3j2.tmp", out / "runs" / ".relu-seed0.json.a1b2.tmp",
              out / "checkpoints" / ".relu-seed0.pt.x9y8.tmp"]
    for path in debris:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    capsys.readouterr()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume"]) == 0
    assert "taking over the lock" in capsys.readouterr().err
    assert not any(p.exists() for p in debris)
    assert not (out / LOCK_NAME).exists()  # released at the end


# ------------------------------------------------------------------ shareable files
def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "x"
        assert _run(out) == 0
    finally:
        os.umask(old)
    files = [out / "results.json", out / "report.md", out / "config.json", out / "metrics.jsonl",
             out / "runs" / "relu-seed0.json", out / "checkpoints" / "relu-seed0.pt", *out.glob("*.png")]
    assert len(files) > 6
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ------------------------------------------------------------------ validated numbers
@pytest.mark.parametrize("option, value, allowed", [
    ("--seeds", "0", ">= 1"), ("--epochs", "0", ">= 1"), ("--steps", "0", ">= 1"), ("--batch-size", "0", ">= 1"),
    ("--ckpt-every", "0", ">= 1"), ("--eval-every", "-1", ">= 0"), ("--lr", "0", "> 0"), ("--lr", "-0.1", "> 0"),
    ("--split-from-test", "0", ">= 1"), ("--seed-offset", "-1", ">= 0"),
])
def test_out_of_range_options_name_option_value_and_range(tmp_path, capsys, option, value, allowed):
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), option, value]) == 2
    err = capsys.readouterr().err
    assert f"{option} {value}" in err.replace("'", "") and allowed in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_learning_rate_must_be_finite(tmp_path, capsys, value):
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), "--lr", value]) == 2
    assert "not a finite number" in capsys.readouterr().err


def test_yaml_and_set_values_are_checked_too(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seeds: true\n")
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), "--config", str(cfg)]) == 2
    assert "seeds=True is a yes/no value" in capsys.readouterr().err
    cfg.write_text("batch_size: 0\n")
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), "--config", str(cfg)]) == 2
    assert "batch_size 0 is out of range" in capsys.readouterr().err
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), "--set", "width=0"]) == 2
    assert "width 0 is out of range" in capsys.readouterr().err


@pytest.mark.slow
def test_steps_override_epochs(tmp_path):
    out = tmp_path / "x"
    assert run_main([*SMALL, "--quiet", "--out", str(out), "--epochs", "3"]) == 0  # SMALL gives --steps 6
    assert _results(out)["runs"][0]["steps"] == 6


def _write_idx(directory, stem, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(directory / (stem + ".gz"), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _tiny_t10k(directory, n=40):
    directory.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(directory, "t10k-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
    _write_idx(directory, "t10k-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)
    return directory


def test_split_from_test_must_leave_training_images(tmp_path, capsys):
    data = _tiny_t10k(tmp_path / "mnist")
    assert run_main([*SMALL, "--quiet", "--out", str(tmp_path / "x"), "--data", str(data),
                     "--split-from-test", "40"]) == 2
    assert "--split-from-test 40: must be between 1 and 39" in capsys.readouterr().err


# ------------------------------------------------------------------ --data means what it says
def test_data_alone_names_the_dataset_from_its_files(tmp_path):
    data = _tiny_t10k(tmp_path / "mnist")
    out = tmp_path / "x"
    assert run_main([*SMALL, "--quiet", "--out", str(out), "--data", str(data), "--split-from-test", "10"]) == 0
    res = _results(out)
    assert res["config"]["dataset"] == "mnist" and res["data"]["name"] == "mnist"
    assert res["data"]["train_examples"] == 30


def test_resume_refuses_a_data_folder_whose_files_changed(tmp_path, capsys):
    """Only the path used to be fingerprinted: shuffled labels in the same folder continued silently."""
    data = _tiny_t10k(tmp_path / "mnist")
    out = tmp_path / "x"
    args = [*SMALL, "--quiet", "--out", str(out), "--data", str(data), "--split-from-test", "10"]
    assert run_main([*args, "--halt-after", "2"]) == 3
    labels = data / "t10k-labels-idx1-ubyte.gz"
    original = labels.read_bytes()
    _write_idx(data, "t10k-labels-idx1-ubyte", np.random.default_rng(0).integers(0, 10, (40,))[::-1], 2049)
    capsys.readouterr()
    assert run_main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "relu-seed0.pt" in err and "data_digest=" in err and "--overwrite" in err
    labels.write_bytes(original)  # the same files again: the run continues
    assert run_main([*args, "--resume"]) == 0


def test_a_checkpoint_copied_over_another_runs_is_refused(tmp_path, capsys):
    """Checkpoints record their activation and seed: copying colu's over relu's is caught on --resume and
    by colu align, not trained on or aligned."""
    from colu_lab.commands import align as align_cmd

    out = tmp_path / "x"
    assert _run(out, "--activations", "relu", "colu:S=4") == 0
    ckpt = out / "checkpoints"
    (ckpt / "relu-seed0.pt").write_bytes((ckpt / "colu-S4-seed0.pt").read_bytes())
    os.remove(out / "runs" / "relu-seed0.json")  # so that --resume reaches for the checkpoint
    capsys.readouterr()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume"]) == 2
    assert "relu-seed0.pt holds the run of colu:S=4 seed 0, not relu seed 0" in capsys.readouterr().err
    done = tmp_path / "done"
    assert _run(done, "--activations", "relu", "--seeds", "2") == 0
    (done / "checkpoints" / "relu-seed1.pt").write_bytes((done / "checkpoints" / "relu-seed0.pt").read_bytes())
    assert align_cmd.main(["mnist-mlp", "--quiet", "--from", str(done), "--activations", "relu",
                           "--num-points", "3", "--out", str(tmp_path / "align")]) == 2
    assert "relu-seed1.pt holds the run of relu seed 0, not relu seed 1" in capsys.readouterr().err


def test_data_that_no_experiment_reads_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    assert _run(tmp_path / "x", "--data", str(empty)) == 2
    err = capsys.readouterr().err
    assert "no dataset files this package reads" in err and "--dataset" in err
    assert run_main(["hemisphere", "--quiet", "--out", str(tmp_path / "h"), "--data", str(empty)]) == 2
    assert "generates its own data" in capsys.readouterr().err
    assert _run(tmp_path / "y", "--dataset", "digits", "--data", str(empty)) == 2
    assert "does not read --data" in capsys.readouterr().err


def test_data_help_names_only_formats_an_experiment_reads(capsys):
    from colu_lab.registry import EXPERIMENTS

    with pytest.raises(SystemExit):
        run_main(["--help"])
    text = capsys.readouterr().out
    data_help = " ".join(text.split("\n  --data DATA", 1)[1].split("\n  --dataset", 1)[0].split())
    readable = {name for e in EXPERIMENTS.values() for name in e.datasets}
    # a format is named in --data's help exactly when some experiment's --dataset reads it
    for word, dataset in (("MNIST", "mnist"), ("CIFAR-10", "cifar10")):
        assert (word in data_help) == (dataset in readable), (word, sorted(readable))
    if "cifar10" in readable:
        assert "data_batch_1" in data_help and "test_batch" in data_help  # the CIFAR-10 files, by name


# ------------------------------------------------------------------ friendly interruptions
def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, capsys, monkeypatch):
    out = tmp_path / "x"
    real = runner.train_run
    calls = []

    def train_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_run", train_then_interrupt)
    assert _run(out, "--activations", "relu", "silu") == 130
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "finished runs: relu seed 0" in err
    command = err.split("continue with: ", 1)[1].strip()
    assert command == f"colu run mnist-mlp --out {out} --resume"
    assert not (out / LOCK_NAME).exists()
    monkeypatch.setattr(runner, "train_run", real)
    assert run_main(command.split()[2:] + ["--quiet"]) == 0
    assert [r["activation"] for r in _results(out)["runs"]] == ["relu", "silu"]


@pytest.mark.parametrize("victim", ["checkpoints/relu-seed0.pt", "runs/relu-seed0.json"])
def test_damaged_files_name_themselves_and_suggest_overwrite(tmp_path, capsys, victim):
    out = tmp_path / "x"
    if victim.startswith("runs"):
        assert _run(out) == 0  # --resume on a finished folder reuses its records
    else:
        assert _run(out, "--halt-after", "4") == 3
    path = out / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert os.path.basename(victim) in err and "--overwrite" in err and "Traceback" not in err


# ------------------------------------------------------------------ defaults train
@pytest.mark.slow
def test_default_mlp_budget_trains_on_the_digits(tmp_path):
    out = tmp_path / "x"
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--seeds", "1",
                     "--activations", "colu:S=4,soft,share"]) == 0
    res = _results(out)
    run = res["runs"][0]
    assert run["steps"] == 590 and run["batch_size"] == 1024
    assert run["metrics"]["test_accuracy"] > 0.9  # 20 steps gave 0.74 ± 0.20
    assert len(run["curve"]) <= 51  # eval once per epoch, but at most 50 times
    assert "590 optimizer steps per run (batch 1024" in (out / "report.md").read_text()


# ------------------------------------------------------------------ what users see
@pytest.mark.slow
def test_progress_lines_off_a_terminal_and_sweep_estimate(tmp_path, capsys):
    out = tmp_path / "s"
    assert sweep_main([*SMALL[:-4], "--activations", "relu", "silu", "--set", "width=16", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "[mnist-mlp] relu seed 0: step 2/6" in captured.err and "step 6/6" in captured.err
    assert "2 activation(s) x 1 seed(s) = 2 runs" in captured.out
    assert "for the 1 still to run" in captured.out
    # one seed: no made-up spread
    assert "(n=1)" in captured.out and "± 0.0000" not in captured.out
    report = (out / "report.md").read_text()
    assert f"`colu report {out}`" in report and "{DIR}" not in report


def test_latitude_plot_labels_axes_and_seed(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(hemisphere, "save_figure", lambda fig, out_dir, name: figures.append(fig) or name)
    probe = {"latitudes": {"90.0": {"x": [1.0, 0.0], "y": [0.0, 1.0]}}}
    results = {"runs": [{"activation": "relu", "seed": 3, "probe": probe}]}
    assert hemisphere.extra_plots(results, str(tmp_path)) == ["latitudes.png"]
    ax = figures[0].axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and "seed 3" in ax.get_title()


@pytest.mark.slow
def test_align_refuses_an_earlier_result_folder_and_checkpoints_of_other_settings(tmp_path, capsys):
    from colu_lab.commands import align as align_cmd

    run_dir = tmp_path / "run"
    assert run_main([*SMALL, "--quiet", "--seeds", "2", "--out", str(run_dir)]) == 0
    out = tmp_path / "align"
    args = ["mnist-mlp", "--quiet", "--from", str(run_dir), "--activations", "relu", "--num-points", "3",
            "--out", str(out)]
    assert align_cmd.main(args) == 0
    capsys.readouterr()
    assert align_cmd.main(args) == 2
    assert "already holds results" in capsys.readouterr().err
    # a checkpoint from other settings under the --from folder's name is refused, naming the difference
    other = tmp_path / "other"
    assert run_main([*SMALL, "--quiet", "--seeds", "2", "--lr", "0.01", "--out", str(other)]) == 0
    ckpt = run_dir / "checkpoints" / "relu-seed1.pt"
    ckpt.write_bytes((other / "checkpoints" / "relu-seed1.pt").read_bytes())
    assert align_cmd.main(args + ["--overwrite"]) == 2
    assert "relu-seed1.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_report_refuses_a_folder_a_live_run_holds(tmp_path, capsys):
    out = tmp_path / "x"
    assert _run(out) == 0
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        assert report_main([str(out)]) == 2
        assert "in use by process" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert report_main([str(out)]) == 0  # the dead owner's lock is taken over


def test_demo_replaces_only_an_earlier_demo(tmp_path, capsys):
    from colu_lab.commands import demo

    out = tmp_path / "demo"
    (out / "hemisphere").mkdir(parents=True)
    (out / "hemisphere" / "config.json").write_text(json.dumps({"experiment": "hemisphere", "command": "colu demo"}))
    assert demo._holds_a_demo(str(out / "hemisphere"))
    (out / "hemisphere" / "config.json").write_text(json.dumps({"experiment": "hemisphere",
                                                                "command": "colu run hemisphere"}))
    assert not demo._holds_a_demo(str(out / "hemisphere"))
    assert demo.main(["--out", str(out), "--seeds", "1", "--quiet"]) == 2
    assert "already holds results" in capsys.readouterr().err


def _take_lock(path, start, held, release):
    """A process that takes the folder's lock as soon as ``start`` is set and reports whether it got it."""
    from colu_lab.framework.rundir import FolderBusy, RunFolder

    start.wait()
    try:
        RunFolder(path).lock("contender")
    except FolderBusy:
        held.put(False)
        return
    held.put(True)
    release.wait(5)  # keep it while the others try


@pytest.mark.parametrize("takers", [2, 3])
def test_concurrent_takers_of_a_stale_lock_never_both_hold_it(tmp_path, takers):
    """Read-unlink-create let two processes take over the same stale lock (43 of 100 trials); never again."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = json.dumps({"pid": dead.pid, "host": socket.gethostname()})
    doubled = 0
    for trial in range(100 if takers == 2 else 30):
        out = tmp_path / f"t{trial}"
        out.mkdir()
        (out / LOCK_NAME).write_text(stale)
        start, release, held = ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_take_lock, args=(str(out), start, held, release)) for _ in range(takers)]
        for p in procs:
            p.start()
        start.set()
        got = [held.get(timeout=30) for _ in procs]
        release.set()
        for p in procs:
            p.join(30)
        assert got.count(True) >= 1, f"trial {trial}: nobody took over the stale lock"
        doubled += got.count(True) > 1
    assert doubled == 0, f"{doubled} trials had two holders of one lock"


@pytest.mark.parametrize("env, argv, threads", [(None, [], 1), ("3", [], 3), (None, ["--threads", "2"], 2),
                                                 ("3", ["--threads", "2"], 2)])
def test_the_demo_runs_one_torch_thread_unless_told_otherwise(monkeypatch, env, argv, threads):
    """Two threads made the demo several times slower on a busy 2-core machine: one unless the user says."""
    from colu_lab.commands import demo

    seen = []
    monkeypatch.setattr(demo, "_demo", lambda args: seen.append(torch.get_num_threads()) or 0)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # what torch would have chosen from OMP_NUM_THREADS=3 at start-up
    try:
        assert demo.main(argv) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [threads]


def test_the_demo_refuses_zero_threads(capsys):
    from colu_lab.commands import demo

    with pytest.raises(SystemExit):
        demo.main(["--threads", "0"])
    assert "--threads 0: must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------ failures name the file, value or run
def test_resume_names_a_log_that_is_not_utf8(tmp_path, capsys):
    """A metrics.jsonl holding bytes that are not UTF-8 stopped --resume with a bare UnicodeDecodeError."""
    out = tmp_path / "x"
    assert _run(out, "--halt-after", "2") == 3
    log = out / "metrics.jsonl"
    damaged = log.read_bytes() + b'{"activation": "relu", "seed": 0, "step": 9, "note": "\xff"}\n'
    log.write_bytes(damaged)
    capsys.readouterr()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{log}: not UTF-8 text" in err and "--overwrite" in err and "Traceback" not in err
    assert log.read_bytes() == damaged  # left as it was


def test_report_names_a_results_file_missing_its_keys(tmp_path, capsys):
    """Valid JSON without "runs" (or with "runs" not a list) ended colu report in a KeyError traceback."""
    out = tmp_path / "x"
    assert _run(out) == 0
    path = out / "results.json"
    good, report = json.loads(path.read_text()), (out / "report.md").read_bytes()
    for damage, named in [(lambda r: r.pop("runs"), "'runs' is missing"),
                          (lambda r: r.update(runs={"relu": []}), "'runs' is a dict, not a list"),
                          (lambda r: r["runs"][0].pop("curve"), "runs[0] has no 'curve'"),
                          (lambda r: r.pop("config"), "'config' is missing")]:
        results = json.loads(json.dumps(good))
        damage(results)
        path.write_text(json.dumps(results))
        before = path.read_bytes()
        capsys.readouterr()
        assert report_main([str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{path}: " in err and named in err and "Traceback" not in err, err
        assert path.read_bytes() == before and (out / "report.md").read_bytes() == report  # nothing rewritten


def _disk_full_for(monkeypatch, name):
    """Make ``os.fsync`` fail with ENOSPC for the temporary file of ``name`` (colu.files syncs each file it
    writes before renaming it into place), as a full disk would."""
    import errno

    real = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file of a descriptor in /proc")
@pytest.mark.parametrize("victim", ["config.json", "checkpoints/relu-seed0.pt", "runs/relu-seed0.json", "report.md"])
def test_a_full_disk_names_the_file_being_written(tmp_path, capsys, monkeypatch, victim):
    """ENOSPC used to print "[Errno 28] No space left on device" without saying which file."""
    out = tmp_path / "x"
    _disk_full_for(monkeypatch, os.path.basename(victim))
    assert _run(out) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / victim}: No space left on device" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")] and not (out / LOCK_NAME).exists()
    if victim == "report.md":  # colu report too
        assert "--resume" in err
        assert report_main([str(out)]) == 2
        assert f"cannot write {out / victim}: No space left on device" in capsys.readouterr().err


@pytest.mark.parametrize("lr, step, on_device", [("1e30", 2, False), ("1e30", 2, True), ("1e300", 1, False)])
def test_a_diverging_run_is_recorded_and_the_command_fails_naming_it(tmp_path, capsys, monkeypatch, lr, step,
                                                                     on_device):
    """--lr 1e30 used to end in matplotlib ("Data cannot be log-scaled"), --lr 1e300 in a traceback from Adam.
    Each diverged run stops, is recorded as diverged, the others still train, and the command exits 1.
    ``on_device``: the loss is watched the way it is on a GPU (on the device, read at evaluations only)."""
    import re

    if on_device:
        monkeypatch.setattr(runner, "_loss_is_cheap_to_read", lambda device: False)
    out = tmp_path / "x"
    assert _run(out, "--lr", lr, "--activations", "relu", "silu") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for act in ("relu", "silu"):
        found = re.search(rf"{act} seed 0 diverged at step (\d+) \((loss|update) = (nan|inf)\)", err)
        assert found, err
        assert int(found.group(1)) == step
    res = _results(out)
    assert [r["activation"] for r in res["runs"]] == ["relu", "silu"] and all(r["diverged"] for r in res["runs"])
    assert all(v["diverged"] == 1 for per in res["summary"].values() for v in per.values())
    assert "diverged" in (out / "report.md").read_text()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume"]) == 1  # the records are kept
    assert "relu seed 0 diverged at step" in capsys.readouterr().err


def test_set_errors_name_the_set_option_as_written(tmp_path, capsys):
    """--set lr=-1 was reported as "command line: --lr -1.0", an option the user never typed."""
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), "--set", "lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "--set lr=-1:" in err and "--lr" not in err and "> 0" in err
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), "--set", "seeds=many"]) == 2
    assert "--set seeds=many:" in capsys.readouterr().err
    assert run_main(["mnist-mlp", "--quiet", "--out", str(tmp_path / "x"), "--lr", "-1"]) == 2
    assert "--lr -1.0 is out of range" in capsys.readouterr().err  # the option itself is named as before


def test_resume_with_changed_options_says_what_differs_in_words(tmp_path, capsys):
    """Was "lr=0.05 (saved: 0.01) differ", and "(saved: None)" for a budget the saved run did not set."""
    out = tmp_path / "x"
    assert run_main(["mnist-mlp", "--quiet", "--seeds", "1", "--batch-size", "64", "--activations", "relu",
                     "--set", "width=16", "--epochs", "1", "--lr", "0.01", "--halt-after", "2",
                     "--out", str(out)]) == 3
    capsys.readouterr()
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume", "--lr", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "--resume: lr is 0.05 here but the saved run used 0.01" in err and "--out" in err
    assert run_main(["mnist-mlp", "--quiet", "--out", str(out), "--resume", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "steps is 5 here but the saved run did not set it" in err and "None" not in err


@pytest.mark.parametrize("ckpt_every, stop_at, lost", [
    ("500", 3, "no checkpoint of it yet, so all 3 of its steps are lost"),
    ("2", 5, "the 1 step since its checkpoint at step 4 is lost"),
])
def test_ctrl_c_says_which_steps_of_the_unfinished_run_are_lost(tmp_path, capsys, monkeypatch, ckpt_every,
                                                                 stop_at, lost):
    """Ctrl-C before a run's first checkpoint discarded its steps without a word."""
    real = runner.lr_factor

    def lr_then_interrupt(cfg, step, total):
        if step == stop_at:
            raise KeyboardInterrupt
        return real(cfg, step, total)

    monkeypatch.setattr(runner, "lr_factor", lr_then_interrupt)
    assert _run(tmp_path / "x", "--ckpt-every", ckpt_every) == 130
    err = capsys.readouterr().err
    assert f"interrupted in relu seed 0 at step {stop_at} of 6: {lost}" in err, err
    assert err.strip().count("\n") == 0 and "continue with: " in err


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 800000000000 bytes. Error code 12 (Cannot allocate memory)"),
])
def test_running_out_of_memory_names_the_run_and_batch_size(tmp_path, capsys, monkeypatch, error):
    def out_of_memory(cfg, step, total):
        raise error

    monkeypatch.setattr(runner, "lr_factor", out_of_memory)
    assert _run(tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "relu seed 0" in err and "out of memory" in err and "--batch-size 64" in err and "Traceback" not in err
