"""The toy VAE's readings (binarization, bias, step budget), its ablation grid and its figures (5, 8, 12)."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from colu_lab.framework import ablation as ablation_mod  # noqa: E402
from colu_lab.commands import align as align_cmd
from colu_lab.experiments.mnist_vae import experiment as mnist_vae, figures as vae_figures  # noqa: E402
from colu_lab.framework.activations import parse_activation  # noqa: E402
from colu_lab.commands.train import run_main, sweep_main  # noqa: E402
from colu_lab.framework.config import build_config, preset_table
from colu_lab.registry import EXPERIMENTS  # noqa: E402
from colu_lab.framework.runner import budget  # noqa: E402
from colu_lab.commands import plot as plots  # noqa: E402

EXP = mnist_vae.EXPERIMENT
SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"
PNG = b"\x89PNG\r\n\x1a\n"
# a run small enough for a test: 8x8 digits, 50 hidden channels (G = 50 fits), a few steps
TINY = ["--quiet", "--seeds", "1", "--set", "hidden=50", "--batch-size", "32", "--eval-every", "2"]


def _cfg(**values):
    cfg, _ = build_config(mnist_vae.Config, preset_table(EXP), {}, values)
    return cfg


def _results(out):
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f)


def _png_shape(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG
    return matplotlib.image.imread(path).shape


# ------------------------------------------------------------------ binarization
def test_threshold_and_none_readings_of_the_pixels():
    grey = mnist_vae.data_mod.load_digits_data()
    thr = mnist_vae.load_data(_cfg(binarize="threshold"))
    assert torch.equal(thr.x_train, (grey.x_train > 0.5).float()) and torch.equal(thr.x_train_eval, thr.x_train)
    assert torch.equal(thr.x_test, (grey.x_test > 0.5).float())
    assert "differs_from_paper" not in thr.summary() and "binarized at 0.5" in thr.summary()["description"]
    none = mnist_vae.load_data(_cfg(binarize="none"))
    assert torch.equal(none.x_train, grey.x_train) and torch.equal(none.x_test, grey.x_test)
    assert ((none.x_train > 0) & (none.x_train < 1)).any()  # grey levels really are kept
    assert "binarized MNIST" in none.summary()["differs_from_paper"][0]
    with pytest.raises(ValueError, match="binarize 'gray' is not one of threshold, sample, none"):
        _cfg(binarize="gray")


def test_train_images_keeps_the_first_images_and_the_test_set(tmp_path, capsys):
    whole = mnist_vae.load_data(_cfg(binarize="threshold"))
    cut = mnist_vae.load_data(_cfg(binarize="threshold", train_images=100))
    assert torch.equal(cut.x_train, whole.x_train[:100]) and torch.equal(cut.x_test, whole.x_test)
    have = whole.x_train.shape[0]
    assert f"the first 100 of its {have} training images" in " ".join(cut.summary()["notes"])
    assert run_main(["mnist-vae", *TINY, "--set", f"train_images={have + 1}", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"train_images={have + 1}" in err and f"N <= {have}" in err and "Traceback" not in err


def test_sampled_pixels_are_fresh_per_batch_and_a_function_of_seed_and_step():
    cfg = _cfg(binarize="sample", batch_size=1438)  # one batch = the whole training set, so steps share images
    data = mnist_vae.load_data(cfg)
    assert torch.equal(data.x_train, mnist_vae.data_mod.load_digits_data().x_train)  # the probabilities
    x0, y0 = mnist_vae.batches(data, cfg, seed=0, step=0)
    x1, y1 = mnist_vae.batches(data, cfg, seed=0, step=1)
    assert set(x0.unique().tolist()) == {0.0, 1.0}
    # the same images at two steps get different pixels (not only a different order)
    order0, order1 = y0.argsort(stable=True), y1.argsort(stable=True)
    p0 = mnist_vae.permutation_batch(data, cfg, 0, 0)[0]
    p1 = mnist_vae.permutation_batch(data, cfg, 0, 1)[0]
    same0 = x0[(p0 == p1[0]).all(1)]
    same1 = x1[:1]
    assert same0.shape[0] >= 1 and not torch.equal(same0[:1], same1)
    assert not torch.equal(x0[order0], x1[order1])
    # reproducible per (seed, step), different for another seed
    assert torch.equal(mnist_vae.batches(data, cfg, seed=0, step=1)[0], x1)
    assert not torch.equal(mnist_vae.batches(data, cfg, seed=1, step=0)[0], x0)
    # unbiased: over many draws a pixel is 1 as often as its grey level says
    draws = torch.stack([mnist_vae.bernoulli_draw(p0[:20], 0, 101, k) for k in range(400)]).mean(0)
    assert (draws - p0[:20]).abs().max() < 0.1
    # the evaluation sets are one fixed binary draw, the same whatever the run seed
    again = mnist_vae.load_data(cfg)
    assert torch.equal(again.x_test, data.x_test) and set(data.x_test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(again.x_train_eval, data.x_train_eval) and not torch.equal(data.x_train_eval, data.x_train)


def test_sampled_run_resumes_bit_identically(tmp_path):
    args = ["mnist-vae", *TINY, "--steps", "4", "--ckpt-every", "2", "--activations", "colu:G=50,soft,share",
            "--set", "binarize=sample"]
    assert run_main(args + ["--out", str(tmp_path / "full")]) == 0
    halted = tmp_path / "halted"
    assert run_main(args + ["--out", str(halted), "--halt-after", "3"]) == 3  # between two checkpoints
    assert run_main(["mnist-vae", "--quiet", "--out", str(halted), "--resume"]) == 0
    full, resumed = _results(tmp_path / "full"), _results(halted)
    assert [r["curve"] for r in resumed["runs"]] == [r["curve"] for r in full["runs"]]
    assert len(full["runs"][0]["curve"]) == 2


# ------------------------------------------------------------------ bias and budget
def test_bias_switch_and_the_report_calls_it_a_deviation():
    data = mnist_vae.load_data(_cfg())
    act = parse_activation("relu")
    for bias in (False, True):
        model, _ = mnist_vae.build_model(_cfg(bias=bias, hidden=50), act, data)
        layers = [model.enc_in, model.enc_out, model.dec_in, model.dec_out]
        assert all((layer.bias is not None) == bias for layer in layers)
    from colu_lab.framework.report import comparability

    record = {"experiment": "mnist-vae", "data": {}, "runs": [{"steps": 4690}]}
    paper_cfg = {**mnist_vae.PAPER_SETTINGS}
    assert comparability(EXPERIMENTS["mnist-vae"], {**record, "config": paper_cfg}) == []
    assert comparability(EXPERIMENTS["mnist-vae"], {**record, "config": {**paper_cfg, "bias": True}}) == [
        "bias = True (our reading of the paper: False)"]


@pytest.mark.parametrize("values, examples, total", [
    ({}, 8000, 4690),  # the t10k split (10000 - 2000) gets the paper's 4690 steps by default
    ({}, 1438, 4690),  # so do the built-in digits
    ({"epochs": 10}, 8000, 630),  # --epochs replaces the step budget: 10 x ceil(8000 / 128)
    ({"epochs": 10, "steps": 100}, 8000, 100),  # --steps wins over --epochs given beside it
])
def test_step_budget(values, examples, total):
    cfg = _cfg(**values)
    assert budget(cfg, examples)[2] == total


# ------------------------------------------------------------------ the ablation grid
def test_ablation_grid_flips_one_switch_at_a_time():
    base = _cfg()
    variants = mnist_vae.ablation_variants(base)
    reading = (base.binarize, base.bias, base.optimizer)
    assert len(variants) == 5 and list(variants)[0] == mnist_vae._reading(*reading)[0]
    flipped = []
    for name, settings in variants.items():
        changed = [k for k in ("binarize", "bias", "optimizer") if settings[k] != getattr(base, k)]
        assert len(changed) <= 1, name
        flipped += changed
        assert settings["weight_decay_mode"] == ("decoupled" if settings["optimizer"] == "adamw" else "l2")
    assert sorted(flipped) == ["bias", "binarize", "binarize", "optimizer"]
    cfgs = ablation_mod.variant_configs(EXP, base)
    assert all(c.activations == list(mnist_vae.ABLATION_ACTIVATIONS) for c in cfgs.values())
    assert {(c.binarize, c.bias, c.optimizer) for c in cfgs.values()} == {
        (s["binarize"], s["bias"], s["optimizer"]) for s in variants.values()}
    with pytest.raises(ValueError, match="--ablation varies binarize, which the command also sets"):
        ablation_mod.variant_configs(EXP, base, explicit={"binarize", "lr"})
    with pytest.raises(ValueError, match="ablation must be an Ablation"):
        dataclasses.replace(EXP, ablation=object())
    with pytest.raises(ValueError, match="figure 'x' must be a RunFigure"):
        dataclasses.replace(EXP, figures={"x": lambda d, p: p})


def _summary(means_sds, n=3):
    return {act: {m: {"mean": v[0], "std": v[1], "n": n, "diverged": 0} for m, v in metrics.items()}
            for act, metrics in means_sds.items()}


def test_ablation_scale_and_direction_verdicts():
    widths = {"colu:G=0": 2401, "relu": 2401, "colu:G=50,soft,share": 2401}
    # paper (Table 1): identity 110.86 / 119.82; CoLU - ReLU: train +5.03, test -2.04
    good = _summary({"colu:G=0": {"train_loss": (110.86, 0.1), "test_loss": (119.82, 0.1)},
                     "relu": {"train_loss": (82.0, 0.1), "test_loss": (99.0, 0.1)},
                     "colu:G=50,soft,share": {"train_loss": (87.0, 0.1), "test_loss": (97.0, 0.1)}})
    noisy = _summary({"colu:G=0": {"train_loss": (99.7, 0.1), "test_loss": (100.0, 0.1)},
                      "relu": {"train_loss": (82.0, 3.0), "test_loss": (99.0, 3.0)},
                      "colu:G=50,soft,share": {"train_loss": (87.0, 3.0), "test_loss": (97.0, 3.0)}})
    wrong = _summary({"colu:G=0": {"train_loss": (99.7, 0.1), "test_loss": (100.0, 0.1)},
                      "relu": {"train_loss": (90.0, 0.1), "test_loss": (95.0, 0.1)},
                      "colu:G=50,soft,share": {"train_loss": (85.0, 0.1), "test_loss": (97.0, 0.1)}})
    twin = {**good, "colu:G=0": _summary({"i": {"train_loss": (110.9, 0.1), "test_loss": (119.8, 0.1)}})["i"]}
    variants = {name: {"settings": {}, "summary": s, "widths": widths} for name, s in
                (("good", good), ("noisy", noisy), ("wrong", wrong), ("twin", twin))}
    scale = {r["variant"]: r for r in ablation_mod.scale_rows(EXP, variants)}
    assert scale["good"]["mean_abs_relative"] == pytest.approx(0.0, abs=1e-9)
    assert scale["noisy"]["test_loss"]["relative"] == pytest.approx(100.0 / 119.82 - 1)
    verdicts = {(r["variant"], r["metric"]): r["verdict"] for r in ablation_mod.direction_rows(EXP, variants)}
    assert verdicts[("good", "test_loss")] == "same (clear)" and verdicts[("good", "train_loss")] == "same (clear)"
    assert verdicts[("noisy", "test_loss")] == "same (within noise)"
    assert verdicts[("wrong", "test_loss")] == "opposite" and verdicts[("wrong", "train_loss")] == "opposite"
    # two seeds: the direction is shown, no verdict on whether it is clear
    few = {name: {**v, "summary": _summary({a: {m: (s["mean"], s["std"]) for m, s in ms.items()}
                                             for a, ms in v["summary"].items()}, n=2)} for name, v in variants.items()}
    few_verdicts = {(r["variant"], r["metric"]): r["verdict"] for r in ablation_mod.direction_rows(EXP, few)}
    assert few_verdicts[("good", "test_loss")] == "same (too few seeds)"
    assert few_verdicts[("wrong", "test_loss")] == "opposite (too few seeds)"
    # a width the paper has no row for: no paper value, no verdict invented
    other = {"x": {"settings": {}, "summary": good, "widths": dict.fromkeys(widths, 51)}}
    assert {r["verdict"] for r in ablation_mod.direction_rows(EXP, other)} == {"no paper value"}
    assert ablation_mod.scale_rows(EXP, other)[0]["mean_abs_relative"] is None
    md = "\n".join(ablation_mod.comparison_tables(EXP, {"variants": variants,
                                                        "scale": list(scale.values()),
                                                        "direction": ablation_mod.direction_rows(EXP, variants)}))
    # twin is 0.04 / 0.02 away from good with SE 0.1: a tie, not a second place
    assert "Closest to the paper's scale: `good` (mean |relative difference| 0.0%); within 2·SE of it on every " \
           "metric: `twin`." in md
    assert "paper's direction on every pair and metric: `good`, `noisy`, `twin`." in md


def test_ablation_sweep_end_to_end_and_its_figures(tmp_path, capsys, monkeypatch):
    from colu_lab import registry

    # the real grid is 5 variants x 3 activations (checked above); two of each keep this test short
    two = {k: v for k, v in list(mnist_vae.ablation_variants(_cfg()).items())[:2]}
    small = dataclasses.replace(EXP, ablation=dataclasses.replace(
        EXP.ablation, variants=lambda cfg: two, activations=("colu:G=0", "colu:G=50,soft,share")))
    monkeypatch.setitem(registry.EXPERIMENTS, "mnist-vae", small)
    out = tmp_path / "abl"
    args = ["mnist-vae", "--ablation", *TINY, "--steps", "2", "--out", str(out)]
    assert run_main(args) == 2
    assert "--ablation applies to colu sweep" in capsys.readouterr().err
    assert sweep_main(args + ["--set", "bias=true"]) == 2
    assert "--ablation varies bias" in capsys.readouterr().err
    assert sweep_main(args) == 0
    record = json.loads((out / "ablation.json").read_text())
    names = list(two)
    assert list(record["variants"]) == names
    for name in names:
        res = _results(out / name)
        assert {r["activation"] for r in res["runs"]} == set(small.ablation.activations)
        assert {(k, res["config"][k]) for k in two[name]} == set(two[name].items())
        assert all(r["steps"] == 2 for r in res["runs"])
        # each variant's report shows the other readings tried beside its claims
        assert "## Other readings tried (ablation)" in (out / name / "report.md").read_text()
    assert {r["variant"] for r in record["direction"]} == set(names)
    md = (out / "ablation.md").read_text()
    assert "## Scale" in md and "## Direction" in md and names[-1] in md
    assert sweep_main(args) == 2  # a fresh ablation refuses a folder with results
    assert "already holds results of variants" in capsys.readouterr().err
    assert sweep_main(args + ["--resume"]) == 0  # all finished: collects without training again

    # Figure 5 from a variant's folder through colu plot --from; Figure 8 needs a sweep's activations
    run_dir = out / names[0]
    figs = tmp_path / "figs"
    assert plots.main(["--from", str(run_dir), "--out", str(figs)]) == 0
    assert "skipped figure8: " in capsys.readouterr().err and not (figs / "figure8.png").exists()
    h, w, _ = _png_shape(figs / "figure5.png")
    assert w > 1.5 * h  # the two matrices side by side
    assert plots.main(["--from", str(run_dir), "--out", str(figs), "--figure", "figure8"]) == 2
    assert "none of Figure 8's activations" in capsys.readouterr().err
    assert plots.main(["--from", str(run_dir), "--figure", "figure9"]) == 2
    assert "figure9: mnist-vae draws figure8, figure5" in capsys.readouterr().err
    assert plots.main(["--figure", "figure8"]) == 2


def test_figure8_panels_from_synthetic_results(tmp_path):
    def run(act, seed, offset):
        curve = [{"step": s, "test_loss": 100.0 + offset - s / 10 + seed} for s in (10, 20, 30)]
        return {"activation": act, "seed": seed, "curve": curve}

    acts = vae_figures.figure8_activations()
    assert acts[0] == "colu:G=0" and "colu:G=800,soft,share" in acts and acts[-2:] == ["relu", "silu"]
    assert "colu:G=4" in acts and all(a in acts for a in ("colu:G=1", "colu:G=1,soft"))
    runs = [run(a, s, i) for i, a in enumerate(acts) for s in (0, 1)]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    panels = {(soft, share): [a for _, a in vae_figures._panel_curves(runs, soft, share)]
              for soft in (False, True) for share in (True, False)}
    assert panels[(True, True)] == ["colu:G=0", "colu:G=1,soft,share", "colu:G=4,soft,share",
                                    "colu:G=800,soft,share", "silu"]
    assert panels[(False, False)] == ["colu:G=0", "colu:G=1", "colu:G=4", "colu:G=800", "relu"]
    path = vae_figures.test_loss_curves(EXPERIMENTS["mnist-vae"], str(tmp_path), str(tmp_path / "f8.png"))
    assert _png_shape(path)[0] > 300
    (tmp_path / "results.json").write_text(json.dumps({"runs": [run("gelu", 0, 0)]}))
    with pytest.raises(ValueError, match="none of Figure 8's activations"):
        vae_figures.test_loss_curves(EXPERIMENTS["mnist-vae"], str(tmp_path), str(tmp_path / "f8.png"))


def test_figure8_warns_which_activations_are_missing(tmp_path, capsys):
    """A folder with some of Figure 8's activations drew a partial figure without a word about the rest."""
    curve = [{"step": s, "test_loss": 100.0 - s} for s in (10, 20)]
    have = ["colu:G=0", "colu:G=50", "relu"]  # hidden=50: G = 800 does not divide it, so it is not needed
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "mnist-vae", "config": {"hidden": 50}}))
    (tmp_path / "results.json").write_text(json.dumps(
        {"runs": [{"activation": a, "seed": 0, "curve": curve} for a in have]}))
    assert plots.main(["--from", str(tmp_path), "--figure", "figure8"]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "figure8.png").exists() and str(tmp_path / "figure8.png") in captured.out
    missing = [a for a in vae_figures.figure8_activations(50) if a not in have]
    assert "colu:G=800" not in missing and "silu" in missing and "colu:G=1,soft" in missing
    assert f"warning: figure8 lacks {len(missing)} of Figure 8's activations ({', '.join(missing)})" in captured.err
    assert (f"colu sweep mnist-vae --out {tmp_path} --resume --activations "
            f"{' '.join(vae_figures.figure8_activations(50))}") in captured.err


def test_figure5_puts_the_cone_axes_first():
    order, n_axes = vae_figures.axis_order(parse_activation("colu:G=100"), 500)
    assert n_axes == 100 and sorted(order.tolist()) == list(range(500))
    assert order[:3].tolist() == [0, 5, 10]  # grouped layout: each cone is [axis, 4 section channels]
    order, n_axes = vae_figures.axis_order(parse_activation("colu:G=50,soft,share"), 2401)
    assert n_axes == 1 and order[0] == 0
    # hand-built: two perfectly correlated axis columns, independent others
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1000, 1, generator=g)
    cols = torch.cat([base, 2 * base, torch.randn(1000, 3, generator=g)], 1)
    stats = vae_figures.covariance_stats(vae_figures._abs_corr(cols), 2)
    assert stats["axes"] == pytest.approx(1.0) and stats["sections"] < 0.1 and stats["between"] < 0.1


# ------------------------------------------------------------------ Figure 12
def test_generator_samples_along_the_aligned_path(tmp_path):
    cfg = _cfg(hidden=50, latent=4)
    act = parse_activation("colu:G=50,soft,share")
    data = mnist_vae.load_data(cfg)
    torch.manual_seed(0)
    model_a, _ = mnist_vae.build_model(cfg, act, data)
    torch.manual_seed(1)
    model_b, _ = mnist_vae.build_model(cfg, act, data)
    images = mnist_vae.generated_images(model_a, cfg)
    assert images.shape == (mnist_vae.SAMPLE_COUNT, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, mnist_vae.generated_images(model_a, cfg))  # fixed latents
    samples = align_cmd.path_samples(EXP, cfg, model_a, {"naive": model_b, "weights": model_b})
    assert [s for s, _ in samples["naive"]] == list(align_cmd.SAMPLE_POINTS)
    assert torch.allclose(samples["naive"][0][1], images)
    assert torch.allclose(samples["naive"][-1][1], mnist_vae.generated_images(model_b, cfg))
    run = {"activation": act.label(), "seed": 0, "seed_b": 1}
    path = align_cmd.plot_path_samples(run, samples, str(tmp_path))
    assert os.path.basename(path) == "path_samples_colu-G50_soft_share.png"
    h, w, _ = _png_shape(path)
    assert w > h  # five columns of s, two rows of paths


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST t10k files not present")
def test_real_mnist_split_reads_and_binarizes():
    cfg = _cfg(dataset="mnist", data=str(SHARED_MNIST), split_from_test=2000, binarize="sample")
    data = mnist_vae.load_data(cfg)
    assert data.x_train.shape == (8000, 784) and data.x_test.shape == (2000, 784)
    assert budget(cfg, data.x_train.shape[0])[2] == 4690
    assert set(data.x_test.unique().tolist()) == {0.0, 1.0}
    assert mnist_vae.generated_images(mnist_vae.build_model(cfg, parse_activation("relu"), data)[0],
                                      cfg).shape[1:] == (28, 28)


# ------------------------------------------------------------------ diagnosis probes
def test_axis_init_gain_scales_the_axis_rows_and_moves_r_towards_one():
    from colu_lab.experiments.mnist_vae import diagnose

    data = mnist_vae.load_data(_cfg())
    act = parse_activation("colu:G=5,soft,share")
    x = data.x_train_eval[:256]
    base, gained = (diagnose.init_stats(_cfg(hidden=50, axis_init_gain=g), "colu:G=5,soft,share", 0, x, data)
                    for g in (1.0, 7.0))
    torch.manual_seed(0)
    plain, width = mnist_vae.build_model(_cfg(hidden=50), act, data)
    torch.manual_seed(0)
    scaled, _ = mnist_vae.build_model(_cfg(hidden=50, axis_init_gain=7.0), act, data)
    assert width == 51
    assert torch.allclose(scaled.enc_in.weight[0], 7 * plain.enc_in.weight[0])  # the shared axis: channel 0
    assert torch.equal(scaled.enc_in.weight[1:], plain.enc_in.weight[1:])
    assert torch.allclose(scaled.dec_in.weight[0], 7 * plain.dec_in.weight[0])
    # the encoder's input is the data: its r = a/|s| scales exactly with the axis, and so do its quantiles
    assert all(gained["encoder"][q] == pytest.approx(7 * base["encoder"][q]) for q in ("r_q10", "r_q50", "r_q90"))
    for part in ("encoder", "decoder"):  # a wider spread of r: the soft weight w(r) is no longer nearly constant
        assert gained[part]["w_q90"] - gained[part]["w_q10"] > 1.5 * (base[part]["w_q90"] - base[part]["w_q10"])
    with pytest.raises(ValueError, match="axis_init_gain applies to CoLU"):
        mnist_vae.check_activation(_cfg(hidden=50, axis_init_gain=2.0), parse_activation("relu"), data)


def test_kl_batches_probe_reads_the_final_checkpoints(tmp_path, capsys):
    from colu_lab.experiments.mnist_vae import diagnose

    out = tmp_path / "run"
    assert run_main(["mnist-vae", *TINY, "--steps", "2", "--activations", "relu", "--out", str(out)]) == 0
    recorded = _results(out)["runs"][0]["curve"][-1]["test_loss"]
    assert diagnose.main(["kl-batches", "--from", str(out), "--sizes", "32", "8", "--out",
                          str(tmp_path / "kl.json")]) == 0
    row = json.loads((tmp_path / "kl.json").read_text())["rows"][0]
    assert row["test_loss_chunks_32"] == pytest.approx(recorded, rel=1e-6)  # the run's own chunks: batch 32
    assert row["test_loss_chunks_8"] != pytest.approx(recorded, rel=1e-6)
    assert diagnose.main(["kl-batches", "--from", str(tmp_path / "nowhere")]) == 2
    assert "not a finished mnist-vae run folder" in capsys.readouterr().err
    assert diagnose.main(["cones", "--activation", "relu", "--seeds", "1"]) == 2  # no cones to measure
    err = capsys.readouterr().err
    assert "ReLU() has no cone axes" in err and "Traceback" not in err
