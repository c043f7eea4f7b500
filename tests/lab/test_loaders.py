"""The CIFAR-10, IDX and character-corpus loaders on files the tests write, and the batch sources."""

import gzip
import io
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from colu_lab.framework import batches as B
from colu_lab.framework import data as D

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SHARED_TEXT = SHARED / "tinyshakespeare" / "input.txt"
SHARED_MNIST = SHARED / "mnist"


# ------------------------------------------------------------------ CIFAR-10
class _Py2Pickler(pickle._Pickler):
    """Writes protocol 2 the way Python 2 wrote the official batches: every string as a byte string.

    Python 3 writes ``bytes`` at protocol 2 as a call to ``_codecs.encode``,
    which the official files never contain.
    """

    def _save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _official_batch(n, seed=0, label="training batch 1 of 5"):
    rng = np.random.default_rng(seed)
    return {"batch_label": label, "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)]}


def _py2_pickle(obj, numpy_module="numpy._core.multiarray"):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue()
    # numpy 1.x, which wrote the official files, names its reconstructor numpy.core.multiarray
    return raw.replace(b"cnumpy._core.multiarray\n", f"c{numpy_module}\n".encode())


def _write_official(directory, n=6, test_obj=None, numpy_module="numpy.core.multiarray"):
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(D.CIFAR_TRAIN):
        (directory / name).write_bytes(_py2_pickle(_official_batch(n, seed=i), numpy_module))
    test_obj = _official_batch(n, seed=9, label="testing batch 1 of 1") if test_obj is None else test_obj
    (directory / D.CIFAR_TEST).write_bytes(_py2_pickle(test_obj, numpy_module))


def test_py2_writer_is_the_official_shape():
    raw = _py2_pickle(_official_batch(2), "numpy.core.multiarray")
    assert b"_codecs" not in raw and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    loaded = pickle.loads(raw, encoding="bytes")
    assert set(loaded) == {b"batch_label", b"labels", b"data", b"filenames"}


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar_official_format(tmp_path, numpy_module):
    _write_official(tmp_path, numpy_module=numpy_module)
    d = D.load_cifar10(str(tmp_path))
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and 0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1
    first = _official_batch(6, seed=0)
    # row-major 3072 = 3 planes of 32x32, red first
    assert torch.equal(d.x_train[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)).float() / 255)
    assert d.y_train[:6].tolist() == first["labels"] and d.y_train.dtype == torch.int64
    assert d.mean.shape == (3,) and d.std.shape == (3,)
    assert torch.allclose(d.mean, d.x_train.mean((0, 2, 3)), atol=1e-6)
    assert d.summary()["image_shape"] == [3, 32, 32]


def test_cifar_batches_subfolder_and_protocol_4(tmp_path):
    sub = tmp_path / D.CIFAR_SUBDIR
    sub.mkdir()
    for name in D.CIFAR_TRAIN + [D.CIFAR_TEST]:
        batch = {k.encode(): v for k, v in _official_batch(3).items()}
        (sub / name).write_bytes(pickle.dumps(batch, protocol=4))
    d = D.load_cifar10(str(tmp_path))
    assert d.x_train.shape[0] == 15
    assert D.recognise_dataset(str(tmp_path)) == "cifar10"


def test_cifar_missing_names_files_and_source(tmp_path):
    with pytest.raises(D.DataError) as info:
        D.load_cifar10(str(tmp_path))
    msg = str(info.value)
    assert "data_batch_1" in msg and "test_batch" in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(D.DataError, match="not a directory"):
        D.load_cifar10(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("keep", [0.5, 0.999, 10])
def test_cifar_truncated(tmp_path, keep):
    _write_official(tmp_path)
    path = tmp_path / "data_batch_4"
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)] if keep < 1 else raw[:keep])
    with pytest.raises(D.DataError, match=r"data_batch_4: truncated"):
        D.load_cifar10(str(tmp_path))


@pytest.mark.parametrize("bad, pattern", [
    ({"labels": [1, 2]}, "missing key 'data'"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [1, 2]}, "uint8 array of shape"),
    ({"data": np.zeros((2, 32, 32, 3), np.uint8), "labels": [1, 2]}, r"shape \(N, 3072\)"),
    ({"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2]}, r"\(2,\) labels for 3 images"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}, "label 10 outside 0..9"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, -1]}, "label -1 outside 0..9"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1.0, 2.0]}, "list of ints"),
    ([np.zeros((2, 3072), np.uint8)], "expected a dict"),
])
def test_cifar_wrong_content_names_file(tmp_path, bad, pattern):
    _write_official(tmp_path, test_obj=bad)
    with pytest.raises(D.DataError, match="test_batch: .*" + pattern):
        D.load_cifar10(str(tmp_path))


class _RunsCode:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("payload, name", [
    (_RunsCode, "(posix|os).system"),
    (_WritesFile, "(__builtin__|builtins).exec"),
])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_malicious_pickle_is_refused_not_run(tmp_path, payload, name, protocol):
    marker = tmp_path / "marker"
    _write_official(tmp_path / "cifar")
    batch = {b"data": payload(marker), b"labels": [0]}
    raw = _py2_pickle(batch) if protocol == 2 else pickle.dumps(batch, protocol=protocol)
    (tmp_path / "cifar" / "data_batch_2").write_bytes(raw)
    with pytest.raises(D.DataError, match=rf"data_batch_2: not a CIFAR-10 python batch \(refusing {name}:"):
        D.load_cifar10(str(tmp_path / "cifar"))
    assert not marker.exists()
    # the same file through plain pickle does run it: the test's payload is real
    with open(tmp_path / "cifar" / "data_batch_2", "rb") as f:
        pickle.load(f, encoding="bytes")
    assert marker.exists()


class _HugeArray:
    def __reduce__(self):
        return np.ndarray, ((1 << 40,),)


class _ObjectArray:
    def __reduce__(self):
        return np.dtype, ("O", False, True)


@pytest.mark.parametrize("payload, pattern", [
    (_HugeArray, r"numpy.ndarray called with \(\(1099511627776,\),\)"),
    (_ObjectArray, "dtype 'O'"),
])
def test_cifar_pickle_cannot_misuse_numpy(tmp_path, payload, pattern):
    _write_official(tmp_path)
    (tmp_path / "test_batch").write_bytes(_py2_pickle({b"data": payload(), b"labels": [0]}))
    with pytest.raises(D.DataError, match="test_batch: .*(" + pattern + ")"):
        D.load_cifar10(str(tmp_path))


# ---------------------------------------------------------------- IDX bombs
def _idx_header(magic, dims):
    return struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims)


def _gzip_stream(path, header, zero_bytes):
    """A gzip file: ``header`` then ``zero_bytes`` zeros, written in pieces (zeros compress ~1000:1)."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        chunk = bytes(1 << 20)
        left = zero_bytes
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        with pytest.raises(D.DataError) as info:
            fn()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


def test_idx_bomb_payload_beyond_header_is_not_decompressed(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _gzip_stream(path, _idx_header(D.LABEL_MAGIC, (10,)), 64 << 20)  # declares 10 bytes, inflates to 64 MiB
    assert path.stat().st_size < 1 << 20
    peak, msg = _peak_bytes(lambda: D.read_idx(str(path), D.LABEL_MAGIC))
    assert "trailing bytes" in msg and str(path) in msg
    assert peak < 4 << 20, f"peak {peak} bytes while rejecting a 64 MiB bomb"


def test_idx_header_declaring_huge_size_is_rejected_before_reading(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_stream(path, _idx_header(D.IMAGE_MAGIC, (4_000_000_000, 28, 28)), 1000)
    peak, msg = _peak_bytes(lambda: D.read_idx(str(path), D.IMAGE_MAGIC))
    assert "limit" in msg and "(4000000000, 28, 28)" in msg
    assert peak < 1 << 20


def test_idx_header_lying_about_size_costs_only_what_exists(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_stream(path, _idx_header(D.IMAGE_MAGIC, (900_000, 28, 28)), 5000)  # claims 706 MB, holds 5 kB
    peak, msg = _peak_bytes(lambda: D.read_idx(str(path), D.IMAGE_MAGIC))
    assert "truncated" in msg
    assert peak < 4 << 20


def test_idx_small_limit_and_zero_dimensions(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(_idx_header(D.LABEL_MAGIC, (100,)) + bytes(100))
    assert D.read_idx(str(path), max_bytes=100).shape == (100,)
    with pytest.raises(D.DataError, match="99-byte limit"):
        D.read_idx(str(path), max_bytes=99)
    path.write_bytes(struct.pack(">I", 0x0800))
    with pytest.raises(D.DataError, match="0 dimensions"):
        D.read_idx(str(path))


def test_idx_corrupt_gzip_names_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(D.DataError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        D.read_idx(str(path))


# ----------------------------------------------------------- padded MNIST
def _write_t10k(directory, n=20):
    rng = np.random.default_rng(1)
    imgs = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zero pixels, so padding is recognisable
    labs = np.arange(n, dtype=np.uint8) % 10
    with gzip.open(directory / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(_idx_header(D.IMAGE_MAGIC, (n, 28, 28)) + imgs.tobytes())
    with gzip.open(directory / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx_header(D.LABEL_MAGIC, (n,)) + labs.tobytes())


@pytest.mark.parametrize("channels", [1, 3])
def test_mnist_padded_stand_in(tmp_path, channels):
    _write_t10k(tmp_path)
    d = D.load_mnist_padded(str(tmp_path), split_from_test=5, channels=channels)
    assert d.x_train.shape == (15, channels, 32, 32) and d.x_test.shape == (5, channels, 32, 32)
    x = d.x_train
    assert float(x[:, :, :2].abs().max()) == 0 and float(x[:, :, :, -2:].abs().max()) == 0
    assert float(x[:, :, 2:30, 2:30].min()) > 0
    assert (x == x[:, :1]).all() and d.mean.shape == (channels,)
    assert any("not comparable" in n for n in d.notes) and any("TEST set" in n for n in d.notes)
    with pytest.raises(D.DataError, match="channels=2"):
        D.load_mnist_padded(str(tmp_path), channels=2)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST t10k files not present at {SHARED_MNIST}")
def test_mnist_padded_real_t10k():
    d = D.load_mnist_padded(str(SHARED_MNIST), split_from_test=2000)
    assert d.x_train.shape == (8000, 3, 32, 32) and d.x_test.shape == (2000, 3, 32, 32)
    assert 0.1 < float(d.mean[0]) < 0.15  # MNIST's mean pixel, 0.13 at 28x28, a little less with the border


# ---------------------------------------------------------- character corpus
def test_char_corpus_split_vocab_and_round_trip(tmp_path):
    text = "to be, or not to be: that is the question.\n" * 10 + "Ωmega ☃\n"
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    c = D.load_char_corpus(str(path), block_size=8)
    assert c.vocab == sorted(set(text)) and c.vocab_size == len(set(text))
    n_train = int(len(text) * 0.9)
    assert c.train.numel() == n_train and c.val.numel() == len(text) - n_train
    assert c.train.dtype == c.val.dtype == torch.uint8  # a byte per character while the vocabulary allows
    assert c.decode(torch.cat([c.train, c.val])) == text  # first 90% train, the rest validation, in order
    assert c.decode(c.encode("not ☃")) == "not ☃"
    assert c.summary()["vocab"] == "".join(c.vocab)
    with pytest.raises(ValueError, match="'Z' is not in the corpus vocabulary"):
        c.encode("Zebra")
    with pytest.raises(ValueError, match=f"token id {len(c.vocab)} outside"):
        c.decode([len(c.vocab)])


def test_char_corpus_errors(tmp_path):
    with pytest.raises(D.DataError) as info:
        D.load_char_corpus(str(tmp_path / "input.txt"))
    msg = str(info.value)
    assert "input.txt" in msg and "char-rnn" in msg and "--data PATH/input.txt" in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(D.DataError, match="empty.txt: the file is empty"):
        D.load_char_corpus(str(empty))
    short = tmp_path / "short.txt"
    short.write_text("x" * 300)
    with pytest.raises(D.DataError, match=r"short.txt: 300 characters is too short.*block size 64.*at least 650"):
        D.load_char_corpus(str(short))
    assert D.load_char_corpus(str(short), block_size=8).val.numel() == 30
    big = tmp_path / "big.txt"
    big.write_text("ab" * 600)
    with pytest.raises(D.DataError, match=r"big.txt: 1200 bytes, more than the 1000 bytes .*max_bytes"):
        D.load_char_corpus(str(big), block_size=8, max_bytes=1000)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(D.DataError, match="latin1.txt: not UTF-8 text \\(byte 3"):
        D.load_char_corpus(str(latin))


@pytest.mark.skipif(not SHARED_TEXT.is_file(), reason=f"tiny Shakespeare not present at {SHARED_TEXT}")
def test_char_corpus_tiny_shakespeare():
    c = D.load_char_corpus(str(SHARED_TEXT))
    assert c.vocab_size == 65 and c.train.numel() == 1_003_854 and c.val.numel() == 111_540
    assert c.decode(c.train[:14]) == "First Citizen:"


def test_char_corpus_ids_widen_with_the_vocabulary(tmp_path):
    """Past 256 distinct characters the ids take two bytes; characters beyond the basic plane map too."""
    wide = "".join(chr(0x4E00 + i) for i in range(300)) * 4 + "😀🎉" * 50
    path = tmp_path / "wide.txt"
    path.write_text(wide, encoding="utf-8")
    c = D.load_char_corpus(str(path), block_size=8)
    assert c.train.dtype == torch.int16 and c.vocab_size == 302
    assert c.decode(torch.cat([c.train, c.val])) == wide


# ------------------------------------------------------------ batch sources
def _images(n=40):
    return torch.rand(n, 3, 8, 8), torch.arange(n)


def test_image_batches_are_functions_of_seed_and_step():
    x, y = _images()
    a = B.augmented_image_batch(x, y, 8, seed=3, step=7)
    b = B.augmented_image_batch(x, y, 8, seed=3, step=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], B.augmented_image_batch(x, y, 8, seed=3, step=8)[0])
    assert not torch.equal(a[0], B.augmented_image_batch(x, y, 8, seed=4, step=7)[0])
    assert a[0].shape == (8, 3, 8, 8) and a[1].shape == (8,)


def test_image_batches_cover_each_epoch_once():
    x, y = _images(40)
    for epoch in range(2):
        seen = torch.cat([B.augmented_image_batch(x, y, 8, 0, epoch * 5 + k)[1] for k in range(5)])
        assert sorted(seen.tolist()) == list(range(40))
    first = torch.cat([B.batch_indices(40, 8, 0, k) for k in range(5)])
    second = torch.cat([B.batch_indices(40, 8, 0, k) for k in range(5, 10)])
    assert not torch.equal(first, second)  # a new order each epoch
    with pytest.raises(ValueError, match="batch_size=41"):
        B.batch_indices(40, 41, 0, 0)


def test_image_augmentation_is_a_padded_crop_and_flip():
    x, y = _images(16)
    plain = B.augmented_image_batch(x, y, 16, 0, 0, pad=0, flip=False)
    assert torch.equal(plain[0], x[plain[1]])
    flipped = B.augmented_image_batch(x, y, 16, 0, 0, pad=0)
    src = x[flipped[1]]
    is_flip = [torch.equal(f, s.flip(-1)) for f, s in zip(flipped[0], src)]
    assert all(f or torch.equal(a, s) for f, a, s in zip(is_flip, flipped[0], src)) and 0 < sum(is_flip) < 16
    crops = B.augmented_image_batch(x, y, 16, 0, 0, pad=2, flip=False)
    padded = torch.nn.functional.pad(x[crops[1]], (2, 2, 2, 2))
    for img, p in zip(crops[0], padded):
        windows = [p[:, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(img, w) for w in windows)
    # the same draws with and without flips: switching flips off keeps the crops
    both = B.augmented_image_batch(x, y, 16, 0, 0, pad=2)
    assert all(torch.equal(b, c) or torch.equal(b, c.flip(-1)) for b, c in zip(both[0], crops[0]))


def test_image_batch_normalisation():
    x, y = _images(16)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.5])
    raw = B.augmented_image_batch(x, y, 4, 1, 2)
    norm = B.augmented_image_batch(x, y, 4, 1, 2, mean=mean, std=std)
    assert torch.allclose(norm[0], (raw[0] - mean[:, None, None]) / std[:, None, None])
    with pytest.raises(ValueError, match="both mean and std"):
        B.augmented_image_batch(x, y, 4, 1, 2, mean=mean)


def test_token_windows():
    tokens = torch.arange(500)
    xb, yb = B.token_window_batch(tokens, 16, 6, seed=0, step=3)
    assert xb.shape == yb.shape == (6, 16) and xb.dtype == torch.int64
    assert torch.equal(yb, xb + 1)  # targets are the next tokens
    assert torch.equal(xb[:, 1:] - xb[:, :-1], torch.ones(6, 15, dtype=torch.int64))  # contiguous windows
    assert torch.equal(xb, B.token_window_batch(tokens, 16, 6, 0, 3)[0])
    assert not torch.equal(xb, B.token_window_batch(tokens, 16, 6, 0, 4)[0])
    assert not torch.equal(xb, B.token_window_batch(tokens, 16, 6, 1, 3)[0])
    ends = torch.cat([B.token_window_batch(torch.arange(20), 16, 64, 0, s)[1][:, -1] for s in range(5)])
    assert int(ends.max()) == 19 and int(ends.min()) == 16  # every start 0..3 is drawn, none runs past the end
    with pytest.raises(ValueError, match="at least 17 tokens"):
        B.token_window_batch(torch.arange(16), 16, 2, 0, 0)


def test_fixed_eval_batches():
    tokens = torch.arange(1000)
    a = B.fixed_token_batches(tokens, 8, 4, count=3)
    b = B.fixed_token_batches(tokens, 8, 4, count=3)
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], B.token_window_batch(tokens, 8, 4, 0, 0)[0])
