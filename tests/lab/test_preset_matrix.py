"""Every experiment x preset x dataset it accepts: the preset composes with the dataset, on files the test writes.

A preset's dataset-specific settings (a digits size, an image size, a t10k split) used to stop runs on another
dataset with an error about a setting the user never gave. Here each combination is resolved, its data loaded
and its model built at the preset's own sizes; then one optimizer step is trained, with only the budget and the
evaluation made small (and, for the presets meant for a GPU, the network narrowed), never a dataset setting.
"""

import gzip

import numpy as np
import pytest

from colu_lab.commands.train import run_main
from colu_lab.framework import data as D
from colu_lab.framework.config import parse_cli
from colu_lab.registry import EXPERIMENTS

T10K = 3100  # more than the 2000 test images the cpu presets split off, and 1000 left to train the claim presets
TEXT = "".join(f"Citizen {i % 7}:\nSpeak, speak; we are resolved rather to die than to famish.\n\n"
               for i in range(400))  # about 26 KB: 20000 training characters, 512 windows in the 10% split


def _idx(path, magic, array):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _write_mnist(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", T10K)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", D.IMAGE_MAGIC, rng.integers(0, 256, (n, 28, 28), np.uint8))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", D.LABEL_MAGIC, (np.arange(n) % 10).astype(np.uint8))


def _write_folder(folder, n=12):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory, write_cifar):
    root = tmp_path_factory.mktemp("datasets")
    _write_mnist(root / "mnist")
    write_cifar(root / "cifar10", n=8, seed=1)
    (root / "input.txt").write_text(TEXT, encoding="utf-8")
    dirs = {"mnist": root / "mnist", "cifar10": root / "cifar10", "text": root / "input.txt", "digits": None}
    try:
        _write_folder(root / "folder")
        dirs["folder"] = root / "folder"
    except ImportError:
        pass  # Pillow comes with the diffusers extra; the folder rows skip without it
    return dirs


def _combinations():
    for name, exp in EXPERIMENTS.items():
        datasets = exp.datasets or (("text",) if exp.data_is_file else (None,))
        for preset in exp.presets:
            for dataset in datasets:
                yield pytest.param(name, preset, dataset, id=f"{name}-{preset}-{dataset or 'own-data'}")


# Only the budget and the evaluation shrink for the step; a paper-sized network is narrowed where one step of it
# would take many seconds on a CPU. No dataset-specific setting is touched.
STEP = ["--steps", "1", "--seeds", "1", "--quiet"]
SMALLER = {
    "gpt-shakespeare": ["--set", "eval_batches=1", "--set", "eval_batch_size=8", "--batch-size", "4"],
    "diffusion-unet": ["--set", "samples=1", "--set", "sample_steps=1", "--set", "heldout_examples=4",
                       "--batch-size", "4", "--set", "block_channels=64,64", "--set", "attention_levels=1",
                       "--set", "norm_groups=8", "--set", "attention_head_dim=16"],  # 64: palettes' G = 32 fits
    "resnet-cifar": ["--batch-size", "8", "--set", "depth=8"],
    "mnist-vae": ["--set", "hidden=400"],
}


def _argv(name, preset, dataset, dirs):
    argv = [name, "--preset", preset]
    if dataset not in (None, "text"):
        argv += ["--dataset", dataset]
    if dirs.get(dataset) is not None:
        argv += ["--data", str(dirs[dataset])]
    return argv


def _skip_without_extras(name, dataset, data_dirs):
    if dataset == "folder" and "folder" not in data_dirs:
        pytest.skip("Pillow is not installed (pip install 'colu[experiments,diffusers]')")
    if name == "diffusion-unet":
        pytest.importorskip("diffusers", reason="the diffusion UNet needs pip install 'colu[experiments,diffusers]'")


@pytest.mark.parametrize("name,preset,dataset", list(_combinations()))
def test_preset_resolves_and_loads_every_dataset(name, preset, dataset, data_dirs):
    _skip_without_extras(name, dataset, data_dirs)
    exp = EXPERIMENTS[name]
    cfg = parse_cli(_argv(name, preset, dataset, data_dirs), "colu run", "", EXPERIMENTS).cfg
    if dataset not in (None, "text"):
        assert cfg.dataset == dataset
    exp.load_data(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name,preset,dataset", list(_combinations()))
def test_preset_trains_a_step_on_every_dataset(name, preset, dataset, data_dirs, tmp_path):
    _skip_without_extras(name, dataset, data_dirs)
    argv = [*_argv(name, preset, dataset, data_dirs), *STEP, *SMALLER.get(name, []), "--out", str(tmp_path / "r")]
    assert run_main(argv) == 0, argv
    assert (tmp_path / "r" / "results.json").is_file()
