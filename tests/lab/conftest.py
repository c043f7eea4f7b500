"""Fixtures the suite's tests share: data files in the standard formats, written by the tests themselves."""

import pickle

import numpy as np
import pytest

from colu_lab.framework import data as D


def _write_cifar(directory, n=4, seed=5):
    """The six CIFAR-10 python batch files with ``n`` random images each: dicts with the official files' keys and
    array layout (pickled by this process; the loader reads them without executing anything)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in D.CIFAR_TRAIN + [D.CIFAR_TEST]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=4))


@pytest.fixture(scope="session")
def write_cifar():
    """``write_cifar(directory, n=4, seed=5)``: CIFAR-10's six python batch files of ``n`` random images each."""
    return _write_cifar
