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
  ``data_batch_5``, ``test_batch``), read by an unpickler that builds only
  numpy arrays and plain containers (a pickle naming anything else is
  refused, not run) and validated the same way.
* ``mnist32``: real MNIST digits padded to 32x32 (1 or 3 channels), a
  CPU-sized stand-in where a CIFAR network is to be run.
* character corpora: a UTF-8 text file (tiny Shakespeare's ``input.txt``)
  as token ids with its vocabulary, split 90/10 (:func:`load_char_corpus`).
* hemisphere points are generated (:func:`hemisphere`).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import zlib
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
MAX_IDX_BYTES = 1 << 30
"""Largest IDX payload :func:`read_idx` accepts by default (1 GiB; MNIST's training images are 47 MB)."""

_READ_CHUNK = 1 << 20  # stream in 1 MiB pieces so that memory follows the bytes that exist, not a header's claim


def _read_exactly(f, n: int) -> bytes:
    """Up to ``n`` bytes from ``f``, fewer only at the end of the stream, in chunks.

    A single ``f.read(n)`` would reserve ``n`` bytes up front, so a header
    claiming a gigabyte would cost a gigabyte even when the file holds a few
    bytes.
    """
    buf = bytearray()
    while len(buf) < n:
        piece = f.read(min(_READ_CHUNK, n - len(buf)))
        if not piece:
            break
        buf += piece
    return bytes(buf)


def read_idx(path: str, expected_magic: int | None = None, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (raw or .gz) of unsigned bytes, checking magic, dimensions and size.

    The file is read as a stream: first the 4-byte magic number, then the
    dimensions, then exactly the number of bytes they declare, so a
    compressed file never expands to more than its header announces (a small
    ``.gz`` that inflates to gigabytes is rejected after reading at most
    ``max_bytes`` + 1 bytes, and one whose header lies is rejected before
    that).

    Args:
        path: the file; a name ending in ``.gz`` is read through gzip.
        expected_magic: the magic number required (``IMAGE_MAGIC`` 2051 or
            ``LABEL_MAGIC`` 2049); ``None`` accepts any unsigned-byte IDX file.
        max_bytes: the largest payload (product of the dimensions) accepted,
            default :data:`MAX_IDX_BYTES` (1 GiB).

    Returns:
        A read-only ``uint8`` array of the declared dimensions.

    Raises:
        DataError: naming ``path`` and what is wrong: unreadable, too short
            for a header, wrong magic number, an implausible size, truncated
            data, or trailing bytes after the declared data.
    """
    try:
        f = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc}); replace it with an intact copy") from exc
    try:
        with f:
            return _read_idx_stream(f, path, expected_magic, max_bytes)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        # a corrupt gzip stream surfaces here, wherever in the file the damage is
        raise DataError(f"{path}: cannot read ({exc}); replace it with an intact copy") from exc


def _read_idx_stream(f, path, expected_magic, max_bytes):
    head = _read_exactly(f, 4)
    if not head:
        raise DataError(f"{path}: file is empty (0 bytes), not an IDX file; replace it with an intact copy")
    if len(head) < 4:
        raise DataError(f"{path}: file is {len(head)} bytes, too short for an IDX header (truncated?)")
    magic = struct.unpack(">I", head)[0]
    if expected_magic is not None and magic != expected_magic:
        kind = {IMAGE_MAGIC: "images", LABEL_MAGIC: "labels"}.get(expected_magic, "IDX")
        raise DataError(f"{path}: magic number {magic}, expected {expected_magic} for an IDX {kind} file "
                        "(wrong file, or not an IDX file)")
    if magic >> 8 != 0x08:  # type byte 0x08 = unsigned byte
        raise DataError(f"{path}: magic number {magic} is not an unsigned-byte IDX file")
    ndim = magic & 0xFF
    if ndim == 0:
        raise DataError(f"{path}: magic number {magic} declares 0 dimensions; not an IDX data file")
    raw_dims = _read_exactly(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: header truncated ({4 + len(raw_dims)} bytes, need {4 + 4 * ndim})")
    dims = struct.unpack(">" + "I" * ndim, raw_dims)
    size = math.prod(dims)
    if size > max_bytes:
        raise DataError(f"{path}: header declares dimensions {dims}, {size} bytes of data, more than the "
                        f"{max_bytes}-byte limit; the file is corrupt or not an MNIST-like IDX file "
                        "(raise max_bytes only for a genuinely larger dataset)")
    payload = _read_exactly(f, size)
    header = 4 + 4 * ndim
    if len(payload) < size:
        raise DataError(f"{path}: truncated: {header + len(payload)} bytes, dimensions {dims} need "
                        f"{header + size}; replace it with an intact copy")
    extra = f.read(1)
    if extra:
        raise DataError(f"{path}: has trailing bytes after the {header + size} bytes that dimensions {dims} "
                        "declare (wrong header or a damaged file); replace it with an intact copy")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


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
    if images.shape[0] == 0:
        raise DataError(f"{img_path}: holds 0 images (its header declares dimensions {images.shape}), so there is "
                        "nothing to train or test on; replace it and its labels file with intact copies")
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
CIFAR_SOURCE = ("the CIFAR-10 'python version' (cifar-10-python.tar.gz from "
                "https://www.cs.toronto.edu/~kriz/cifar.html), extracted; pass --data with the folder holding "
                "data_batch_1..5 and test_batch")
CIFAR_SUBDIR = "cifar-10-batches-py"  # the folder the official archive extracts to


class _NdarrayMarker:
    """Stands in for ``numpy.ndarray`` inside a batch: usable only as ``_reconstruct``'s first argument.

    Handing the pickle the real class would let it call ``ndarray(shape)``
    directly and allocate whatever size it names.
    """

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(f"numpy.ndarray called with {args!r}: numpy's pickles never build arrays "
                                     "that way")


def _reconstruct(subtype, shape, typecode):
    """numpy's ``_reconstruct`` for the one call its pickles make: an empty array that ``__setstate__`` then fills."""
    if subtype is not _NdarrayMarker or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError(f"array reconstruction ({subtype!r}, {shape!r}, {typecode!r}) is not how "
                                     "numpy pickles arrays")
    return np.empty(0, dtype=np.int8)  # a placeholder: __setstate__ sets the real shape, dtype and bytes


def _dtype(spec, align=False, copy=True):
    """``numpy.dtype`` for plain numbers only: no object arrays, whose elements pickle could build freely."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain type code")
    try:
        dt = np.dtype(spec)
    except TypeError as exc:
        raise pickle.UnpicklingError(f"dtype {spec!r}: {exc}") from exc
    if dt.kind not in "biuf" or dt.hasobject:
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric type")
    return np.dtype(spec, align, copy)


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # pickles written by numpy 1.x (and Python 2)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # pickles written by numpy 2.x
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR batch without running anything it names.

    A pickle is a program: every ``module.name`` it mentions is imported and
    may be called. A CIFAR batch needs only numpy's array reconstruction;
    dicts, lists, bytes, strings and ints are built by the pickle machine
    itself without ``find_class``. Anything else (``os.system``,
    ``builtins.eval``, ...) is refused before it is looked up.
    """

    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a CIFAR-10 batch holds only a dict of arrays, lists and bytes, "
                "so this file is not an official CIFAR-10 python batch (re-saved by other software, or "
                "tampered with)") from None


def _read_cifar_batch(path: str):
    """One CIFAR-10 batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``, validated."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise DataError(f"{path}: truncated ({exc}); replace it with an intact copy of " + CIFAR_SOURCE) from exc
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc}); it was not loaded. Use "
                        + CIFAR_SOURCE) from exc
    except EOFError as exc:
        raise DataError(f"{path}: truncated (the pickle ends early); replace it with an intact copy of "
                        + CIFAR_SOURCE) from exc
    except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle batch ({type(exc).__name__}: {exc}); use "
                        + CIFAR_SOURCE) from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, got {type(batch).__name__}")
    keys = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in keys:
            raise DataError(f"{path}: missing key {key!r} (has {sorted(map(str, keys))})")
    data, labels = keys["data"], keys["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
    if isinstance(labels, np.ndarray):
        ok = labels.dtype.kind in "iu"
    else:
        ok = isinstance(labels, list) and all(type(v) is int for v in labels)
    if not ok:
        raise DataError(f"{path}: 'labels' must be a list of ints, got {type(labels).__name__}")
    shape = labels.shape if isinstance(labels, np.ndarray) else (len(labels),)
    if len(shape) != 1 or shape[0] != data.shape[0]:
        raise DataError(f"{path}: {shape} labels for {data.shape[0]} images")
    # checked as Python ints before the conversion, so that 10**30 is reported rather than overflowing int64
    # (and a uint64 2**64 - 1 rather than wrapped round to -1)
    bad = next((v for v in (labels.tolist() if isinstance(labels, np.ndarray) else labels) if not 0 <= v <= 9),
               None)
    if bad is not None:
        raise DataError(f"{path}: label {bad} outside 0..9")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


@dataclass
class ImageData(Data):
    """:class:`Data` for images ``(N, C, H, W)`` in [0, 1], with per-channel statistics of the training images.

    ``mean``/``std`` (shape ``(C,)``) are for normalising ``(x - mean) /
    std`` per channel; they come from the training split only.
    """

    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @property
    def input_dim(self) -> int:
        return int(math.prod(self.x_train.shape[1:]))

    def summary(self) -> dict:
        out = super().summary()
        out["image_shape"] = list(self.x_train.shape[1:])
        if self.mean is not None:
            out["channel_mean"] = [round(float(v), 6) for v in self.mean]
            out["channel_std"] = [round(float(v), 6) for v in self.std]
        return out


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``(N, C, H, W)`` images, each of shape ``(C,)``.

    Computed in float64 so that 50000 images sum without rounding drift.
    """
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return flat.mean(1).float(), flat.std(1).float()


def _cifar_directory(directory: str) -> str:
    """``directory`` itself, or its ``cifar-10-batches-py`` subfolder when the batches are there."""
    names = CIFAR_TRAIN + [CIFAR_TEST]
    if not any(os.path.isfile(os.path.join(directory, n)) for n in names):
        sub = os.path.join(directory, CIFAR_SUBDIR)
        if os.path.isdir(sub):
            return sub
    return directory


def load_cifar10(directory: str) -> ImageData:
    """CIFAR-10 from the official python batches, validated, without running any code they contain.

    Args:
        directory: the folder holding ``data_batch_1`` .. ``data_batch_5`` and
            ``test_batch``, or the folder that holds ``cifar-10-batches-py/``.

    Returns:
        :class:`ImageData`: images ``(N, 3, 32, 32)`` float32 in [0, 1]
        (50000 train, 10000 test for the full set), int64 labels, and the
        per-channel mean/std of the training images.

    Raises:
        DataError: a file is missing, truncated, not a CIFAR batch (including
            a pickle that names anything beyond numpy arrays: it is refused,
            not run), or holds data of the wrong shape or labels outside 0..9.
    """
    if directory is None or not os.path.isdir(directory):
        raise DataError(f"--data {directory!r} is not a directory; CIFAR-10 needs " + CIFAR_SOURCE)
    directory = _cifar_directory(directory)
    names = CIFAR_TRAIN + [CIFAR_TEST]
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise DataError(f"CIFAR-10 files not found in {os.path.abspath(directory)!r}: need {', '.join(missing)}. "
                        f"Nothing is downloaded; get {CIFAR_SOURCE}.")
    parts = [_read_cifar_batch(os.path.join(directory, n)) for n in CIFAR_TRAIN]
    x_te, y_te = _read_cifar_batch(os.path.join(directory, CIFAR_TEST))
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    img = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)
    x_train = img(x_tr)
    mean, std = channel_stats(x_train)
    return ImageData("cifar10", x_train, torch.from_numpy(y_tr), img(x_te), torch.from_numpy(y_te),
                     f"CIFAR-10 from {directory}: {len(y_tr)} train / {len(y_te)} test", mean=mean, std=std)


def load_mnist_padded(directory: str | None, split_from_test: int | None = 2000, channels: int = 3) -> ImageData:
    """Real MNIST digits as 32x32 images, a CPU-sized stand-in where a CIFAR-10 network is to be run.

    The 28x28 digits are zero-padded by 2 pixels on each side to 32x32 and,
    with ``channels=3``, repeated on three channels so that a network built
    for CIFAR's RGB input runs unchanged. The numbers it gives are not
    comparable to CIFAR-10 results, and the notes say so.

    Args:
        directory: the folder with the MNIST IDX files (see :func:`load_mnist`).
        split_from_test: split the t10k files into train/test with this many
            test examples (default 2000), so only the two t10k files are
            needed; ``None`` uses the official 60000/10000 split.
        channels: 1 or 3 (default 3).

    Returns:
        :class:`ImageData` with images ``(N, channels, 32, 32)`` in [0, 1]
        and the per-channel mean/std of its training images.
    """
    if channels not in (1, 3):
        raise DataError(f"channels={channels!r}: the padded MNIST stand-in has 1 or 3 channels")
    base = load_mnist(directory, split_from_test)

    def to_image(flat):
        x = torch.nn.functional.pad(flat.reshape(-1, 1, 28, 28), (2, 2, 2, 2))
        return x.expand(-1, channels, -1, -1).contiguous()

    x_train = to_image(base.x_train)
    mean, std = channel_stats(x_train)
    notes = list(base.notes) + [
        f"MNIST digits padded to 32x32 ({channels} channel{'s' if channels > 1 else ''}) stand in for CIFAR-10: "
        "not comparable to the paper's CIFAR-10 numbers."]
    return ImageData("mnist32", x_train, base.y_train, to_image(base.x_test), base.y_test,
                     base.description + f", padded to 32x32 with {channels} channel(s)", notes, mean=mean, std=std)


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


def load_digits_images(size: int = 32, channels: int = 3) -> ImageData:
    """The built-in 8x8 digits as ``size x size`` images: a stand-in that needs no files, for smoke tests.

    Each digit is enlarged by repeating pixels (nearest neighbour) to
    ``size x size`` and, with ``channels=3``, repeated on three channels, so
    that a network built for CIFAR's 32x32 RGB input runs unchanged. Not
    comparable to CIFAR-10 (or MNIST) results; the notes say so.

    Args:
        size: the side of the images, a multiple of 8 (default 32).
        channels: 1 or 3 (default 3).
    """
    if not (isinstance(size, int) and size >= 8 and size % 8 == 0):
        raise DataError(f"size={size!r}: the digits are 8x8, so the image side must be a multiple of 8")
    if channels not in (1, 3):
        raise DataError(f"channels={channels!r}: the digit images have 1 or 3 channels")
    base = load_digits_data()

    def to_image(flat):
        x = flat.reshape(-1, 1, 8, 8).repeat_interleave(size // 8, 2).repeat_interleave(size // 8, 3)
        return x.expand(-1, channels, -1, -1).contiguous()

    x_train = to_image(base.x_train)
    mean, std = channel_stats(x_train)
    shown = f"enlarged to {size}x{size}" if size > 8 else "kept at 8x8"
    notes = [f"The built-in 8x8 digits, {shown} ({channels} channel(s)), stand in for CIFAR-10: "
             "not comparable to the paper's numbers."]
    return ImageData("digits32", x_train, base.y_train, to_image(base.x_test), base.y_test,
                     base.description + f", {shown} with {channels} channel(s)", notes,
                     mean=mean, std=std)


def recognise_dataset(directory: str) -> str | None:
    """``"mnist"`` or ``"cifar10"`` by the standard file names found in ``directory``, else ``None``."""
    if not os.path.isdir(directory):
        raise DataError(f"--data {directory!r} is not a directory; point it at the folder holding the dataset files")
    if any(_find(directory, stem) for stem in MNIST_FILES.values()):
        return "mnist"
    cifar_dir = _cifar_directory(directory)
    if any(os.path.isfile(os.path.join(cifar_dir, n)) for n in CIFAR_TRAIN + [CIFAR_TEST]):
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
_FILE_DIGESTS: dict = {}  # (real path, size, mtime_ns) -> sha256: each file is hashed once per process


def _file_digest(path: str) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def data_digest(path: str) -> str:
    """A short hash of the contents of ``--data``: a file, or every regular file under a folder (hidden ones
    skipped) with its path relative to the folder.

    Part of a run's settings fingerprint, so that a run continued with ``--resume`` on a folder whose files
    changed (relabelled, replaced) is refused instead of mixing data. Moving or renaming the folder keeps the
    digest. Each file is hashed once per process and again only when its size or modification time changes.

    Raises:
        DataError: ``path`` does not exist.
    """
    if os.path.isfile(path):
        entries = [("", _file_digest(path))]
    elif os.path.isdir(path):
        entries = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                full = os.path.join(root, name)
                if not name.startswith(".") and os.path.isfile(full):
                    entries.append((os.path.relpath(full, path).replace(os.sep, "/"), _file_digest(full)))
    else:
        raise DataError(f"--data {path!r}: no such file or folder")
    text = "\n".join(f"{name}\t{digest}" for name, digest in entries)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rotation_45() -> torch.Tensor:
    """R = Rz(45) Ry(45) Rx(45): 45 degrees about each coordinate axis (Section 4)."""
    c = s = math.sqrt(0.5)
    rx = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    ry = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    rz = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


# -------------------------------------------------------- character corpus
CHAR_CORPUS_SOURCE = ("get tiny Shakespeare's input.txt (e.g. data/tinyshakespeare/input.txt in Andrej Karpathy's "
                      "char-rnn repository) and pass --data PATH/input.txt")


@dataclass
class CharCorpus:
    """A character-level corpus: token tensors and the vocabulary that maps them to text.

    Attributes:
        train: token ids of the first ``1 - val_fraction`` of the text, in the smallest integer type that holds
            the vocabulary (uint8 up to 256 characters, else int16 or int32): a byte or two per character.
            Batches convert their windows to int64.
        val: token ids of the rest, the same type.
        vocab: the sorted distinct characters; token ``i`` is ``vocab[i]``.
        path: the file it was read from.
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab: list
    path: str = ""

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64) of ``text``; every character must be in the vocabulary."""
        index = {c: i for i, c in enumerate(self.vocab)}
        try:
            return torch.tensor([index[c] for c in text], dtype=torch.int64)
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the corpus vocabulary of {len(self.vocab)} "
                             "characters; use only characters that occur in the training text") from None

    def decode(self, ids) -> str:
        """The text of a sequence of token ids (a tensor or a list of ints)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        n = len(self.vocab)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"token id {bad[0]} outside the vocabulary 0..{n - 1}")
        return "".join(self.vocab[i] for i in ids)

    def summary(self) -> dict:
        return {"name": "char", "path": self.path, "train_tokens": int(self.train.numel()),
                "val_tokens": int(self.val.numel()), "vocab_size": self.vocab_size, "vocab": "".join(self.vocab)}


MAX_CORPUS_BYTES = 256 << 20
"""The largest text file :func:`load_char_corpus` reads (256 MiB); loading takes about 6 bytes per byte of it."""


def _token_ids(text: str, vocab: list) -> torch.Tensor:
    """``text`` as indices into the sorted ``vocab``, in the smallest integer type that holds them."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab_codes = np.array([ord(c) for c in vocab], dtype=np.uint32)
    dtype = np.uint8 if len(vocab) <= 1 << 8 else np.int16 if len(vocab) <= 1 << 15 else np.int32
    if int(vocab_codes[-1]) < 1 << 16:  # every character in the basic plane: one lookup table of 64 Ki entries
        table = np.zeros(1 << 16, dtype=dtype)
        table[vocab_codes] = np.arange(len(vocab), dtype=dtype)
        ids = table[codes]
    else:
        ids = np.searchsorted(vocab_codes, codes).astype(dtype)
    return torch.from_numpy(ids)


def load_char_corpus(path: str, block_size: int = 64, val_fraction: float = 0.1,
                     max_bytes: int = MAX_CORPUS_BYTES) -> CharCorpus:
    """A UTF-8 text file as a character corpus, split into train (first 90%) and validation (last 10%).

    The split is contiguous, as in the standard char-level setup, so the
    validation text is a passage the model never saw rather than characters
    scattered through the training text.

    Args:
        path: the text file, e.g. tiny Shakespeare's ``input.txt``.
        block_size: the context length the corpus will be cut into (default
            64); both parts must hold at least one window of ``block_size + 1``
            characters.
        val_fraction: share of the text held out for validation (default 0.1).
        max_bytes: the largest file read, default :data:`MAX_CORPUS_BYTES`
            (256 MiB).

    Raises:
        DataError: the file is missing, larger than ``max_bytes``, not UTF-8,
            empty, or too short for ``block_size``; the message names the file
            and what to get.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction!r}: must be between 0 and 1 (exclusive)")
    if not os.path.isfile(path):
        raise DataError(f"character corpus {os.path.abspath(path)!r} not found; nothing is downloaded: "
                        + CHAR_CORPUS_SOURCE)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise DataError(f"{path}: {size} bytes, more than the {max_bytes} bytes ({max_bytes / 2**20:g} MiB) a "
                            "character corpus may have; use a shorter text, or call load_char_corpus with a larger "
                            "max_bytes")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); a character corpus must be a "
                        "UTF-8 text file, e.g. tiny Shakespeare's input.txt") from exc
    if not text:
        raise DataError(f"{path}: the file is empty; " + CHAR_CORPUS_SOURCE)
    n_train = int(len(text) * (1 - val_fraction))  # int(n * 0.9), as the standard char-level preparation
    n_val = len(text) - n_train
    need = block_size + 1
    if min(n_train, n_val) < need:
        at_least = max(math.ceil(need / val_fraction), math.ceil(need / (1 - val_fraction)))
        raise DataError(f"{path}: {len(text)} characters is too short: with a {val_fraction:g} validation share "
                        f"and block size {block_size} each part needs at least {need} characters, so the text "
                        f"needs at least {at_least}")
    del raw
    vocab = sorted(set(text))
    ids = _token_ids(text, vocab)
    return CharCorpus(ids[:n_train].clone(), ids[n_train:].clone(), vocab, path)
