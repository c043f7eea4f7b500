"""Datasets for the experiments. Nothing here ever downloads anything.

* ``digits`` (the default): scikit-learn's bundled 8x8 handwritten digits
  (1797 images, shipped inside scikit-learn). We use the 64 pixels as they are,
  scaled to [0, 1], rather than upsampling to 28x28: upsampling adds no
  information and would only make the runs slower. Fixed 80/20 split.
* ``mnist``: the standard IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]``) from a directory you provide. With
  ``split_from_test=K`` only the two t10k files are needed: they are split into
  10000-K training and K test examples (and reports say so).
* ``cifar10``: the standard python-pickle batches (``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``), validated the same way.
* hemisphere points are generated (:func:`hemisphere`).
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"
DATASETS = ("digits", "mnist")
SPLIT_SEED = 1234  # the train/test split is fixed, independent of the training seed


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the fix."""


@dataclass
class Data:
    """Tensors plus a plain-words account of where they came from (goes into reports)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    description: str
    notes: list = field(default_factory=list)

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "train_examples": int(self.x_train.shape[0]),
            "test_examples": int(self.x_test.shape[0]),
            "input_dim": int(self.input_dim),
            "description": self.description,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------- IDX files
def _open_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc}); replace it with an intact copy") from exc


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) of unsigned bytes, checking magic, dimensions and size."""
    raw = _open_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: file is {len(raw)} bytes, too short for an IDX header (truncated?)")
    magic = struct.unpack(">I", raw[:4])[0]
    if expected_magic is not None and magic != expected_magic:
        kind = {IMAGE_MAGIC: "images", LABEL_MAGIC: "labels"}.get(expected_magic, "IDX")
        raise DataError(f"{path}: magic number {magic}, expected {expected_magic} for an IDX {kind} file "
                        "(wrong file, or not an IDX file)")
    if magic >> 8 != 0x08:  # type byte 0x08 = unsigned byte
        raise DataError(f"{path}: magic number {magic} is not an unsigned-byte IDX file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: header truncated ({len(raw)} bytes, need {header})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(raw)} bytes, dimensions {dims} need {expected}; "
                        "replace it with an intact copy")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _read_pair(directory: str, image_stem: str, label_stem: str):
    img_path, lab_path = _find(directory, image_stem), _find(directory, label_stem)
    images = read_idx(img_path, IMAGE_MAGIC)
    labels = read_idx(lab_path, LABEL_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: image dimensions {images.shape[1:]}, expected (28, 28) for MNIST")
    if labels.ndim != 1:
        raise DataError(f"{lab_path}: labels have {labels.ndim} dimensions, expected 1")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels; "
                        "the pair must come from the same split")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lab_path}: label {int(labels.max())} outside 0..9")
    return images, labels


def _missing_message(directory: str, stems) -> str:
    wanted = ", ".join(f"{s}[.gz]" for s in stems)
    return (f"MNIST files not found in {os.path.abspath(directory)!r}: need {wanted}. Put the standard IDX "
            "files there (nothing is downloaded), pass --data DIR pointing at them, use --split-from-test K if "
            "you only have the t10k pair, or use --dataset digits (built in).")


def load_mnist(directory: str | None, split_from_test: int | None = None) -> Data:
    """MNIST from IDX files, pixels scaled to [0, 1] and flattened to 784."""
    if directory is None:
        raise DataError("--dataset mnist needs --data DIR with the MNIST IDX files; " + _missing_message(".", MNIST_FILES.values()))
    if not os.path.isdir(directory):
        raise DataError(f"--data {directory!r} is not a directory; " + _missing_message(directory, MNIST_FILES.values()))
    needed = ([MNIST_FILES["test_images"], MNIST_FILES["test_labels"]] if split_from_test
              else list(MNIST_FILES.values()))
    missing = [s for s in needed if _find(directory, s) is None]
    if missing:
        raise DataError(_missing_message(directory, missing))
    x_te, y_te = _read_pair(directory, MNIST_FILES["test_images"], MNIST_FILES["test_labels"])
    notes = []
    if split_from_test:
        n = x_te.shape[0]
        if not 0 < split_from_test < n:
            raise DataError(f"--split-from-test {split_from_test}: must be between 1 and {n - 1} "
                            f"(the t10k files hold {n} examples)")
        perm = np.random.default_rng(SPLIT_SEED).permutation(n)
        test_idx, train_idx = perm[:split_from_test], perm[split_from_test:]
        x_tr, y_tr, x_te, y_te = x_te[train_idx], y_te[train_idx], x_te[test_idx], y_te[test_idx]
        description = (f"MNIST t10k files from {directory}, split into {len(train_idx)} train / "
                       f"{len(test_idx)} test examples (--split-from-test {split_from_test})")
        notes.append("Trained on part of the MNIST TEST set: the official 60000-image training set was not used, "
                     "so numbers are not comparable to the paper's.")
    else:
        x_tr, y_tr = _read_pair(directory, MNIST_FILES["train_images"], MNIST_FILES["train_labels"])
        description = f"MNIST from {directory}: {len(y_tr)} train / {len(y_te)} test (official split)"
    flat = lambda a: torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)
    return Data("mnist", flat(x_tr), torch.from_numpy(y_tr.astype(np.int64)), flat(x_te),
                torch.from_numpy(y_te.astype(np.int64)), description, notes)


# ---------------------------------------------------------------- CIFAR-10
def _read_cifar_batch(path: str):
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, got {type(batch).__name__}")
    keys = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in keys:
            raise DataError(f"{path}: missing key {key!r} (has {sorted(keys)})")
    data, labels = keys["data"], np.asarray(keys["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(directory: str) -> Data:
    """CIFAR-10 from the python-pickle batches, images (N, 3, 32, 32) in [0, 1]."""
    names = CIFAR_TRAIN + [CIFAR_TEST]
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise DataError(f"CIFAR-10 files not found in {os.path.abspath(directory)!r}: need {', '.join(missing)} "
                        "(the 'python version' batches, e.g. from cifar-10-batches-py/). Nothing is downloaded.")
    parts = [_read_cifar_batch(os.path.join(directory, n)) for n in CIFAR_TRAIN]
    x_te, y_te = _read_cifar_batch(os.path.join(directory, CIFAR_TEST))
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    img = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)
    return Data("cifar10", img(x_tr), torch.from_numpy(y_tr), img(x_te), torch.from_numpy(y_te),
                f"CIFAR-10 from {directory}: {len(y_tr)} train / {len(y_te)} test")


# ------------------------------------------------------------------ digits
def load_digits_data(test_fraction: float = 0.2) -> Data:
    """scikit-learn's bundled 8x8 digits: 64 features in [0, 1], fixed 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return Data("digits", torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), torch.from_numpy(x[te]),
                torch.from_numpy(y[te]),
                f"scikit-learn load_digits (8x8, 64 features scaled to [0,1]): {len(tr)} train / {len(te)} test "
                f"(fixed split, seed {SPLIT_SEED})",
                ["Built-in 8x8 digits stand in for MNIST: not comparable to the paper's MNIST numbers."])


def recognise_dataset(directory: str) -> str | None:
    """``"mnist"`` or ``"cifar10"`` by the standard file names found in ``directory``, else ``None``."""
    if not os.path.isdir(directory):
        raise DataError(f"--data {directory!r} is not a directory; point it at the folder holding the dataset files")
    if any(_find(directory, stem) for stem in MNIST_FILES.values()):
        return "mnist"
    if any(os.path.isfile(os.path.join(directory, n)) for n in CIFAR_TRAIN + [CIFAR_TEST]):
        return "cifar10"
    return None


def load_classification(dataset: str, directory: str | None, split_from_test: int | None = None) -> Data:
    if dataset == "digits":
        if split_from_test:
            raise DataError("--split-from-test applies to --dataset mnist only")
        if directory is not None:
            raise DataError(f"--dataset digits is built in and reads no files, but --data {directory!r} was given; "
                            "use --dataset mnist to read that folder, or drop --data")
        return load_digits_data()
    if dataset == "mnist":
        return load_mnist(directory, split_from_test)
    raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


# -------------------------------------------------------------- hemisphere
def rotation_45() -> torch.Tensor:
    """R = Rz(45) Ry(45) Rx(45): 45 degrees about each coordinate axis (Section 4)."""
    c = s = math.sqrt(0.5)
    rx = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    ry = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    rz = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


def hemisphere_points(n_lat: int, n_lon: int, polar_max: float = math.pi / 2) -> torch.Tensor:
    """Polar grid on the upper unit hemisphere (z >= 0): n_lat polar angles in [0, polar_max] x n_lon longitudes."""
    theta = torch.linspace(0, polar_max, n_lat, dtype=torch.float64)
    phi = torch.arange(n_lon, dtype=torch.float64) * (2 * math.pi / n_lon)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    return torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1).reshape(-1, 3)


def hemisphere(n_lat: int = 200, n_lon: int = 200, test_fraction: float = 0.2) -> Data:
    """(x, Rx) on a polar grid (200 x 200 = 40K points by default), fixed random train/test split."""
    x = hemisphere_points(n_lat, n_lon)
    y = x @ rotation_45().T
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(test_fraction * n))
    te, tr = perm[:n_test], perm[n_test:]
    f = lambda a: a.float()
    return Data("hemisphere", f(x[tr]), f(y[tr]), f(x[te]), f(y[te]),
                f"{n_lat}x{n_lon} polar grid on the unit hemisphere z>=0 ({n} points) and its image under "
                f"R = Rz(45)Ry(45)Rx(45); {len(tr)} train / {len(te)} test (fixed split, seed {SPLIT_SEED})")
