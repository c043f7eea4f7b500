"""diffusion-unet: the quick run end to end, resume, the loss, the activations replaced, samples; the image folder."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")
from PIL import Image  # noqa: E402

import colu  # noqa: E402
from colu import reference  # noqa: E402
from colu_lab.framework import data as D  # noqa: E402
from colu_lab.experiments.diffusion_unet import experiment as U  # noqa: E402
from colu_lab.framework.activations import parse_activation  # noqa: E402
from colu_lab.commands.train import run_main  # noqa: E402
from colu_lab.framework.config import build_config, preset_table  # noqa: E402
from colu_lab.framework.image_folder import load_image, load_image_folder  # noqa: E402
from colu_lab.experiments.diffusion_unet.model import ACTIVATION_TYPES  # noqa: E402

METRICS = ["train_loss", "heldout_loss"]


def _results(out):
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f)


def _tiny_cfg(**over):
    cfg, _ = build_config(U.Config, preset_table(U.EXPERIMENT), {}, {"preset": "quick", **over})
    return cfg


def _tiny_data(n=24, size=8, channels=1):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, size, size, generator=gen)
    data = D.ImageData("random", x, torch.zeros(n, dtype=torch.long), x[:6].clone(), torch.zeros(6, dtype=torch.long),
                       "random images")
    data.heldout = U.heldout_triples(data.x_test, 8, 1000)
    return data


def _write_images(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = int(rng.integers(9, 20)), int(rng.integers(9, 20))  # mixed sizes and aspect ratios
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")


# ------------------------------------------------------------------ end to end
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "quick"
    assert run_main(["diffusion-unet", "--quick", "--quiet", "--out", str(out)]) == 0
    res = _results(out)
    assert res["experiment"] == "diffusion-unet" and res["config"]["preset"] == "quick"
    assert [r["activation"] for r in res["runs"]] == ["relu", "colu:S=4"]
    for run in res["runs"]:
        assert set(run["metrics"]) == set(METRICS)
        assert all(math.isfinite(run["metrics"][m]) and 0 < run["metrics"][m] < 5 for m in METRICS)
        assert [p["step"] for p in run["curve"]] == [3, 6] and all(set(METRICS) <= set(p) for p in run["curve"])
        conversion = run["probe"]["conversion"]
        assert conversion["functional"] == [] and conversion["sites"] >= conversion["modules"] >= 8
        names = {r["name"] for r in conversion["replaced"]}
        assert {"conv_act", "time_embedding.act"} <= names  # the two diffusers builds as SiLU whatever act_fn says
        for step in (3, 6):  # a sample grid at every evaluation point
            png = out / f"samples_{'relu' if run['activation'] == 'relu' else 'colu-S4'}-seed0_step{step:06d}.png"
            with Image.open(png) as img:
                assert img.mode == "RGB" and img.size == (2 + 2 * (64 + 2),) * 2  # 4 images, 8x8 enlarged 8 times
    assert {p.name for p in out.glob("curve_*.png")} == {"curve_train_loss.png", "curve_heldout_loss.png"}
    report = (out / "report.md").read_text()
    assert "not comparable" in report and "Table 5" in report and "0.01458" in report
    assert "![samples_colu-S4-seed0_step000006.png]" in report


def test_resume_is_bit_identical_on_an_image_folder(tmp_path):
    _write_images(tmp_path / "images", 20)
    args = ["diffusion-unet", "--quick", "--quiet", "--dataset", "folder", "--data", str(tmp_path / "images"),
            "--activations", "colu:S=4", "--steps", "4", "--eval-every", "2", "--set", "ema_decay=0.9",
            "--set", "samples=2", "--set", "sample_steps=3"]
    assert run_main(args + ["--out", str(tmp_path / "full")]) == 0
    halted = tmp_path / "halted"
    assert run_main(args + ["--out", str(halted), "--halt-after", "3"]) == 3  # between two evaluations
    assert run_main(["diffusion-unet", "--quiet", "--out", str(halted), "--resume"]) == 0
    full, resumed = _results(tmp_path / "full"), _results(halted)
    assert full["data"]["train_examples"] == 18 and full["data"]["image_shape"] == [3, 8, 8]
    assert [r["curve"] for r in resumed["runs"]] == [r["curve"] for r in full["runs"]]
    assert "heldout_loss_ema" in full["runs"][0]["curve"][-1]  # the moving average of the weights is evaluated too
    name = "samples_colu-S4-seed0_step000004.png"
    assert (halted / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    a = torch.load(tmp_path / "full" / "checkpoints" / "colu-S4-seed0.pt", weights_only=True)["model"]
    b = torch.load(halted / "checkpoints" / "colu-S4-seed0.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "ema.p0" in a and float(a["loss_weight"]) > 0


# ------------------------------------------------------------------ the model
def test_every_activation_is_replaced_with_cones_on_the_channel_axis():
    cfg, data = _tiny_cfg(), _tiny_data()
    torch.manual_seed(0)
    model, width = U.build_model(cfg, parse_activation("colu:S=4"), data)
    assert width == 8
    assert not [m for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]
    cones = [m for m in model.modules() if isinstance(m, colu.CoLU)]
    assert len({id(m) for m in cones}) == model.conversion["modules"]
    dims = {(r["channels"], r["dim"]) for r in model.conversion["replaced"]}
    assert (8, 1) in dims and (32, -1) in dims  # feature maps on the channel axis; the time embedding on its last
    # the output before the last convolution is the cone projection of each pixel's channel vector
    seen = []
    hook = model.unet.conv_act.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8), torch.tensor([3, 700]))
    hook.remove()
    x, y = seen[0]
    torch.testing.assert_close(y, reference.colu(x.movedim(1, -1), 4).movedim(-1, 1), rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    relu, _ = U.build_model(cfg, parse_activation("relu"), data)
    kinds = {type(m) for m in relu.modules() if isinstance(m, (*ACTIVATION_TYPES, colu.CoLU))}
    assert kinds == {nn.ReLU} and relu.conversion["sites"] == model.conversion["sites"]
    # the same seed gives the same weights whatever the activation (the conversion draws no random numbers)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), relu.parameters()))


def test_activations_that_cannot_replace_every_site_are_refused_with_the_module_named():
    cfg, data = _tiny_cfg(), _tiny_data()
    with pytest.raises(ValueError, match=r"'colu:S=3' does not fit this UNet.*cannot convert activation '[\w.]+'"):
        U.check_activation(cfg, parse_activation("colu:S=3"), data)
    with pytest.raises(ValueError, match="rcolu:S=4.*colu.convert"):
        U.check_activation(cfg, parse_activation("rcolu:S=4"), data)
    U.check_activation(cfg, parse_activation("colu:G=2,soft"), data)


def test_train_loss_is_the_ddpm_noise_prediction_error():
    cfg, data = _tiny_cfg(), _tiny_data()
    torch.manual_seed(0)
    model, _ = U.build_model(cfg, parse_activation("relu"), data)
    x0, t, noise = U.batches(data, cfg, seed=0, step=0)
    abar = U.ddpm_scheduler(1000).alphas_cumprod[t].float()[:, None, None, None]
    assert abar[0] < 1 and float(U.ddpm_scheduler(1000).betas[-1]) == pytest.approx(0.02)
    by_hand = ((model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t) - noise) ** 2).mean()
    loss = U.train_loss(model, x0, t, noise, cfg, global_batch=x0.shape[0], world=1)
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-6)


def test_batches_and_heldout_triples_are_functions_of_their_arguments():
    cfg, data = _tiny_cfg(), _tiny_data()
    first, again = U.batches(data, cfg, 1, 5), U.batches(data, cfg, 1, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[2], U.batches(data, cfg, 2, 5)[2])  # another seed draws other noise
    x0, t, noise = first
    assert x0.min() >= -1 and x0.max() <= 1 and x0.min() < -0.9  # images in [-1, 1]
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) < 1000
    held = U.heldout_triples(data.x_test, 12, 1000)
    assert all(torch.equal(a, b) for a, b in zip(held, U.heldout_triples(data.x_test, 12, 1000)))
    assert torch.equal(held[0][6], held[0][0])  # 6 test images cycle
    assert sorted(held[1].tolist()) == [int((i + 0.5) * 1000 / 12) for i in range(12)]  # spread over the steps


def test_smoothed_loss_and_weight_average():
    cfg, data = _tiny_cfg(ema_decay=0.5, loss_smoothing=0.9), _tiny_data()
    model, _ = U.build_model(cfg, parse_activation("relu"), data)
    assert math.isnan(model.smoothed_loss())
    losses = [2.0, 1.0, 0.5]
    for loss in losses:
        U.after_step(model, torch.tensor(loss), cfg, 1)
    weights = [0.9 ** (len(losses) - 1 - i) * 0.1 for i in range(len(losses))]
    assert model.smoothed_loss() == pytest.approx(sum(w * v for w, v in zip(weights, losses)) / sum(weights))
    before = [p.detach().clone() for p in model.unet.parameters()]
    avg = [b.clone() for b in model.ema.buffers()]
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(1.0)
    U.after_step(model, torch.tensor(1.0), cfg, 100)  # decay min(0.5, 101/110) = 0.5: halfway to the new weights
    for a, p, b in zip(model.ema.buffers(), model.unet.parameters(), avg):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * p)
    current = [p.detach().clone() for p in model.unet.parameters()]
    with model.ema_weights():
        assert all(torch.equal(p, a) for p, a in zip(model.unet.parameters(), model.ema.buffers()))
    assert all(torch.equal(p, c) for p, c in zip(model.unet.parameters(), current))  # restored exactly
    assert not torch.equal(current[0], before[0])


def test_sample_grid_is_fixed_by_its_seed_and_leaves_the_global_generator_alone(tmp_path):
    cfg, data = _tiny_cfg(samples=3, sample_steps=4), _tiny_data()
    model, _ = U.build_model(cfg, parse_activation("relu"), data)
    model.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        U.evaluation_files(model, data, cfg, torch.device("cpu"), out_dir=str(tmp_path), run="r-seed0", step=7)
        U.evaluation_files(model, data, cfg, torch.device("cpu"), out_dir=str(tmp_path), run="r-seed1", step=7)
    assert torch.equal(torch.get_rng_state(), state)
    first = (tmp_path / "samples_r-seed0_step000007.png").read_bytes()
    assert first == (tmp_path / "samples_r-seed1_step000007.png").read_bytes()  # the same noise, the same model
    with Image.open(tmp_path / "samples_r-seed0_step000007.png") as img:
        assert img.size == (2 + 2 * 66, 2 + 2 * 66)  # 3 images on a 2 x 2 grid
    images = U.sample_images(model, cfg, 3, (1, 8, 8), torch.device("cpu"))
    assert images.shape == (3, 1, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_config_errors_name_the_value_and_a_way_out():
    with pytest.raises(ValueError, match="norm_groups=3 does not divide"):
        _tiny_cfg(norm_groups=3)
    with pytest.raises(ValueError, match=r"attention_levels=\[2\]: levels are 0..1"):
        _tiny_cfg(attention_levels="2")
    with pytest.raises(ValueError, match="image_size=7 must be divisible by 2"):
        _tiny_cfg(image_size=7)
    with pytest.raises(ValueError, match="ema_decay=1.0 must be < 1"):
        _tiny_cfg(ema_decay=1.0)
    with pytest.raises(D.DataError, match="image_size=16: cifar10's images are 32x32"):
        U.load_data(_tiny_cfg(dataset="cifar10", data="/nonexistent", image_size=16))
    with pytest.raises(D.DataError, match="--dataset mnist .* needs --data DIR"):
        U.load_data(_tiny_cfg(dataset="mnist", split_from_test=100, image_size=32))


# ------------------------------------------------------------------ the image folder
def test_image_folder_resizes_and_centre_crops_images_of_any_size(tmp_path):
    folder = tmp_path / "flowers"
    (folder / "sub").mkdir(parents=True)
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)  # red | green | blue thirds: the centre crop keeps the green
    wide[:, 10:20] = (0, 255, 0)
    wide[:, 20:] = (0, 0, 255)
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(np.full((40, 16), 200, dtype=np.uint8), "L").save(folder / "sub" / "tall.jpg")  # grey, nested
    Image.fromarray(np.zeros((12, 12, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    (folder / "notes.txt").write_text("not an image")  # other files are not images
    crop = load_image(str(folder / "wide.png"), 10)
    assert crop.shape == (3, 10, 10) and crop.dtype == np.uint8
    assert crop[1, :, 2:8].min() > 200 and crop[0, :, 2:8].max() < 40  # the green middle third
    data = load_image_folder(str(folder), 8, test_fraction=0.34)
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape[1:] == (3, 8, 8)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 3 and data.x_test.shape[0] == 1
    grey = load_image(str(folder / "sub" / "tall.jpg"), 8)
    assert np.abs(grey.astype(int) - 200).max() <= 3 and grey.shape == (3, 8, 8)
    assert load_image(str(folder / "wide.png"), 5, channels=1).shape == (1, 5, 5)


def test_image_folder_errors_name_the_file(tmp_path):
    folder = tmp_path / "imgs"
    _write_images(folder, 3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(D.DataError, match=r"broken\.jpg: not a readable image.*remove or replace"):
        load_image_folder(str(folder), 8)
    png = (folder / "img01.png").read_bytes()
    (folder / "broken.jpg").unlink()
    (folder / "img01.png").write_bytes(png[: len(png) // 2])  # truncated
    with pytest.raises(D.DataError, match=r"img01\.png: not a readable image"):
        load_image_folder(str(folder), 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(D.DataError, match="holds 0 image file"):
        load_image_folder(str(empty), 8)
    with pytest.raises(D.DataError, match="is not a directory"):
        load_image_folder(str(tmp_path / "missing"), 8)


def _png_header_only(path, width, height):
    """A PNG whose header declares ``width x height`` with one byte of pixel data: what a decompression bomb
    looks like until it is decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height,why", [(300_000, 1, "one side more than 16 times"),
                                              (1, 4_000_000, "one side more than 16 times"),
                                              (10_000, 10_000, "more than the 67108864")])
def test_image_bombs_are_refused_from_their_header(tmp_path, width, height, why):
    """A 116-byte PNG of 1 x 300,000 pixels made the resize take 6.3 GB; now its header alone refuses it."""
    import time

    folder = tmp_path / "imgs"
    _write_images(folder, 3)
    Image.fromarray(np.zeros((1, 300), dtype=np.uint8), "L").save(folder / "thin.png")  # 300:1, real pixels
    start = time.perf_counter()
    with pytest.raises(D.DataError, match=r"thin\.png: the image is 300 x 1 pixels, one side more than 16 times"):
        load_image_folder(str(folder), 64)
    (folder / "thin.png").unlink()
    _png_header_only(folder / "bomb.png", width, height)
    with pytest.raises(D.DataError, match=rf"bomb\.png: .*{why}"):
        load_image_folder(str(folder), 64)
    with pytest.raises(D.DataError, match=rf"bomb\.png: .*{why}"):
        load_image(str(folder / "bomb.png"), 32)
    assert time.perf_counter() - start < 10


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_named_like_an_image_is_skipped_with_a_notice(tmp_path, capsys):
    import os

    folder = tmp_path / "imgs"
    _write_images(folder, 3)
    os.mkfifo(folder / "x.png")  # reading it would block forever
    data = load_image_folder(str(folder), 8)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 3
    assert f"skipped {folder / 'x.png'}: not a regular file" in capsys.readouterr().err


def test_without_diffusers_the_run_stops_with_the_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an install without it looks like to an import
    assert run_main(["diffusion-unet", "--quick", "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'colu[experiments,diffusers]'" in capsys.readouterr().err
    assert not (tmp_path / "x" / "results.json").exists()


def test_quick_and_cpu_presets_take_another_dataset(tmp_path):
    """--quick trains the digits at 8x8 and --preset cpu the MNIST stand-in split from t10k: on a 32x32 dataset the
    quick image size does not carry over ('image_size=8 ... drop image_size' came from the preset), on a folder it
    does (a folder is resized to any size), and the cpu preset's t10k split stays with MNIST."""
    from colu_lab.framework.config import parse_cli
    from colu_lab.registry import EXPERIMENTS

    folder = tmp_path / "imgs"
    _write_images(folder, 4)
    for dataset, size in (("mnist", 32), ("cifar10", 32), ("folder", 8)):
        request = parse_cli(["diffusion-unet", "--quick", "--dataset", dataset, "--data", str(folder)], "colu run", "",
                            EXPERIMENTS)
        assert (request.cfg.image_size, request.cfg.block_channels) == (size, [8, 16]), dataset
    request = parse_cli(["diffusion-unet", "--preset", "cpu", "--dataset", "folder", "--data", str(folder)],
                        "colu run", "", EXPERIMENTS)
    assert request.cfg.split_from_test is None and request.cfg.steps == 300
    U.load_data(request.cfg)  # the folder loads without the split the preset meant for MNIST
    explicit = parse_cli(["diffusion-unet", "--quick", "--dataset", "mnist", "--data", str(folder), "--set",
                          "image_size=8"], "colu run", "", EXPERIMENTS)
    assert explicit.cfg.image_size == 8  # what the user gives stays theirs (and load_data names it)
