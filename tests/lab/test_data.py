"""Dataset loaders on small files written by the tests, and the hemisphere generator."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from colu_lab.framework import data as D

SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def _idx_bytes(magic, dims, payload):
    return struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims) + payload


def _write(path, raw, gz=False):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        Path(path).write_bytes(raw)


def _write_mnist(directory, n_train=12, n_test=7, gz=False, rng=np.random.default_rng(0)):
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write(directory / f"{prefix}-images-idx3-ubyte", _idx_bytes(2051, (n, 28, 28), imgs.tobytes()), gz)
        _write(directory / f"{prefix}-labels-idx1-ubyte", _idx_bytes(2049, (n,), labs.tobytes()), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_valid_raw_and_gz(tmp_path, gz):
    _write_mnist(tmp_path, gz=gz)
    d = D.load_mnist(str(tmp_path))
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (7, 784)
    assert d.x_train.dtype == torch.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert d.y_train.dtype == torch.int64 and d.y_test.shape == (7,)
    assert d.notes == []


def test_idx_wrong_magic_names_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    _write(path, _idx_bytes(2051, (3,), bytes(3)))
    with pytest.raises(D.DataError, match=r"train-labels-idx1-ubyte.*magic number 2051, expected 2049"):
        D.read_idx(str(path), D.LABEL_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    path = tmp_path / "t10k-images-idx3-ubyte"
    _write(path, _idx_bytes(2051, (2, 28, 28), bytes(2 * 784 - 10)), gz)
    target = str(path) + (".gz" if gz else "")
    with pytest.raises(D.DataError, match="truncated"):
        D.read_idx(target, D.IMAGE_MAGIC)


def test_idx_short_header_and_trailing_bytes(tmp_path):
    short = tmp_path / "a"
    short.write_bytes(b"\x00\x00")
    with pytest.raises(D.DataError, match="too short"):
        D.read_idx(str(short))
    long = tmp_path / "b"
    long.write_bytes(_idx_bytes(2049, (2,), bytes(5)))
    with pytest.raises(D.DataError, match="trailing bytes"):
        D.read_idx(str(long), D.LABEL_MAGIC)


def test_mnist_wrong_image_size_and_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(2051, (7, 27, 28), bytes(7 * 27 * 28)))
    with pytest.raises(D.DataError, match=r"t10k-images.*\(27, 28\)"):
        D.load_mnist(str(tmp_path))
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(2051, (6, 28, 28), bytes(6 * 784)))
    with pytest.raises(D.DataError, match="6 images but .* 7 labels"):
        D.load_mnist(str(tmp_path))


def test_mnist_files_without_images_name_themselves(tmp_path):
    """A valid header declaring 0 images used to fail in numpy ("cannot reshape array of size 0")."""
    _write_mnist(tmp_path, n_train=0)
    with pytest.raises(D.DataError, match=r"train-images-idx3-ubyte: holds 0 images.*intact copies"):
        D.load_mnist(str(tmp_path))
    _write_mnist(tmp_path, n_test=0)  # only the t10k pair, carved with --split-from-test
    with pytest.raises(D.DataError, match=r"t10k-images-idx3-ubyte: holds 0 images"):
        D.load_mnist(str(tmp_path), split_from_test=5)
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"")  # a 0-byte file
    with pytest.raises(D.DataError, match=r"train-labels-idx1-ubyte: file is empty.*intact copy"):
        D.load_mnist(str(tmp_path))


def test_mnist_missing_files_says_where_and_what(tmp_path):
    with pytest.raises(D.DataError) as info:
        D.load_mnist(str(tmp_path))
    msg = str(info.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "--dataset digits" in msg


def test_mnist_split_from_test_only_needs_t10k(tmp_path):
    _write_mnist(tmp_path, n_test=20)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        os.remove(tmp_path / stem)
    d = D.load_mnist(str(tmp_path), split_from_test=5)
    assert d.x_train.shape[0] == 15 and d.x_test.shape[0] == 5
    assert any("TEST set" in n for n in d.notes)
    with pytest.raises(D.DataError, match="between 1 and 19"):
        D.load_mnist(str(tmp_path), split_from_test=20)


def _cifar_batch(n, data=None, labels=None):
    return {b"data": np.zeros((n, 3072), dtype=np.uint8) if data is None else data,
            b"labels": [i % 10 for i in range(n)] if labels is None else labels}


def _write_cifar(directory, n=4, test_batch=None):
    for name in D.CIFAR_TRAIN:
        with open(directory / name, "wb") as f:
            pickle.dump(_cifar_batch(n), f)
    with open(directory / D.CIFAR_TEST, "wb") as f:
        pickle.dump(test_batch if test_batch is not None else _cifar_batch(n), f)


def test_cifar_valid(tmp_path):
    _write_cifar(tmp_path)
    d = D.load_cifar10(str(tmp_path))
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.y_train.tolist()[:4] == [0, 1, 2, 3]


@pytest.mark.parametrize("bad, pattern", [
    ({b"labels": [0]}, "missing key 'data'"),
    (_cifar_batch(3, data=np.zeros((3, 3072), dtype=np.float32)), "uint8 array of shape"),
    (_cifar_batch(3, data=np.zeros((3, 100), dtype=np.uint8)), r"shape \(N, 3072\)"),
    (_cifar_batch(3, labels=[0, 1]), "labels for 3 images"),
    (_cifar_batch(2, labels=[0, 12]), "outside 0..9"),
])
def test_cifar_invalid_names_file(tmp_path, bad, pattern):
    _write_cifar(tmp_path, test_batch=bad)
    with pytest.raises(D.DataError, match="test_batch.*" + pattern):
        D.load_cifar10(str(tmp_path))


@pytest.mark.parametrize("labels, shown", [
    ([0, 10**30], str(10**30)), ([-(10**30), 1], str(-(10**30))),
    (np.array([0, 2**64 - 1], dtype=np.uint64), str(2**64 - 1)),  # not wrapped round to -1
])
def test_cifar_huge_label_names_file_and_value(tmp_path, labels, shown):
    """A label beyond int64 used to raise OverflowError (a list) or be reported wrapped (a uint64 array)."""
    _write_cifar(tmp_path, test_batch=_cifar_batch(2, labels=labels))
    with pytest.raises(D.DataError, match=f"test_batch: label {shown} outside 0..9"):
        D.load_cifar10(str(tmp_path))


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(D.DataError, match="data_batch_1"):
        D.load_cifar10(str(tmp_path))
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(D.DataError, match="data_batch_3"):
        D.load_cifar10(str(tmp_path))


def test_digits_builtin():
    d = D.load_digits_data()
    assert d.input_dim == 64 and d.x_train.shape[0] + d.x_test.shape[0] == 1797
    assert float(d.x_train.max()) == 1.0 and set(d.y_test.tolist()) <= set(range(10))


def test_hemisphere_points_and_rotation():
    from colu_lab.experiments.hemisphere import experiment as hemisphere

    d = hemisphere.load_data(hemisphere.Config(n_lat=20, n_lon=30))
    x = torch.cat([d.x_train, d.x_test])
    assert x.shape == (601, 3) and torch.allclose(x.norm(dim=1), torch.ones(601), atol=1e-6)
    assert (x[:, 2] >= -1e-7).all()
    r = D.rotation_45()
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d.y_train, d.x_train @ r.float().T, atol=1e-6)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST t10k files not present at {SHARED_MNIST}")
def test_shared_mnist_t10k_split():
    d = D.load_mnist(str(SHARED_MNIST), split_from_test=2000)
    assert d.x_train.shape == (8000, 784) and d.x_test.shape == (2000, 784)
    assert "split-from-test 2000" in d.description and any("TEST set" in n for n in d.notes)
    # the classes of real MNIST are all present in both parts
    assert set(d.y_test.tolist()) == set(range(10)) == set(d.y_train.tolist())
